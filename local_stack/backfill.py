"""`python -m local_stack.backfill` (make backfill PREFIX=...): the Step Functions backfill /
reindex / renditions state machine (infra/constructs/backfill.py), run on one machine.

    python -m local_stack.backfill [--prefix incoming/] [--batch-size 50] [--workers 4]
    python -m local_stack.backfill --mode reindex [--model-card PATH | --version V]
    python -m local_stack.backfill --mode renditions [--prefix gallery/]

The same map logic as the Distributed Map: list the lake prefix (sorted, as ListObjectsV2),
cut it into batches of --batch-size keys (the ItemBatcher), call the SAME batch handler
(lambdas.batch) per batch with the same input shape on a small bounded thread pool
(MaxConcurrency), retry a failed batch with exponential backoff and jitter, fail the run when
more than --tolerated-failure-percent of the items failed, write the per-batch results as JSON
into the lake under backfill-results/ (the ResultWriter), and, for a reindex, switch the model
version (the handler's activate mode) only when every batch succeeded. The renditions mode
writes the missing renditions of the listed gallery works (`make renditions` does the same
without the map, in one process); a work that cannot be rendered is listed, not a failure.

Exit status: 0 done (reindex: switched), 1 failed batches beyond the threshold or a reindex
not switched, 2 when the stack is not running or the model card is unusable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from artlens.ingest import batches
from artlens.lake import ObjectLake
from artlens.names import GALLERY_PREFIX, INCOMING_PREFIX
from local_stack.events import LambdaContext

RESULTS_PREFIX = "backfill-results/"  # as infra/constructs/backfill.py writes them
ROOTS = {"backfill": INCOMING_PREFIX, "reindex": GALLERY_PREFIX, "renditions": GALLERY_PREFIX}
# infra/constructs/backfill.py: the batch retry of BatchIncomplete / Unavailable (3 attempts
# after the first there; interval 10 s, rate 3). Locally shorter waits: the same shape.
DEFAULT_ATTEMPTS = 4
DEFAULT_BACKOFF_S = 1.0
BACKOFF_RATE = 3.0

FUNCTION_NAME = "artlens-batch"
Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass
class BatchResult:
    index: int
    keys: list[str]
    attempts: int = 0
    output: dict[str, Any] | None = None
    error: str | None = None  # the last attempt's error, when every attempt failed

    @property
    def succeeded(self) -> bool:
        return self.output is not None


@dataclass
class MapReport:
    run_id: str
    mode: str
    prefix: str
    version: str | None
    items: int = 0
    batches: int = 0
    failed_batches: int = 0
    failed_items: int = 0
    retries: int = 0
    tolerated_failure_percent: float = 0.0
    succeeded: bool = False  # within the tolerated failures (the Map state's own success)
    activated: bool | None = None  # reindex only: the version was switched
    activation: dict[str, Any] | str | None = None
    results_key: str | None = None
    results: list[BatchResult] = field(default_factory=list)


def list_batches(lake: ObjectLake, prefix: str, batch_size: int) -> list[list[str]]:
    """The listing in ListObjectsV2 order, "folder" keys left out, cut as the ItemBatcher does."""
    keys = sorted(k for k in lake.list(prefix) if not k.endswith("/"))
    return [list(chunk) for chunk in batches(keys, batch_size)]


def run_batch(
    handler: Handler,
    result: BatchResult,
    batch_input: dict[str, Any],
    *,
    attempts: int,
    backoff_s: float,
    sleep: Callable[[float], None],
) -> BatchResult:
    event = {"Items": [{"Key": key} for key in result.keys], "BatchInput": batch_input}
    for attempt in range(1, attempts + 1):
        result.attempts = attempt
        try:
            result.output = handler(event, LambdaContext(FUNCTION_NAME))
            result.error = None
            return result
        except Exception as exc:  # the Map retries whatever the child raised, too
            result.error = f"{type(exc).__name__}: {exc}"
            if attempt < attempts:
                # Full jitter, as the state machine's retriers: batches that failed together
                # (the database restarting) do not all come back at the same moment.
                sleep(random.uniform(0, backoff_s * BACKOFF_RATE ** (attempt - 1)))  # noqa: S311
    return result


def run_map(
    lake: ObjectLake,
    handler: Handler,
    *,
    mode: str,
    prefix: str | None = None,
    version: str | None = None,
    batch_size: int = 50,
    workers: int = 4,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff_s: float = DEFAULT_BACKOFF_S,
    tolerated_failure_percent: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[MapReport], None] | None = None,
) -> MapReport:
    """One execution of the state machine; the per-batch results go into the lake."""
    if mode not in ROOTS:
        raise ValueError(f"mode must be one of {sorted(ROOTS)}")
    prefix = prefix or ROOTS[mode]
    if not prefix.startswith(ROOTS[mode]):
        raise ValueError(f"a {mode} reads under {ROOTS[mode]} only, not {prefix!r}")
    if batch_size < 1 or workers < 1 or attempts < 1:
        raise ValueError("batch_size, workers and attempts must be >= 1")
    if mode == "renditions" and version is not None:
        raise ValueError("renditions have no model version")
    report = MapReport(uuid.uuid4().hex, mode, prefix, version,
                       tolerated_failure_percent=tolerated_failure_percent)
    chunks = list_batches(lake, prefix, batch_size)
    report.items = sum(len(c) for c in chunks)
    report.batches = len(chunks)
    batch_input = {"mode": mode, "version": version}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artlens-map") as pool:
        futures = [
            pool.submit(run_batch, handler, BatchResult(i, chunk), batch_input,
                        attempts=attempts, backoff_s=backoff_s, sleep=sleep)
            for i, chunk in enumerate(chunks)
        ]
        for future in as_completed(futures):
            done = future.result()
            report.results.append(done)
            report.retries += done.attempts - 1
            if not done.succeeded:
                report.failed_batches += 1
                report.failed_items += len(done.keys)
            if progress is not None:
                progress(report)
    report.results.sort(key=lambda r: r.index)
    # Step Functions fails the map run when the failed share EXCEEDS the tolerated percentage.
    report.succeeded = report.failed_items * 100 <= tolerated_failure_percent * report.items
    if mode == "reindex":
        report.activated = False
        if report.succeeded and report.failed_items == 0:
            try:
                report.activation = handler({"activate": {"version": version}},
                                            LambdaContext(FUNCTION_NAME))
                report.activated = True
            except Exception as exc:  # the gallery is still incomplete: nothing switched
                report.activation = f"{type(exc).__name__}: {exc}"
    report.results_key = f"{RESULTS_PREFIX}{report.run_id}.json"
    lake.put(report.results_key, json.dumps(asdict(report), indent=2).encode(),
             "application/json")
    return report


def renditions_summary(report: MapReport) -> list[str]:
    """What a renditions run did, from its batches' outputs (the works that cannot be rendered
    by name, as far as the batches listed them)."""
    outputs = [r.output for r in report.results if r.output is not None]
    failed = sum(o["failed"] for o in outputs)
    lines = [
        f"  complete     {sum(o['complete'] for o in outputs):>6}  works had every rendition",
        f"  written      {sum(o['written'] for o in outputs):>6}  renditions, for "
        f"{sum(o['works'] for o in outputs)} works",
        f"  failed       {failed:>6}  works that cannot be rendered",
    ]
    listed = sorted((key, reason) for o in outputs for key, reason in o["failed_keys"].items())
    lines += [f"    {key}: {reason}" for key, reason in listed]
    if len(listed) < failed:
        lines.append(f"    ... and {failed - len(listed)} more (each batch lists 100)")
    return lines


def print_progress(report: MapReport) -> None:
    done = len(report.results)
    print(f"\r{report.mode} {report.prefix}: {done}/{report.batches} batches, "
          f"{report.failed_batches} failed, {report.retries} retries", end="", file=sys.stderr,
          flush=True)


# --- the command --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local_stack.backfill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="state folder (default $ARTLENS_STATE_DIR or .artlens)")
    parser.add_argument("--mode", choices=sorted(ROOTS), default="backfill")
    parser.add_argument("--prefix", help="lake prefix (default incoming/ or gallery/)")
    parser.add_argument(
        "--model-card", default=os.environ.get("MODEL_CARD_PATH") or "models/artlens.json",
        help="reindex: the model to register and reindex with (default models/artlens.json)",
    )
    parser.add_argument("--version", help="reindex: a version already in the local registry")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4, help="batches at once (default 4)")
    parser.add_argument("--attempts", type=int, default=DEFAULT_ATTEMPTS)
    parser.add_argument("--tolerated-failure-percent", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.workers < 1 or args.attempts < 1:
        parser.error("--batch-size, --workers and --attempts must be at least 1")
    if not 0 <= args.tolerated_failure_percent <= 100:
        parser.error("--tolerated-failure-percent must be 0..100")
    return args


def _load_handler(stack: Any, paths: Any, card_path: Path) -> tuple[Handler, ObjectLake]:
    """The batch handler with the running stack's database, lake and registry (its env)."""
    from artlens import names as n
    from local_stack.reindex import registry_dir

    url_key = paths.url_key.read_text().strip()
    os.environ.update({
        n.ENV_MODEL_CARD_PATH: str(card_path),
        n.ENV_MODEL_REGISTRY_DIR: str(registry_dir(paths)),
        n.ENV_DATABASE_URL: stack.dsn,
        n.ENV_LOCAL_LAKE_DIR: stack.lake_dir,
        n.ENV_LOCAL_URL_KEY: url_key,
        n.ENV_LOCAL_URL_BASE: "",
        # Embedded-metric-format lines are for CloudWatch; locally they would bury the progress.
        "POWERTOOLS_METRICS_DISABLED": "true",
    })
    # The handler's per-batch INFO lines would bury the progress line; warnings still show.
    os.environ.setdefault(n.ENV_LOG_LEVEL, "WARNING")
    import lambdas.batch

    return lambdas.batch.handler, lambdas.batch.deps().serving.lake


