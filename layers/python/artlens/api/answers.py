"""The API's answers: POST /predict (classify one picture, find its neighbours) and GET /map
(the collection projected to 3D), with their declared JSON shapes (TypedDict)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from artlens.digests import sha256_hex
from artlens.image import load_image, preprocess
from artlens.index.embeddings import EmbeddingStore
from artlens.lake import ObjectLake
from artlens.models.classifier import Classifier
from artlens.models.versions import versions_of

PROBABILITY_DIGITS = 6
SIMILARITY_DIGITS = 6
SCOPES = ("class", "all")


class NeighborAnswer(TypedDict):
    key: str
    label: str
    similarity: float  # cosine similarity, 1 = the same direction
    url: str  # a short-lived GET URL of the picture


class Timings(TypedDict):
    decode: float
    infer: float
    search: float
    total: float


class PredictAnswer(TypedDict):
    """POST /predict 200 (docs/architecture.md)."""

    label: str
    probability: float
    probabilities: dict[str, float]  # every class, in the model's order
    neighbors: list[NeighborAnswer]
    model_version: str
    timings_ms: Timings


class MapPoint(TypedDict):
    key: str
    label: str
    x: float
    y: float
    z: float
    url: str


class MapAnswer(TypedDict):
    """GET /map 200."""

    model_version: str | None
    classes: list[str]
    points: list[MapPoint]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def predict_image(
    data: bytes, classifier: Classifier, store: EmbeddingStore, lake: ObjectLake,
    neighbors: int = 5, scope: str = "class",
) -> PredictAnswer:
    """Bytes of one picture -> the POST /predict answer (see docs/architecture.md).

    Neighbours are searched among rows of the classifier's own model version (embeddings of two
    models are not comparable), restricted to the predicted label when scope is "class", and
    never include the query picture itself (same SHA-256).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'class' or 'all', not {scope!r}")
    started = time.perf_counter()
    size = classifier.input_size
    loaded = load_image(data, size=size)
    pixels = preprocess(loaded.rgb, size)[np.newaxis]
    decoded = time.perf_counter()

    prediction = classifier.predict(pixels)
    probabilities = prediction.probabilities[0]
    embedding = prediction.embeddings[0]
    best = int(np.argmax(probabilities))
    label = classifier.classes[best]
    inferred = time.perf_counter()

    found: list[NeighborAnswer] = []
    if neighbors > 0:
        rows = store.nearest(
            embedding,
            k=neighbors,
            label=label if scope == "class" else None,
            exclude_sha256=sha256_hex(data),
            model_version=classifier.version,
        )
        found = [
            {
                "key": row.key,
                "label": row.label,
                "similarity": round(float(row.similarity), SIMILARITY_DIGITS),
                "url": lake.url_for(row.key),
            }
            for row in rows
        ]
    searched = time.perf_counter()

    return {
        "label": label,
        "probability": round(float(probabilities[best]), PROBABILITY_DIGITS),
        "probabilities": {
            name: round(float(p), PROBABILITY_DIGITS)
            for name, p in zip(classifier.classes, probabilities, strict=True)
        },
        "neighbors": found,
        "model_version": classifier.version,
        "timings_ms": {
            "decode": _ms(decoded - started),
            "infer": _ms(inferred - decoded),
            "search": _ms(searched - inferred),
            "total": _ms(searched - started),
        },
    }


def project_3d(embeddings: np.ndarray) -> np.ndarray:
    """PCA to 3 components via SVD, scaled into [-1, 1]; deterministic signs.

    Fewer than 3 informative directions (tiny collections) leave the extra axes at 0.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    out = np.zeros((n, 3), dtype=np.float64)
    if n == 0:
        return out
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(3, int(np.sum(s > 1e-9 * max(float(s[0]) if s.size else 0.0, 1e-30))))
    if k == 0:
        return out
    # Flip each component so its largest loading is positive: SVD signs are arbitrary, and the
    # map should not mirror itself between two calls on the same data.
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt[:k]), axis=1)])
    signs[signs == 0] = 1.0
    out[:, :k] = (u[:, :k] * s[:k]) * signs
    scale = float(np.max(np.abs(out)))
    return out / scale if scale > 0 else out


def collection_map(
    store: EmbeddingStore,
    lake: ObjectLake,
    model_version: str | None,
    limit: int,
    classes: Sequence[str] | None = None,
) -> MapAnswer:
    """GET /map: up to `limit` gallery embeddings of one model version projected to 3D."""
    version = model_version or versions_of(store).current()
    rows = list(store.sample_embeddings(version, limit)) if version else []
    points_3d = project_3d(np.array([row.embedding for row in rows], dtype=np.float32).reshape(
        len(rows), -1
    ))
    points: list[MapPoint] = [
        {
            "key": row.key,
            "label": row.label,
            "x": round(float(xyz[0]), 5),
            "y": round(float(xyz[1]), 5),
            "z": round(float(xyz[2]), 5),
            "url": lake.url_for(row.key),
        }
        for row, xyz in zip(rows, points_3d, strict=True)
    ]
    return {
        "model_version": version,
        "classes": list(classes) if classes is not None else sorted({row.label for row in rows}),
        "points": points,
    }
