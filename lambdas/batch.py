"""Step Functions Distributed Map child: backfill or reindex one batch of listed objects.

Events (the Map's ItemBatcher shape, and the state machine's last reindex step):
  {"Items": [{"Key": "incoming/..."}, ...], "BatchInput": {"mode": "backfill", "version": null}}
      index these drops (artlens.ingest.ingest_objects, the embed function's code)
  {"Items": [{"Key": "gallery/..."}, ...], "BatchInput": {"mode": "reindex", "version": "<v>"}}
      embed these gallery objects with that model version (default: the deployed model);
      never switches (artlens.models.versions.reembed_keys)
  {"Items": [{"Key": "gallery/..."}, ...], "BatchInput": {"mode": "renditions", "version": null}}
      write the missing renditions of these gallery works (artlens.renditions
      .backfill_renditions): works indexed before ingest wrote renditions
  {"activate": {"version": "<v>" | null}}
      after every batch succeeded: catch up and switch queries to the version
      (activate_reindexed); raises if the gallery is still incomplete, so nothing switches

Items come in two shapes, an S3 listing's or an S3 Inventory manifest's rows
(artlens.batches, which also keeps every key inside the mode's root).

A batch in which some pictures failed for a transient reason raises BatchIncomplete: the Map
counts the batch as failed and retries it (with backoff), and only what is missing is redone,
as ingestion is idempotent on each picture's SHA-256 and reembed_keys skips pictures that
already have a row. Unusable pictures (rejected, gone) are counted, not raised. Renditions
alike: a picture that cannot be rendered is listed in the output with its reason (it will not
render better on a retry), while a lake error (an S3 5xx, a throttle) raises BatchIncomplete,
and the retry writes only the renditions still missing. The local
stack runs this same handler per chunk (local_stack/backfill.py).

Metrics (artlens.metrics): PicturesIndexed / PicturesRejected / Duplicates / IndexedByType of
every batch, and BatchItemsDone once a batch succeeded, which the stalled-backfill alarm
watches (infra/constructs/monitoring.py).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from artlens.batches import checked_version, parse_items
from artlens.errors import BadRequest
from artlens.ingest import Concurrency, ingest_objects
from artlens.logs import handler_logger
from artlens.metrics import (
    flush,
    handler_metrics,
    publish_batch_done,
    publish_ingest,
    publish_reembedded,
)
from artlens.models.classifier import Classifier
from artlens.models.versions import (
    CurrentModel,
    activate_reindexed,
    ensure_model_version,
    reembed_keys,
)
from artlens.renditions import backfill_renditions
from artlens.serving import Serving
from artlens.wiring import Lazy

logger = handler_logger("artlens-batch")
metrics = handler_metrics()
# Failed keys listed in a renditions batch's output (the count is always whole): a Map child's
# output must stay under Step Functions' 256 KB payload limit.
MAX_LISTED_FAILURES = 100
MAX_REASON_CHARS = 200


class BatchIncomplete(RuntimeError):
    """Some pictures of the batch failed for a transient reason: retry the batch."""


@dataclass(frozen=True)
class Deps:
    serving: Serving  # the index connects on first use
    concurrency: Concurrency


def build() -> Deps:
    serving = Serving.from_env(os.environ)
    logger.setLevel(serving.settings.log_level)
    settings = serving.settings
    return Deps(serving, Concurrency(settings.ingest_workers, settings.ingest_decoders))


def build_model() -> CurrentModel:
    """What the modes that embed need, on their first batch: the ONNX session and the same
    start-up step as embed (the deployed model's version is known to the index). A renditions
    run never builds it, so it neither loads the model nor needs the database."""
    serving = deps().serving
    threads = serving.settings.ort_threads
    ensure_model_version(serving.store, serving.registry.default_classifier(threads))
    # backfill embeds with the current version, as the embed function does
    return CurrentModel(serving.registry, serving.store, threads=threads)


deps = Lazy(build)  # a failure (a missing setting) fails this invocation; the Map retries it
current_model = Lazy(build_model)  # likewise (the database down)


_LAZIES = (deps, current_model)


def reset() -> None:
    """Forget the dependencies (tests that change the environment)."""
    for lazy in _LAZIES:
        lazy.reset()


def _classifier(built: Deps, version: str | None) -> Classifier:
    current_model()  # the deployed version is known to the index before any reindex step
    registry, threads = built.serving.registry, built.serving.settings.ort_threads
    if version is None:
        return registry.default_classifier(threads)
    return registry.classifier_for(version, threads)


def run_renditions(built: Deps, keys: list[str]) -> dict[str, Any]:
    try:
        counts = backfill_renditions(
            built.serving.lake, keys,
            workers=built.concurrency.workers, decoders=built.concurrency.decoders,
        )
    except Exception as exc:
        # Pictures that cannot be rendered are counted inside; what escapes is the lake
        # itself (an S3 5xx, a throttle, a timeout). BatchIncomplete is what the map retries.
        raise BatchIncomplete(
            f"renditions batch of {len(keys)} works stopped: {type(exc).__name__}: {exc}"
            "; retrying the batch writes only what is still missing"
        ) from exc
    publish_batch_done(metrics, len(keys))
    failed = sorted(counts.failed.items())
    if failed:
        logger.warning("works without renditions", extra={"failed": len(failed),
                                                           "first": failed[0][0]})
    return {"mode": "renditions", "items": len(keys), "checked": counts.checked,
            "complete": counts.complete, "works": counts.works, "written": counts.written,
            "failed": len(failed),
            "failed_keys": {key: reason[:MAX_REASON_CHARS]
                            for key, reason in failed[:MAX_LISTED_FAILURES]}}


def run_batch(built: Deps, mode: str, version: str | None, keys: list[str]) -> dict[str, Any]:
    serving = built.serving
    if mode == "renditions":
        if version is not None:
            raise BadRequest("renditions have no model version: give null")
        return run_renditions(built, keys)
    if mode == "reindex":
        report = reembed_keys(serving.store, serving.lake, _classifier(built, version), keys)
        publish_reembedded(metrics, report.embedded, report.duplicates)
        publish_batch_done(metrics, len(keys))
        counts = dataclasses.asdict(report)
        counts.pop("unusable_keys")
        return {"mode": mode, "items": len(keys), **counts}
    ingested = ingest_objects(
        keys, serving.lake, current_model().classifier(), serving.store,
        concurrency=built.concurrency,
    )
    publish_ingest(metrics, ingested)  # what was done counts, even in a batch that is retried
    counts = {"mode": mode, "items": len(keys), "model_version": ingested.model_version,
              "indexed": ingested.indexed, "duplicates": ingested.duplicates,
              "rejected": ingested.rejected, "skipped": ingested.skipped,
              "failed": ingested.failed}
    if ingested.failed:
        logger.warning("batch incomplete", extra=counts)
        raise BatchIncomplete(
            f"{ingested.failed} of {len(keys)} pictures failed (first: "
            f"{ingested.failed_keys[0]}); retrying the batch redoes only those"
        )
    publish_batch_done(metrics, len(keys))
    return counts


def run_activate(built: Deps, request: Any) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise BadRequest('activate is {"activate": {"version": "<v>" | null}}')
    serving = built.serving
    classifier = _classifier(built, checked_version(request.get("version")))
    report = activate_reindexed(serving.store, serving.lake, classifier)
    if not report.activated:
        raise BatchIncomplete(
            f"the gallery still lacks rows for {report.model_version}; "
            f"{report.previous_version} stays current (run the reindex again)"
        )
    return {"previous_version": report.previous_version, "model_version": report.model_version,
            "caught_up": report.embedded}


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    built = deps()
    if "activate" in event:
        result = run_activate(built, event["activate"])
        logger.info("reindex activated", extra=result)
        return result
    batch = parse_items(event, built.serving.settings.images_bucket)
    try:
        result = run_batch(built, batch.mode, batch.version, batch.keys)
        if batch.outside_prefix:
            # Skipped rows are done too: the stalled-backfill alarm must not read a run of
            # batches outside the prefix as batches that never finish.
            publish_batch_done(metrics, batch.outside_prefix)
            result["outside_prefix"] = batch.outside_prefix
    finally:
        flush(metrics)  # a failed batch's partial counts too
    logger.info("batch done", extra=result)
    return result
