"""The embed path: `artlens.ingest.ingest_objects` over 256 px JPEGs dropped under incoming/ of a
LocalLake, with the real store (fresh database, HNSW index present), ONNX Runtime on the
indexing functions' threads (cdk.json `indexingOrtThreads`) and the local stack's pool
(`artlens.ingest.LOCAL_LAKE_WORKERS`). Batched (the embed Lambda's batch size) vs one picture
per batch (the baseline); also with no pool and with the embed function's pool (sized for S3).

Where the time goes: the bench wraps the collaborators (lake, store, classifier, and the
decode/preprocess functions artlens.ingest calls) with timers; production code is untouched.
With the thread pool the timers add up time spent on every thread, so the split can exceed the
wall time ("other" is then 0).

Per function on S3: the same pictures behind bench.slow_lake.SlowLake (the folder lake plus a
fixed wait per call, `Sizes.s3_latency_ms`), ingested by one call with the embed function's
concurrency (artlens.ingest.Concurrency defaults) and with every call in sequence
(artlens.ingest.SEQUENTIAL, the baseline); also in calls of the SQS batch size, as the embed
function is invoked today. A 1,000,000-picture backfill is projected from the per-function rate
times the deployed concurrency (cdk.json, prod `embedMaxConcurrency`), assuming the database
keeps up (it sees 2 round trips per chunk of 16).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from bench.common import URL_KEY, Bench, deployed_setting, patched, ratio, ready_store

BACKFILL_PICTURES = 1_000_000
# Used when cdk.json cannot be read; stated in the results.
FALLBACK_CONCURRENCY = 10
S3_WORKER_SWEEP = (16, 32)
_LOCK = threading.Lock()  # the timers are called from the ingest pool's threads


def indexing_threads() -> int:
    """ONNX Runtime threads as the embed function and the local stack run the model."""
    return int(deployed_setting("indexingOrtThreads") or 1)


def _local() -> Any:
    from artlens.ingest import LOCAL_LAKE_WORKERS, Concurrency

    return Concurrency(workers=LOCAL_LAKE_WORKERS)


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
            elapsed = time.perf_counter() - started
            with _LOCK:
                totals[bucket] += elapsed
                calls[name] += 1

    return timed


def _one_run(bench: Bench, batch_size: int, pictures: list[bytes], tag: str,
             concurrency: Any = None) -> dict[str, Any]:
    """One ingest call over a local folder lake; `concurrency` None: the local stack's."""
    import artlens.ingest
    from artlens.lake import LocalLake
    from artlens.models.classifier import OnnxClassifier as Classifier

    dsn = bench.pg.new_database(f"ingest{tag}")
    store = ready_store(dsn, bench.card.version, bench.card.embedding_size)
    lake = LocalLake(bench.workdir / f"ingest-lake-{tag}", URL_KEY.encode())
    keys = []
    for i, data in enumerate(pictures):
        key = f"incoming/picture-{i:05d}.jpg"
        lake.put(key, data, "image/jpeg")
        keys.append(key)
    classifier = Classifier(bench.card, threads=indexing_threads())
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
            keys, timed_lake, timed_classifier, timed_store, batch_size=batch_size,
            concurrency=concurrency or _local(),
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
    ready_store(dsn, version, bench.card.embedding_size).close()
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


def _s3_run(bench: Bench, pictures: list[bytes], tag: str, concurrency: Any,
            call_size: int | None = None) -> dict[str, Any]:
    """Ingest `pictures` through a SlowLake with `concurrency` (artlens.ingest.Concurrency);
    `call_size` keys per ingest call (None: all in one call)."""
    from artlens.ingest import ingest_objects
    from artlens.lake import LocalLake
    from artlens.models.classifier import OnnxClassifier as Classifier
    from bench.slow_lake import SlowLake

    sizes = bench.sizes
    store = ready_store(bench.pg.new_database(f"ingests3{tag}"), bench.card.version,
                        bench.card.embedding_size)
    local = LocalLake(bench.workdir / f"ingest-s3-lake-{tag}", URL_KEY.encode())
    keys = []
    for i, data in enumerate(pictures):
        keys.append(f"incoming/picture-{i:05d}.jpg")
        local.put(keys[-1], data, "image/jpeg")  # dropped before the clock starts
    lake = SlowLake(local, sizes.s3_latency_ms / 1000.0)
    classifier = Classifier(bench.card, threads=indexing_threads())
    classifier.predict(bench.model_inputs(2))  # session warm, as in a warm Lambda
    step = call_size or len(keys)
    indexed = 0
    started = time.perf_counter()
    for start in range(0, len(keys), step):
        report = ingest_objects(keys[start : start + step], lake, classifier, store,
                                batch_size=sizes.ingest_batch, concurrency=concurrency)
        indexed += report.indexed
    wall = time.perf_counter() - started
    store.close()
    if indexed != len(pictures):
        raise RuntimeError(f"ingest through the slow lake indexed {indexed} of {len(pictures)}")
    return {"images_per_s": len(pictures) / wall, "seconds": wall,
            "lake_calls_per_image": lake.calls / len(pictures),
            "workers": concurrency.workers, "decoders": concurrency.decoders}


