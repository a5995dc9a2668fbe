"""`python -m local_stack.reindex` (make reindex / make rollback): switch the running stack's model.

    python -m local_stack.reindex [--model-card PATH] [--batch-size N]
        Registers the card in the local model registry (<state>/models/<version>/), re-embeds
        every gallery picture with it (progress bar on stderr, resumable: run it again after an
        interruption), and makes it the current version once the whole gallery is embedded.
        Until then the stack keeps answering with the current version.
    python -m local_stack.reindex --rollback
        Makes the previously active version current again and prints "old -> new".

The running stack's predict follows the switch within a few seconds (it re-reads the current
version from the database). Exit status: 0 done, 1 incomplete reindex or refused rollback,
2 when the stack is not running or the card is unusable.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from local_stack.state import RunningStack, StatePaths, running_stack_or_explain

DEFAULT_THREADS = 2


def registry_dir(paths: StatePaths) -> Path:
    """The local model registry, `<state>/models/<version>/`; the stack registers its model
    here at start. It is the AWS registry's code path (artlens.models.registry.ModelRegistry)
    over a FolderSource instead of the artifacts bucket: same layout, same SHA-256 check on
    every load, same refusal of another model under a registered version."""
    return paths.root / "models"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from artlens.ingest import DEFAULT_REINDEX_BATCH

    parser = argparse.ArgumentParser(prog="python -m local_stack.reindex", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="state folder (default $ARTLENS_STATE_DIR or .artlens)")
    parser.add_argument(
        "--model-card", default=os.environ.get("MODEL_CARD_PATH") or "models/artlens.json",
        help="the model to reindex with (default $MODEL_CARD_PATH or models/artlens.json)",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_REINDEX_BATCH,
                        help=f"pictures per inference batch (default {DEFAULT_REINDEX_BATCH})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"ONNX Runtime threads (default {DEFAULT_THREADS})")
    parser.add_argument("--rollback", action="store_true",
                        help="switch back to the previously active model version")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if not 1 <= args.threads <= 64:
        parser.error("--threads must be between 1 and 64")
    return args


def _open(stack: RunningStack, paths: StatePaths):
    from artlens.index.embeddings import EmbeddingStore
    from artlens.lake import LocalLake
    from artlens.models.registry import ModelRegistry

    # Signed URLs are never made here, but the lake is built with the stack's own key.
    lake = LocalLake(stack.lake_dir, paths.url_key.read_text().strip().encode())
    return EmbeddingStore(stack.dsn), lake, ModelRegistry(registry_dir(paths))


def run_rollback(stack: RunningStack, paths: StatePaths) -> int:
    from artlens.errors import NotFound
    from artlens.models.card import ModelNotRegistered
    from artlens.models.versions import switch_back

    store, _, registry = _open(stack, paths)
    try:
        old, new = switch_back(store, registry)
    except (NotFound, ModelNotRegistered) as exc:
        print(f"rollback: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"{old} -> {new}")
    return 0


def run_reindex(stack: RunningStack, paths: StatePaths, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from artlens.models.card import ModelIntegrityError
    from artlens.models.versions import reindex

    store, lake, registry = _open(stack, paths)
    try:
        try:
            version = registry.register(Path(args.model_card).expanduser())
            classifier = registry.classifier_for(version, args.threads)
        except ModelIntegrityError as exc:
            print(f"reindex: {exc}", file=sys.stderr)
            return 2
        with tqdm(unit="img", desc=f"reindexing to {version}", disable=args.no_progress,
                  file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                # A later pass (pictures added meanwhile) starts counting again from 0.
                if bar.total != total or done < bar.n:
                    bar.reset(total=total)
                bar.update(done - bar.n)

            report = reindex(store, lake, classifier, args.batch_size, progress)
    except KeyboardInterrupt:
        print("\nInterrupted: the current version still answers queries; run `make reindex` "
              "again to resume.", file=sys.stderr)
        return 130
    finally:
        store.close()

    print(f"Reindex to model {report.model_version} (was {report.previous_version}):")
    print(f"  embedded    {report.embedded:>6}")
    print(f"  duplicates  {report.duplicates:>6}  same picture under another gallery key")
    if report.missing or report.unreadable:
        print(f"  missing     {report.missing:>6}  gone from the gallery before it was read")
        print(f"  unreadable  {report.unreadable:>6}  gallery objects that are not pictures")
    if not report.activated:
        print(f"Incomplete: {report.previous_version} still answers queries; "
              "run `make reindex` again to resume.")
        return 1
    print(f"{report.previous_version} -> {report.model_version} "
          "(the stack answers with it within a few seconds; `make rollback` switches back)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths, stack = running_stack_or_explain(args.state_dir, "reindex")
    if stack is None:
        return 2
    if args.rollback:
        return run_rollback(stack, paths)
    return run_reindex(stack, paths, args)


if __name__ == "__main__":
    sys.exit(main())
