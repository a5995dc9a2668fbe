"""artlens.metrics: what the functions print in CloudWatch's embedded metric format (EMF), read
back as CloudWatch would: one JSON document per line, metric names, units, dimensions, values."""

from __future__ import annotations

import json
import warnings

import pytest

from artlens import metrics as m
from artlens.ingest import IngestOutcome, IngestReport, Status


@pytest.fixture
def emitted(monkeypatch, capsys):
    """A fresh Metrics of the embed function and a reader of what it printed."""
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "artlens-embed")
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)
    metrics = m.handler_metrics()
    metrics.clear_metrics()
    metrics.clear_default_dimensions()
    capsys.readouterr()

    def read() -> list[dict]:
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()
                if line.startswith("{")]

    yield metrics, read
    metrics.clear_metrics()
    metrics.clear_default_dimensions()


def series(documents: list[dict]) -> dict[tuple, tuple[float, str]]:
    """(namespace, name, ((dimension, value), ...)) -> (summed value, unit)."""
    found: dict[tuple, tuple[float, str]] = {}
    for doc in documents:
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            (dimensions,) = directive["Dimensions"]
            dims = tuple(sorted((d, doc[d]) for d in dimensions))
            for metric in directive["Metrics"]:
                value = doc[metric["Name"]]
                value = sum(value) if isinstance(value, list) else value
                key = (directive["Namespace"], metric["Name"], dims)
                previous = found.get(key, (0.0, metric["Unit"]))[0]
                found[key] = (previous + value, metric["Unit"])
    return found


def test_an_ingest_report_becomes_indexed_rejected_duplicates_and_per_type_counts(emitted):
    metrics, read = emitted
    report = IngestReport(model_version="v2", outcomes={
        "incoming/a.jpg": IngestOutcome("incoming/a.jpg", Status.INDEXED, label="painting"),
        "incoming/b.jpg": IngestOutcome("incoming/b.jpg", Status.INDEXED, label="painting"),
        "incoming/c.jpg": IngestOutcome("incoming/c.jpg", Status.INDEXED, label="sculpture"),
        "incoming/d.jpg": IngestOutcome("incoming/d.jpg", Status.DUPLICATE, label="painting"),
        "incoming/e.txt": IngestOutcome("incoming/e.txt", Status.REJECTED, reason="bad"),
        "incoming/f.jpg": IngestOutcome("incoming/f.jpg", Status.FAILED),
        "incoming/g.csv": IngestOutcome("incoming/g.csv", Status.SIDECAR),
    })
    m.publish_ingest(metrics, report)
    m.flush(metrics)
    found = series(read())
    service = (("service", "artlens-embed"),)
    assert found[("ArtLens", "PicturesIndexed", service)] == (3, "Count")
    assert found[("ArtLens", "PicturesRejected", service)] == (1, "Count")
    assert found[("ArtLens", "Duplicates", service)] == (1, "Count")
    by_type = {dims: value for (ns, name, dims), (value, _) in found.items()
               if name == "IndexedByType"}
    assert by_type == {
        (("service", "artlens-embed"), ("type", "painting")): 2,
        (("service", "artlens-embed"), ("type", "sculpture")): 1,
    }


def test_a_prediction_publishes_latency_and_its_type(emitted):
    metrics, read = emitted
    m.publish_prediction(metrics, 12.3456, "engraving")
    m.publish_prediction(metrics, 3.0, "x" * 200)  # not a class name: counted as unknown
    m.flush(metrics)
    found = series(read())
    service = (("service", "artlens-embed"),)
    assert found[("ArtLens", "PredictLatency", service)] == (pytest.approx(15.346), "Milliseconds")
    predictions = {dict(dims)["type"]: value for (_, name, dims), (value, _) in found.items()
                   if name == "Predictions"}
    assert predictions == {"engraving": 1, "unknown": 1}


def test_batch_progress_and_reindex_counts(emitted):
    metrics, read = emitted
    m.publish_reembedded(metrics, embedded=40, duplicates=2)
    m.publish_batch_done(metrics, 50)
    m.flush(metrics)
    found = series(read())
    service = (("service", "artlens-embed"),)
    assert found[("ArtLens", "BatchItemsDone", service)] == (50, "Count")
    assert found[("ArtLens", "PicturesIndexed", service)] == (40, "Count")
    assert found[("ArtLens", "Duplicates", service)] == (2, "Count")


def test_an_invocation_without_metrics_prints_nothing_and_does_not_warn(emitted):
    metrics, read = emitted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.flush(metrics)
    assert read() == []


def test_metrics_can_be_switched_off_for_the_local_stack(emitted, monkeypatch):
    metrics, read = emitted
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    m.publish_batch_done(metrics, 5)
    m.flush(metrics)
    assert read() == []
    assert not metrics.metric_set  # forgotten, not piled up in a long-running process