def s3_figures(bench: Bench) -> dict[str, Any]:
    """Pictures/s per function with S3's per-call latency, with and without the concurrency,
    and the projected wall time of a 1,000,000-picture backfill."""
    from artlens.ingest import SEQUENTIAL, Concurrency

    sizes = bench.sizes
    pictures = bench.small_jpegs[: sizes.s3_images]
    concurrent = _s3_run(bench, pictures, "pool", Concurrency())
    sequential = _s3_run(bench, pictures, "seq", SEQUENTIAL)
    sqs_batch = int(deployed_setting("embedBatchSize") or 10)
    per_message = _s3_run(bench, pictures, "sqs", Concurrency(), call_size=sqs_batch)
    # The pool is bounded by calls in flight: workers / latency calls a second, ~3 a picture.
    # More workers need a boto3 client with as many connections (max_pool_connections).
    sweep = {str(w): _s3_run(bench, pictures, f"w{w}", Concurrency(workers=w))["images_per_s"]
             for w in S3_WORKER_SWEEP}
    deployed = deployed_setting("embedMaxConcurrency")
    functions = int(deployed or FALLBACK_CONCURRENCY)

    def hours(rate: float) -> float:
        return BACKFILL_PICTURES / (rate * functions) / 3600.0

    return {
        "s3_images_per_s": concurrent["images_per_s"],
        "s3_sequential_images_per_s": sequential["images_per_s"],
        "s3_speedup": ratio(concurrent["images_per_s"], sequential["images_per_s"]),
        "s3_sqs_batch_images_per_s": per_message["images_per_s"],
        "s3_sqs_batch_size": sqs_batch,
        "s3_latency_ms_per_call": sizes.s3_latency_ms,
        "s3_lake_calls_per_image": concurrent["lake_calls_per_image"],
        "s3_workers": concurrent["workers"],
        "s3_decoders": concurrent["decoders"],
        "s3_images": len(pictures),
        "s3_images_per_s_by_workers": sweep,
        "backfill_pictures": BACKFILL_PICTURES,
        "backfill_concurrency": functions,
        "backfill_concurrency_source": (
            "cdk.json prod embedMaxConcurrency" if deployed
            else f"stated: {FALLBACK_CONCURRENCY} (cdk.json not readable)"),
        "backfill_1m_hours": hours(concurrent["images_per_s"]),
        "backfill_1m_sequential_hours": hours(sequential["images_per_s"]),
        "backfill_1m_sqs_batch_hours": hours(per_message["images_per_s"]),
    }


def run(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    pictures = bench.small_jpegs[: sizes.ingest_images]
    batched = _one_run(bench, sizes.ingest_batch, pictures, "batched")
    single = _one_run(bench, 1, pictures, "single")
    from artlens.ingest import SEQUENTIAL, Concurrency

    in_order = _one_run(bench, sizes.ingest_batch, pictures, "inorder", SEQUENTIAL)
    # The embed function's pool (10 workers, sized for S3's waiting) on the folder lake.
    lambda_pool = _one_run(bench, sizes.ingest_batch, pictures, "lambdapool", Concurrency())
    return {
        **s3_figures(bench),
        "images_per_s": batched["images_per_s"],
        "batch1_images_per_s": single["images_per_s"],
        # Without the pool (every step on one thread): what overlapping decode with inference
        # gains where lake calls cost nothing.
        "sequential_images_per_s": in_order["images_per_s"],
        "lambda_pool_images_per_s": lambda_pool["images_per_s"],
        "workers": _local().workers,
        "sequential_split_ms_per_image": in_order["split_ms_per_image"],
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
        "ort_threads": indexing_threads(),
        "pictures": "256x256 JPEGs (q90) in a LocalLake folder; HNSW index present",
    }