def main(argv: list[str] | None = None) -> int:
    from local_stack.state import running_stack_or_explain

    args = parse_args(argv)
    paths, stack = running_stack_or_explain(args.state_dir, "backfill")
    if stack is None:
        return 2
    card_path = Path(args.model_card).expanduser()
    version = args.version
    if args.mode == "reindex" and version is None:
        from artlens.models.card import ModelIntegrityError
        from artlens.models.registry import ModelRegistry
        from local_stack.reindex import registry_dir

        try:
            version = ModelRegistry(registry_dir(paths)).register(card_path)
        except ModelIntegrityError as exc:
            print(f"backfill: {exc}", file=sys.stderr)
            return 2
    handler, lake = _load_handler(stack, paths, card_path)
    try:
        report = run_map(
            lake, handler, mode=args.mode, prefix=args.prefix, version=version,
            batch_size=args.batch_size, workers=args.workers, attempts=args.attempts,
            tolerated_failure_percent=args.tolerated_failure_percent, progress=print_progress,
        )
    except ValueError as exc:
        print(f"backfill: {exc}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    print(f"{report.mode} of {report.prefix}: {report.items} objects in {report.batches} "
          f"batches, {report.failed_batches} failed ({report.failed_items} objects), "
          f"{report.retries} retries; results in the lake at {report.results_key}")
    if report.mode == "renditions":
        print("\n".join(renditions_summary(report)))
    if not report.succeeded:
        print(f"Failed: more than {report.tolerated_failure_percent}% of the objects failed.")
        return 1
    if report.mode == "reindex":
        if not report.activated:
            print(f"Not switched ({report.activation or 'some batches failed'}); run it again.")
            return 1
        print(f"Switched to model version {version}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
