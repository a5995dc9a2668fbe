"""The concurrent ingest path (issue 16, throughput per function): a thread pool reads, decodes,
writes gallery copies and deletes drops while the model runs. Real PostgreSQL + pgvector, a real
tiny ONNX model, a folder lake; failures are injected into lake calls only."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import artlens.ingest
from artlens.index.embeddings import EmbeddingStore
from artlens.ingest import SEQUENTIAL, Concurrency, Status, ingest_objects
from artlens.lake import LocalLake
from artlens.models.classifier import get_classifier
from artlens.models.versions import ensure_model_version

URL_KEY = b"test-url-key"


def picture(seed: int, fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class InjectedFault(ConnectionError):
    """What a lake call fails with here: S3 answering 503, a connection reset."""


class FlakyLake(LocalLake):
    """The folder lake, failing the FIRST call of each chosen (method, key) once, from any
    thread; every later call of it succeeds (the retry)."""

    def __init__(self, root, faults: set[tuple[str, str]]):
        super().__init__(root, URL_KEY)
        self.pending_faults = set(faults)
        self.injected: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _maybe_fail(self, method: str, key: str) -> None:
        with self._lock:
            if (method, key) in self.pending_faults:
                self.pending_faults.discard((method, key))
                self.injected.append((method, key))
                raise InjectedFault(f"injected: {method} {key}")

    def get_version(self, key, max_bytes=None):
        self._maybe_fail("get_version", key)
        return super().get_version(key, max_bytes)

    def put(self, key, data, content_type="application/octet-stream"):
        self._maybe_fail("put", key)
        super().put(key, data, content_type)

    def delete_version(self, key, version):
        self._maybe_fail("delete_version", key)
        return super().delete_version(key, version)


@pytest.fixture
def classifier(tiny_model_card):
    return get_classifier(tiny_model_card)


def drops() -> dict[str, bytes]:
    """Ten distinct pictures, two unreadable drops, and duplicates: one in the same chunk of
    3 as its original (p01), one in a later chunk (p02)."""
    items = {f"incoming/p{i:02d}.png": picture(500 + i) for i in range(10)}
    ordered = {}
    for key, data in items.items():
        ordered[key] = data
        if key == "incoming/p01.png":
            ordered["incoming/p01 twin.png"] = data
    ordered["incoming/bad.txt"] = b"not a picture"
    ordered["incoming/broken.jpg"] = b"\xff\xd8\xff truncated"
    ordered["incoming/sub/p02 again.png"] = items["incoming/p02.png"]
    return ordered


@pytest.mark.parametrize("concurrency", [Concurrency(workers=4, decoders=2), SEQUENTIAL],
                         ids=["pool", "sequential"])
def test_every_picture_is_indexed_exactly_once_despite_failed_lake_calls(
    tmp_path, store, classifier, concurrency
):
    ensure_model_version(store, classifier)
    pictures = drops()
    p03, p05, p07 = (pictures[f"incoming/p{i:02d}.png"] for i in (3, 5, 7))
    lake = FlakyLake(tmp_path / "lake", {
        ("get_version", "incoming/p03.png"),  # the read fails: nothing written
        ("put", f"gallery/{sha(p05)}.png"),  # the gallery write fails: no row
        ("delete_version", "incoming/p07.png"),  # the row is committed, the drop stays
    })
    for key, data in pictures.items():
        lake.put(key, data)

    first = ingest_objects(list(pictures), lake, classifier, store, batch_size=3,
                           concurrency=concurrency)

    assert len(lake.injected) == 3
    failed = ["incoming/p03.png", "incoming/p05.png", "incoming/p07.png"]
    assert first.failed_keys == failed
    assert all(isinstance(first.outcomes[k].error, InjectedFault) for k in failed)
    assert first.outcomes["incoming/p05.png"].sha256 == sha(p05)
    assert list(first.outcomes) == list(pictures)  # the caller's order
    assert (first.rejected, first.duplicates) == (2, 2)
    assert first.indexed == 10 - 3  # p07's row is in, but its drop is not deleted yet
    assert lake.list("incoming/") == sorted(failed)
    assert store.existing_sha256([sha(p03), sha(p05), sha(p07)], classifier.version) == {
        sha(p07)}

    # SQS redelivers exactly the failed messages.
    retry = ingest_objects(first.failed_keys, lake, classifier, store, batch_size=3,
                           concurrency=concurrency)
    assert retry.failed_keys == []
    assert [retry.outcomes[k].status for k in failed] == [
        Status.INDEXED, Status.INDEXED, Status.DUPLICATE]

    distinct = {sha(data) for key, data in pictures.items() if key.endswith(".png")}
    expected = sorted(f"gallery/{digest}.png" for digest in distinct)
    assert store.count(classifier.version) == len(distinct) == 10
    assert store.keys(classifier.version) == expected
    assert lake.list("gallery/") == expected
    assert lake.list("incoming/") == []
    for key in ("incoming/bad.txt", "incoming/broken.jpg"):
        parked = f"rejected/{sha(pictures[key])}"
        assert lake.get(parked) == pictures[key]
        assert json.loads(lake.get(parked + ".reason.json"))["source_key"] == key
    # Of each duplicated pair exactly one drop was indexed, the other found it indexed.
    for pair in (("incoming/p01.png", "incoming/p01 twin.png"),
                 ("incoming/p02.png", "incoming/sub/p02 again.png")):
        assert sorted(first.outcomes[k].status for k in pair) == [
            Status.DUPLICATE, Status.INDEXED]


class GatedLake(LocalLake):
    """Counts lake calls in flight and rows written; the first reads wait at a barrier that
    only concurrent reads can pass (a sequential path would break it: the read fails)."""

    def __init__(self, root, parties: int):
        super().__init__(root, URL_KEY)
        self.barrier = threading.Barrier(parties, timeout=30)
        self.lock = threading.Lock()
        self.reads = self.in_flight = self.most_in_flight = 0

    def _enter(self) -> int:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            return self.in_flight

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def get_version(self, key, max_bytes=None):
        self._enter()
        try:
            with self.lock:
                self.reads += 1
                first_ones = self.reads <= self.barrier.parties
            if first_ones:
                self.barrier.wait()
            return super().get_version(key, max_bytes)
        finally:
            self._leave()

    def put(self, key, data, content_type="application/octet-stream"):
        self._enter()
        try:
            super().put(key, data, content_type)
        finally:
            self._leave()

    def delete_version(self, key, version):
        self._enter()
        try:
            return super().delete_version(key, version)
        finally:
            self._leave()


class RecordingStore(EmbeddingStore):
    """The real store, noting how many drops had been read when each chunk's rows went in."""

    def __init__(self, dsn, lake: GatedLake):
        super().__init__(dsn)
        self.lake, self.reads_at_upsert = lake, []
        self.threads: set[str] = set()
        self.meet = threading.Barrier(2, timeout=30)

    def existing_sha256(self, *args, **kwargs):
        self.threads.add(threading.current_thread().name)
        return super().existing_sha256(*args, **kwargs)

    def upsert_many(self, rows):
        self.threads.add(threading.current_thread().name)
        with self.lake.lock:
            self.reads_at_upsert.append(self.lake.reads)
        if len(self.reads_at_upsert) == 1:
            self.meet.wait()  # chunk 0's rows: only while chunk 1 is in the model
        return super().upsert_many(rows)


