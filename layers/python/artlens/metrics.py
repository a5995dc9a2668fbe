"""Operational metrics in CloudWatch's embedded metric format (Powertools Metrics).

A handler keeps one `Metrics` object (`handler_metrics()`), hands it and what it did to a
`publish_*` function here, and calls `flush(metrics)` at the end of the invocation: the metrics
are one JSON line on stdout, which Lambda's log stream carries to CloudWatch, with no API call
and no permission. Namespace "ArtLens"; every metric has the dimension `service` (the function,
from POWERTOOLS_SERVICE_NAME, e.g. artlens-embed); the per-type ones add `type`:

  PicturesIndexed, PicturesRejected, Duplicates (Count)     embed, backfill / reindex batches
  IndexedByType (Count; dimension type)                     embed, backfill / reindex batches
  BatchItemsDone (Count)                                    backfill / reindex batches: keys
                                                            handled, whatever their outcome
  PredictLatency (Milliseconds)                             predict, POST /predict answered
  Predictions (Count; dimension type)                       predict, by predicted type

infra/constructs/monitoring.py graphs them (METRIC_* names below) and alarms on a stalled
backfill (batches invoked, BatchItemsDone zero). The local stack may set
POWERTOOLS_METRICS_DISABLED=true: nothing is printed then.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from aws_lambda_powertools.metrics import Metrics, MetricUnit, single_metric

from artlens.ingest import IngestReport, Status

NAMESPACE = "ArtLens"
METRIC_INDEXED = "PicturesIndexed"
METRIC_REJECTED = "PicturesRejected"
METRIC_DUPLICATES = "Duplicates"
METRIC_INDEXED_BY_TYPE = "IndexedByType"
METRIC_BATCH_ITEMS = "BatchItemsDone"
METRIC_PREDICT_LATENCY = "PredictLatency"
METRIC_PREDICTIONS = "Predictions"
TYPE_DIMENSION = "type"
UNKNOWN_TYPE = "unknown"
MAX_TYPE_LENGTH = 64  # a model class name; anything longer is not one


def handler_metrics(service: str | None = None) -> Metrics:
    """The handler's Metrics (service: POWERTOOLS_SERVICE_NAME unless given)."""
    return Metrics(namespace=NAMESPACE, service=service)


def flush(metrics: Metrics) -> None:
    """Print what was added this invocation, if anything (an invocation that served a GET
    publishes nothing, and Powertools would warn about an empty flush)."""
    if metrics.metric_set:
        metrics.flush_metrics()
        # With POWERTOOLS_METRICS_DISABLED Powertools neither prints nor forgets them, and a
        # long-running local stack would pile them up.
        metrics.clear_metrics()


def _type_value(label: str | None) -> str:
    """A dimension value from a model class: CloudWatch dimension values are 1..1024 chars;
    class names are short words, so anything else is counted as unknown."""
    if not label or len(label) > MAX_TYPE_LENGTH:
        return UNKNOWN_TYPE
    return label


def _per_type(metrics: Metrics, name: str, counts: Counter[str]) -> None:
    """One metric per type: Metrics shares one dimension set per flush, so each type is its
    own EMF line (single_metric), with the handler's dimensions (service) plus `type`."""
    for label, count in sorted(counts.items()):
        with single_metric(name=name, unit=MetricUnit.Count, value=count,
                           namespace=metrics.namespace,
                           default_dimensions=metrics.default_dimensions) as metric:
            metric.add_dimension(name=TYPE_DIMENSION, value=_type_value(label))


def _defaults(metrics: Metrics) -> None:
    # Powertools adds the service dimension only when the metric set is serialised; the
    # single-metric lines need it as a default dimension to land in the same series.
    if metrics.service and "service" not in metrics.default_dimensions:
        metrics.set_default_dimensions(service=metrics.service)


def publish_ingest(metrics: Metrics, report: IngestReport) -> None:
    """An ingest call's outcome (embed, backfill batches): indexed, rejected, duplicates, and
    the indexed pictures per predicted type. Failed and skipped keys are not counted here (a
    failure is retried and counted when it succeeds)."""
    _defaults(metrics)
    metrics.add_metric(name=METRIC_INDEXED, unit=MetricUnit.Count, value=report.indexed)
    metrics.add_metric(name=METRIC_REJECTED, unit=MetricUnit.Count, value=report.rejected)
    metrics.add_metric(name=METRIC_DUPLICATES, unit=MetricUnit.Count, value=report.duplicates)
    by_type = Counter(
        o.label or UNKNOWN_TYPE for o in report.outcomes.values() if o.status is Status.INDEXED
    )
    _per_type(metrics, METRIC_INDEXED_BY_TYPE, by_type)


def publish_reembedded(metrics: Metrics, embedded: int, duplicates: int,
                       labels: Iterable[str] = ()) -> None:
    """A reindex batch: rows written for the new version count as indexed."""
    _defaults(metrics)
    metrics.add_metric(name=METRIC_INDEXED, unit=MetricUnit.Count, value=embedded)
    metrics.add_metric(name=METRIC_DUPLICATES, unit=MetricUnit.Count, value=duplicates)
    _per_type(metrics, METRIC_INDEXED_BY_TYPE, Counter(labels))


def publish_batch_done(metrics: Metrics, items: int) -> None:
    """A backfill / reindex batch finished: how many listed keys it handled. The stalled
    backfill alarm watches this beside the batch function's invocations."""
    _defaults(metrics)
    metrics.add_metric(name=METRIC_BATCH_ITEMS, unit=MetricUnit.Count, value=items)


def publish_prediction(metrics: Metrics, latency_ms: float, label: str | None) -> None:
    """One answered POST /predict: the handler's latency and the predicted type."""
    _defaults(metrics)
    metrics.add_metric(name=METRIC_PREDICT_LATENCY, unit=MetricUnit.Milliseconds,
                       value=round(float(latency_ms), 3))
    _per_type(metrics, METRIC_PREDICTIONS, Counter([label or UNKNOWN_TYPE]))
