"""The whole predict handler, one thread: API Gateway event -> base64 -> decode -> preprocess ->
ONNX inference -> nearest 5 (same class) in PostgreSQL over indexed rows -> JSON answer.

Baselines measured in the same run:
- large pictures without JPEG draft mode (full-size decode, then the same preprocessing): the
  handler with `artlens.api.answers.load_image` swapped for a bench-only no-draft loader;
- the study's serving (Keras `model.predict`) behind the same handler, for small pictures;
- with S3's per-call latency (bench.slow_lake) on the upload the handler keeps: the keep run
  inline, on the request's critical path (as before it overlapped the model), beside the
  handler's own keep in a thread.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from bench.common import (
    URL_KEY,
    Bench,
    build_index,
    copy_rows,
    deployed_setting,
    p50,
    p99,
    patched,
    ratio,
    tile,
)
from bench.common import ready_store as make_ready_store
from bench.slow_lake import SlowLake
from local_stack.events import LambdaContext


def predict_event(data: bytes) -> dict[str, Any]:
    return {
        "httpMethod": "POST",
        "resource": "/predict",
        "path": "/predict",
        "headers": {"content-type": "image/jpeg"},
        "queryStringParameters": None,
        "body": base64.b64encode(data).decode(),
        "isBase64Encoded": True,
        "requestContext": {"requestId": "bench", "authorizer": {"principalId": "bench"}},
    }


def load_image_without_draft(data: bytes, **_: Any):
    """Bench-only baseline: full-size decode (no DCT scaling), then the same RGB/orientation."""
    from artlens.image import LoadedImage

    img = Image.open(io.BytesIO(data))
    source_format = img.format
    img.load()
    img = ImageOps.exif_transpose(img).convert("RGB")
    return LoadedImage(rgb=img, format=source_format, width=img.width, height=img.height)


class InlineKeeper:
    """Bench-only: runs what PredictApi hands its keep-upload pool at once, in the caller."""

    def submit(self, fn: Any, *args: Any) -> Future[None]:
        done: Future[None] = Future()
        fn(*args)
        done.set_result(None)
        return done


class KerasClassifier:
    """The study's serving: a Keras model called with model.predict, behind our interface."""

    def __init__(self, keras_path, card):
        import keras

        self._model = keras.models.load_model(keras_path, compile=False)
        self.card = card
        self.version = card.version
        self.classes = card.classes
        self.input_size = card.input_size
        self.embedding_size = card.embedding_size

    def predict(self, batch: np.ndarray):
        from artlens.models.classifier import Prediction

        probabilities, embeddings = self._model.predict(batch, verbose=0)
        return Prediction(np.asarray(probabilities), np.asarray(embeddings))


class FixedModel:
    """Serves one classifier, in place of the database's current version."""

    def __init__(self, classifier: Any):
        self._classifier = classifier

    def classifier(self) -> Any:
        return self._classifier


@contextmanager
def handler_environment(env: dict[str, str]) -> Iterator[Any]:
    from lambdas import predict

    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    predict.reset()
    try:
        yield predict
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        predict.reset()


def serve(predict: Any, events: list[dict[str, Any]], count: int, warmup: int) -> dict[str, Any]:
    """`count` requests through the handler, cycling over `events`; p50/p99 and stage medians.

    `outside_service` is the handler's own share: base64, routing, JSON, logging (the wall time
    minus the service's `timings_ms.total`).
    """
    context = LambdaContext("artlens-predict")
    for i in range(warmup):
        predict.handler(events[i % len(events)], context)
    totals, outside = [], []
    stages: dict[str, list[float]] = {"decode": [], "infer": [], "search": []}
    for i in range(count):
        started = time.perf_counter()
        response = predict.handler(events[i % len(events)], context)
        totals.append((time.perf_counter() - started) * 1000.0)
        if response["statusCode"] != 200:
            raise RuntimeError(f"predict answered {response['statusCode']}: {response['body']}")
        timings = json.loads(response["body"])["timings_ms"]
        for stage, values in stages.items():
            values.append(timings[stage])
        outside.append(totals[-1] - timings["total"])
    stage_p50 = {stage: p50(values) for stage, values in stages.items()}
    stage_p50["outside_service"] = p50(outside)
    return {"p50_ms": p50(totals), "p99_ms": p99(totals), "requests": count,
            "stages_p50_ms": stage_p50}