class OverlapClassifier:
    """The real classifier, except that its second batch meets the first chunk's row write at
    a barrier: only a pipeline that writes one chunk's rows while the model runs the next
    passes (where the two take turns, the barrier times out and breaks)."""

    def __init__(self, inner, meet: threading.Barrier):
        self._inner, self._meet = inner, meet
        self.batches = 0
        self.threads: set[str] = set()

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def predict(self, batch):
        self.threads.add(threading.current_thread().name)
        self.batches += 1
        if self.batches == 2:
            self._meet.wait()
        return self._inner.predict(batch)


def test_the_pool_overlaps_reads_inference_and_rows_and_bounds_what_is_in_flight(
    tmp_path, pg_dsn, classifier, monkeypatch
):
    workers, decoders, batch = 4, 2, 3
    lake = GatedLake(tmp_path / "lake", parties=batch)  # a chunk's reads run together
    store = RecordingStore(pg_dsn, lake)
    store.migrate()
    ensure_model_version(store, classifier)
    model = OverlapClassifier(classifier, store.meet)
    keys = [f"incoming/q{i:02d}.png" for i in range(14)]
    for i, key in enumerate(keys):
        lake.put(key, picture(600 + i))

    decoding = {"now": 0, "most": 0}
    decode_lock = threading.Lock()
    real_load_image = artlens.ingest.load_image

    def counted_load_image(*args, **kwargs):
        with decode_lock:
            decoding["now"] += 1
            decoding["most"] = max(decoding["most"], decoding["now"])
        try:
            return real_load_image(*args, **kwargs)
        finally:
            with decode_lock:
                decoding["now"] -= 1

    monkeypatch.setattr(artlens.ingest, "load_image", counted_load_image)
    report = ingest_objects(keys, lake, model, store, batch_size=batch,
                            concurrency=Concurrency(workers=workers, decoders=decoders))

    # The first `workers` reads met at their barrier, chunk 1's inference and chunk 0's rows
    # at theirs.
    assert report.failed_keys == []
    assert report.indexed == len(keys)
    assert lake.most_in_flight <= workers
    assert 1 <= decoding["most"] <= decoders
    # Three chunks deep: when chunk k's rows are written (while chunk k+1 is in the model), at
    # most chunks 0..k+2 were read.
    assert len(store.reads_at_upsert) == 5  # chunks of 3, 3, 3, 3, 2
    for k, reads in enumerate(store.reads_at_upsert):
        assert reads <= (k + 3) * batch, store.reads_at_upsert
    # The database is used from the caller's thread only (one connection); the model from a
    # thread of its own (one session).
    assert store.threads == {threading.current_thread().name}
    assert len(model.threads) == 1 and store.threads.isdisjoint(model.threads)
    assert lake.list("incoming/") == []
    store.close()


