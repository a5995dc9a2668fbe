"""The embed path: `artlens.ingest.ingest_objects` over 256 px JPEGs dropped under incoming/ of a
LocalLake, with the real store (fresh database, HNSW index present) and ONNX Runtime on every
core. Batched (the embed Lambda's batch size) vs one picture per batch (the baseline).

Where the time goes: the bench wraps the collaborators (lake, store, classifier, and the
decode/preprocess functions artlens.ingest calls) with timers; production code is untouched.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from bench.common import URL_KEY, Bench, patched, ratio, ready_store


class _Timed:
    """Delegates to `inner`, adding the wall time of the named methods to `totals[bucket]`."""

    def __init__(self, inner: Any, methods: dict[str, str], totals: dict[str, float],
                 calls: dict[str, int]):
        self._inner, self._methods, self._totals, self._calls = inner, methods, totals, calls

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        bucket = self._methods.get(name)
        if bucket is None or not callable(value):
            return value
        return _timer(value, bucket, self._totals, self._calls, name)


def _timer(fn: Callable, bucket: str, totals: dict[str, float], calls: dict[str, int],
           name: str) -> Callable:
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[bucket] += time.perf_counter() - started
            calls[name] += 1

    return timed


def _one_run(bench: Bench, batch_size: int, pictures: list[bytes], tag: str) -> dict[str, Any]:
    import artlens.ingest
    from artlens.lake import LocalLake
    from artlens.models.classifier import OnnxClassifier as Classifier

    dsn = bench.pg.new_database(f"ingest{tag}")
    store = ready_store(dsn, bench.card.version)
    lake = LocalLake(bench.workdir / f"ingest-lake-{tag}", URL_KEY.encode())
    keys = []
    for i, data in enumerate(pictures):
        key = f"incoming/picture-{i:05d}.jpg"
        lake.put(key, data, "image/jpeg")
        keys.append(key)
    classifier = Classifier(bench.card, threads=bench.threads)
    classifier.predict(bench.model_inputs(2))  # session warm, as in a warm Lambda

    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    database_calls = ("has_sha256", "upsert", "existing_sha256", "upsert_many")
    timed_store = _Timed(store, dict.fromkeys(database_calls, "database"), totals, calls)
    timed_lake = _Timed(lake, {"get": "lake", "put": "lake", "delete": "lake", "copy": "lake"},
                        totals, calls)
    timed_classifier = _Timed(classifier, {"predict": "infer"}, totals, calls)
    with ExitStack() as stack:
        for name in ("load_image", "preprocess"):
            original = getattr(artlens.ingest, name)
            stack.enter_context(patched(
                artlens.ingest, name, _timer(original, "decode", totals, calls, name)
            ))
        started = time.perf_counter()
        report = artlens.ingest.ingest_objects(
            keys, timed_lake, timed_classifier, timed_store, batch_size=batch_size
        )
        wall = time.perf_counter() - started
    store.close()
    if report.indexed != len(pictures):
        raise RuntimeError(f"ingest indexed {report.indexed} of {len(pictures)}: {report}")
    split = {bucket: totals[bucket] for bucket in ("decode", "infer", "database", "lake")}
    split["other"] = max(0.0, wall - sum(split.values()))
    return {
        "images_per_s": len(pictures) / wall,
        "seconds": wall,
        "split_ms_per_image": {k: v * 1000 / len(pictures) for k, v in split.items()},
        "split_share": {k: v / wall for k, v in split.items()},
        "database_round_trips_per_image": sum(calls[n] for n in database_calls) / len(pictures),
    }


def _one_transaction_per_batch(bench: Bench, count: int, batch_size: int) -> float:
    """What the database part would cost with one round trip for the SHA check and one
    multi-row INSERT per batch, in one transaction: ms per image. Same rows, same index."""
    import psycopg2
    from pgvector.psycopg2 import register_vector
    from psycopg2.extras import execute_values

    version = bench.card.version
    dsn = bench.pg.new_database("ingestwhatif")
    ready_store(dsn, version).close()
    embedded = bench.embedded
    conn = psycopg2.connect(dsn)
    register_vector(conn)
    started = time.perf_counter()
    try:
        for start in range(0, count, batch_size):
            idx = range(start, min(count, start + batch_size))
            shas = [f"{i:064x}" for i in idx]
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT sha256 FROM images WHERE model_version = %s AND sha256 = ANY(%s)",
                    (version, shas),
                )
                cur.fetchall()
                execute_values(
                    cur,
                    "INSERT INTO images (key, sha256, label, probability, embedding,"
                    " model_version, width, height, size_bytes) VALUES %s"
                    " ON CONFLICT (sha256, model_version) DO NOTHING RETURNING id",
                    [(f"gallery/{sha}.jpg", sha, embedded.labels[i % len(embedded.labels)], 0.9,
                      embedded.embeddings[i % len(embedded.embeddings)], version, 256, 256, 1)
                     for i, sha in zip(idx, shas, strict=True)],
                    fetch=True,
                )
    finally:
        conn.close()
    return (time.perf_counter() - started) * 1000.0 / count


def run(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    pictures = bench.small_jpegs[: sizes.ingest_images]
    batched = _one_run(bench, sizes.ingest_batch, pictures, "batched")
    single = _one_run(bench, 1, pictures, "single")
    return {
        "images_per_s": batched["images_per_s"],
        "batch1_images_per_s": single["images_per_s"],
        "speedup_vs_batch1": ratio(batched["images_per_s"], single["images_per_s"]),
        "split_ms_per_image": batched["split_ms_per_image"],
        "split_share": batched["split_share"],
        "batch1_split_ms_per_image": single["split_ms_per_image"],
        "database_round_trips_per_image": batched["database_round_trips_per_image"],
        "database_one_transaction_per_batch_ms_per_image": _one_transaction_per_batch(
            bench, len(pictures), sizes.ingest_batch
        ),
        "images": len(pictures),
        "batch_size": sizes.ingest_batch,
        "ort_threads": bench.threads,
        "pictures": "256x256 JPEGs (q90) in a LocalLake folder; HNSW index present",
    }
