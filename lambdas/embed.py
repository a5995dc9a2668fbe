"""SQS -> embed: index the pictures that S3 announced under incoming/.

Each SQS message carries one S3 event notification. All keys of the batch go through ONE
`ingest_objects` call so inference runs batched; each key's outcome is mapped back to its
message, and only messages with a transient failure are reported (partial batch response),
so they alone are retried and, after maxReceiveCount, land in the DLQ. Unusable pictures are
not failures: ingestion parks them under rejected/. Sidecar records (`incoming/*.csv`,
`incoming/<picture>.json`) come through the same notifications and the same call
(artlens.ingest); a malformed row is logged and reported, never a failure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from artlens.ingest import Concurrency, IngestReport, Status, ingest_objects
from artlens.logs import handler_logger
from artlens.metrics import flush, handler_metrics, publish_ingest
from artlens.models.versions import CurrentModel, ensure_model_version
from artlens.serving import Serving
from artlens.triage import new_part_name, report_ingest
from artlens.wiring import Lazy

logger = handler_logger("artlens-embed")
metrics = handler_metrics()  # PicturesIndexed, PicturesRejected, Duplicates, IndexedByType
# Every record of a batch is judged on the outcome of the shared ingest call, so an all-failed
# batch is still a partial response (every message listed) rather than an exception.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@dataclass(frozen=True)
class Deps:
    serving: Serving
    # New pictures are embedded with the model of the current version (as predict searches
    # it), so pictures ingested after a reindex switch or a rollback are found at once.
    model: CurrentModel
    # Lake calls and decodes in flight per invocation (artlens.ingest.Concurrency): on S3 each
    # picture's get, put and delete are tens of ms of waiting, overlapped on a thread pool.
    concurrency: Concurrency


def build() -> Deps:
    serving = Serving.from_env(os.environ)
    logger.setLevel(serving.settings.log_level)
    threads = serving.settings.ort_threads
    model = CurrentModel(serving.registry, serving.store, threads=threads)
    return Deps(
        serving, model,
        Concurrency(serving.settings.ingest_workers, serving.settings.ingest_decoders),
    )


def build_ready() -> Deps:
    """The dependencies, once the deployed model's version is known to the index."""
    built = deps()
    serving = built.serving
    default = serving.registry.default_classifier(serving.settings.ort_threads)  # verified
    ensure_model_version(serving.store, default)
    return built


deps = Lazy(build)
ready = Lazy(build_ready)  # a failure (database down) is retried by the next batch


def reset() -> None:
    """Forget the dependencies (tests that change the environment)."""
    deps.reset()
    ready.reset()


class MalformedMessage(ValueError):
    """The message is not an S3 event notification; retries cannot fix it (-> DLQ)."""


def keys_in_message(body: str) -> list[str]:
    """Object keys created by one S3 notification; [] for s3:TestEvent and other events."""
    try:
        payload = json.loads(body)
    except (TypeError, ValueError):
        raise MalformedMessage("message body is not JSON") from None
    if not isinstance(payload, dict):
        raise MalformedMessage("message body is not a JSON object")
    if payload.get("Event") == "s3:TestEvent" or "Records" not in payload:
        return []
    keys = []
    try:
        for record in S3Event(payload).records:
            if record.event_name.startswith("ObjectCreated:"):
                # Keys arrive URL-encoded, with '+' for spaces.
                keys.append(unquote_plus(record.s3.get_object.key))
    except (KeyError, TypeError, AttributeError):
        raise MalformedMessage("message body is not an S3 event notification") from None
    return keys


def _ingest(keys: list[str]) -> IngestReport:
    built = ready()
    return ingest_objects(
        keys, built.serving.lake, built.model.classifier(), built.serving.store,
        concurrency=built.concurrency,
    )


def _triage(report: IngestReport, request_id: str | None) -> None:
    """The invocation's part of its batches' intake reports (artlens.triage). A failure to
    write it is logged, never the batch's failure: the pictures are indexed all the same."""
    built = ready()
    try:
        written = report_ingest(
            built.serving.lake, built.serving.store, report,
            new_part_name(unique=(request_id or "").replace("-", "") or None),
        )
    except Exception as exc:
        logger.warning("intake report not written: %s", type(exc).__name__)
        return
    for part in written:
        logger.info("intake report", extra={"batch": part.batch, **part.counts()})


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    keys_by_message: dict[str, list[str] | Exception] = {}
    for raw in event.get("Records", []):
        record = SQSRecord(raw)
        try:
            keys_by_message[record.message_id] = keys_in_message(record.body)
        except MalformedMessage as exc:
            keys_by_message[record.message_id] = exc
    all_keys = [k for keys in keys_by_message.values() if isinstance(keys, list) for k in keys]

    batch_error: Exception | None = None
    report: IngestReport | None = None
    if all_keys:
        try:
            report = _ingest(all_keys)
        except Exception as exc:  # e.g. the database is down before any key was tried
            logger.warning("ingest call failed: %s", type(exc).__name__)
            batch_error = exc
    if report is not None:
        publish_ingest(metrics, report)
        flush(metrics)
        logger.info(
            "ingested batch",
            extra={
                "indexed": report.indexed, "duplicates": report.duplicates,
                "rejected": report.rejected, "skipped": report.skipped, "failed": report.failed,
                "sidecars": report.sidecars, "record_problems": len(report.problems),
            },
        )
        for problem in report.problems:  # malformed sidecar rows: reported, never fatal
            logger.warning("record problem", extra={"problem": problem})
        _triage(report, getattr(context, "aws_request_id", None))

    def record_handler(record: SQSRecord) -> None:
        keys = keys_by_message[record.message_id]
        if isinstance(keys, Exception):
            raise keys
        for key in keys:
            if batch_error is not None:
                raise batch_error
            assert report is not None  # no batch error: the ingest call reported
            outcome = report.outcomes[key]
            if outcome.status is Status.FAILED:
                raise outcome.error or RuntimeError(f"ingesting {key} failed")

    return process_partial_response(event, record_handler, processor, context)