CONTEXT = SimpleNamespace(
    function_name="embed", memory_limit_in_mb=1024, aws_request_id="req-c",
    invoked_function_arn="arn:aws:lambda:eu-west-1:123456789012:function:embed",
)


def sqs_record(message_id: str, key: str) -> dict:
    body = {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-1",
        "eventTime": "2026-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "incoming",
               "bucket": {"name": "local", "arn": "arn:aws:s3:::local"},
               "object": {"key": key.replace(" ", "+"), "size": 1, "sequencer": "0A"}},
    }]}
    return {
        "messageId": message_id, "receiptHandle": f"rh-{message_id}", "body": json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
        "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:incoming", "awsRegion": "eu-west-1",
    }


def test_embed_handler_reports_failed_lake_calls_and_the_redelivery_indexes_them(
    tmp_path, pg_dsn, tiny_model_card, monkeypatch
):
    EmbeddingStore(pg_dsn).migrate()
    pictures = drops()
    p04 = pictures["incoming/p04.png"]
    lake = FlakyLake(tmp_path / "lake", {
        ("get_version", "incoming/p06.png"), ("put", f"gallery/{sha(p04)}.png"),
        ("delete_version", "incoming/p09.png"),
    })
    for key, data in pictures.items():
        lake.put(key, data)
    for name in ("IMAGES_BUCKET", "DB_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"DATABASE_URL": pg_dsn, "MODEL_CARD_PATH": str(tiny_model_card),
                        "LOCAL_LAKE_DIR": str(lake.root),
                        "LOCAL_URL_KEY": URL_KEY.decode()}.items():
        monkeypatch.setenv(name, value)
    # The handler's own lake, with faults injected (Serving builds it at cold start).
    monkeypatch.setattr("artlens.serving.lake_from_settings", lambda settings: lake)
    sys.modules.pop("lambdas.embed", None)
    embed = importlib.import_module("lambdas.embed")
    try:
        assert embed.deps().concurrency.workers > 1  # the pooled path, as deployed
        messages = {f"m{i}": key for i, key in enumerate(pictures)}
        event = {"Records": [sqs_record(m, key) for m, key in messages.items()]}

        answer = embed.handler(event, CONTEXT)

        failed = {item["itemIdentifier"] for item in answer["batchItemFailures"]}
        by_key = {key: m for m, key in messages.items()}
        assert failed == {by_key[f"incoming/p{i:02d}.png"] for i in (4, 6, 9)}
        redelivery = {"Records": [sqs_record(m, messages[m]) for m in sorted(failed)]}
        assert embed.handler(redelivery, CONTEXT) == {"batchItemFailures": []}

        store = embed.deps().serving.store
        version = embed.deps().serving.registry.default_card.version
        distinct = {sha(d) for k, d in pictures.items() if k.endswith(".png")}
        assert store.keys(version) == sorted(f"gallery/{s}.png" for s in distinct)
        assert lake.list("incoming/") == []
        assert len(lake.list("rejected/")) == 4  # two drops, each with its reason
    finally:
        embed.deps().serving.store.close()
        sys.modules.pop("lambdas.embed", None)