def profile(work: Any, top: int = 15) -> list[str]:
    """cProfile of `work()`: the functions with the most own time, as readable lines."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(work)
    stats = pstats.Stats(profiler)
    total = sum(entry[2] for entry in stats.stats.values()) or 1.0
    ranked = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = []
    for (filename, line, name), (_, calls, own, cumulative, _) in ranked:
        where = f"{Path(filename).name}:{line}" if line else "built-in"
        lines.append(f"{100 * own / total:5.1f}% own, {cumulative:.3f}s cum, {calls} calls: "
                     f"{name} ({where})")
    return lines


def run(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    rng = np.random.default_rng(7)
    from bench.common import noise_scale

    base = bench.embedded
    rows, labels = tile(base, sizes.request_rows, noise_scale(base.embeddings, rng), rng)
    dsn = bench.pg.new_database("request")
    make_ready_store(dsn, bench.card.version, bench.card.embedding_size).close()
    copy_rows(dsn, bench.card.version, rows, labels)
    from artlens.index.embeddings import DEFAULT_EF_SEARCH, HNSW_EF_CONSTRUCTION, HNSW_M

    build_index(dsn, HNSW_M, HNSW_EF_CONSTRUCTION)

    # The handler as deployed: the predict function's ONNX Runtime threads (cdk.json, prod); its
    # memory setting gives it as many vCPUs (1,769 MB each).
    ort_threads = int(deployed_setting("ortThreads") or 1)
    env = {
        "MODEL_CARD_PATH": str(bench.model.card_path),
        "DATABASE_URL": dsn,
        "LOCAL_LAKE_DIR": str(bench.workdir / "request-lake"),
        "LOCAL_URL_KEY": URL_KEY,
        "CORS_ORIGIN": "*",
        "ORT_THREADS": str(ort_threads),
        "LOG_LEVEL": "WARNING",
    }
    small, large = bench.small_jpegs[:50], bench.large_jpegs
    small_events = [predict_event(data) for data in small]
    large_events = [predict_event(data) for data in large]
    with handler_environment(env) as predict:
        small_run = serve(predict, small_events, sizes.small_requests, sizes.warmup)
        small_profile = profile(lambda: serve(predict, small_events, sizes.profile_requests, 0))
        large_run = serve(predict, large_events, sizes.large_requests, 2)
        import artlens.api.answers

        with patched(artlens.api.answers, "load_image", load_image_without_draft):
            nodraft_run = serve(predict, large_events, sizes.nodraft_requests, 1)
        api = predict.deps().api
        # Fresh pictures, so every keep writes (one conditional PUT), as for a new upload.
        fresh = [predict_event(data) for data in bench.small_jpegs[50:50 + sizes.s3_requests]]
        slow = SlowLake(api.lake, sizes.s3_latency_ms / 1000.0)
        with patched(api, "lake", slow):
            s3_run = serve(predict, fresh[: len(fresh) // 2], len(fresh) // 2, 0)
            with patched(api, "_keeper", InlineKeeper()):
                s3_inline_run = serve(predict, fresh[len(fresh) // 2:], len(fresh) // 2, 0)
        keras = KerasClassifier(bench.model.keras_path, bench.card)
        with patched(predict.deps().api, "model", FixedModel(keras)):
            keras_run = serve(predict, small_events, sizes.keras_requests, 2)

    return {
        "small_p50_ms": small_run["p50_ms"],
        "small_p99_ms": small_run["p99_ms"],
        "large_p50_ms": large_run["p50_ms"],
        "large_p99_ms": large_run["p99_ms"],
        "large_nodraft_p50_ms": nodraft_run["p50_ms"],
        "draft_ratio": ratio(nodraft_run["p50_ms"], large_run["p50_ms"]),
        "keras_small_p50_ms": keras_run["p50_ms"],
        "keras_ratio_small": ratio(keras_run["p50_ms"], small_run["p50_ms"]),
        "s3_small_p50_ms": s3_run["p50_ms"],
        "s3_small_inline_keep_p50_ms": s3_inline_run["p50_ms"],
        "s3_latency_ms_per_call": sizes.s3_latency_ms,
        "stages_p50_ms": {
            "small": small_run["stages_p50_ms"],
            "large": large_run["stages_p50_ms"],
            "large_nodraft": nodraft_run["stages_p50_ms"],
            "keras_small": keras_run["stages_p50_ms"],
        },
        "small_profile_top": small_profile,
        "requests": {
            "small": sizes.small_requests, "large": sizes.large_requests,
            "large_nodraft": sizes.nodraft_requests, "keras_small": sizes.keras_requests,
        },
        "pictures": {
            "small": f"{len(small)} distinct 256x256 JPEGs (q90), "
            f"median {int(np.median([len(d) for d in small])):,} bytes",
            "large": f"{len(large)} distinct 3000x2000 JPEGs (q90, colour grain), "
            f"median {int(np.median([len(d) for d in large])):,} bytes",
        },
        "index_rows": sizes.request_rows,
        # The production settings (artlens.index.embeddings), not the bench's choice in knn.params.
        "hnsw": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION,
                 "ef_search": DEFAULT_EF_SEARCH},
        "ort_threads": ort_threads,
        "predict_memory_mb": deployed_setting("predictMemoryMb"),
        "scope": "class (the default: neighbours of the predicted class)",
    }
