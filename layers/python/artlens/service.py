"""Request-path domain functions: classify one picture and find its neighbours; the collection map;
which model serves (the database's current version, `CurrentModel`) and switching it back.

Ingestion and reindexing live in artlens.ingest. Both take their collaborators (classifier,
store, lake) as arguments, so handlers, the local stack and tests wire them the same way.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from artlens.errors import Unavailable
from artlens.image import load_image, preprocess
from artlens.ingest import rollback
from artlens.model import ModelIntegrityError

logger = logging.getLogger(__name__)

PROBABILITY_DIGITS = 6
SIMILARITY_DIGITS = 6
# How stale predict's idea of the current model version may be: one indexed lookup per
# container per interval, and a switch reaches every warm container within it.
CURRENT_VERSION_TTL_S = 5.0


class CurrentModel:
    """The classifier predict serves: the model of the database's current version.

    The switch (a reindex completing, a rollback) is a row in the database, so every process
    follows it within `ttl_s`. When the registry lacks the current version's model (or its file
    fails verification) the default model serves instead, searching its own version's rows, and
    a warning is logged once per switch. When the database cannot be asked, the model already
    serving keeps serving.
    """

    def __init__(
        self,
        registry: Any,
        store: Any,
        *,
        threads: int = 1,
        ttl_s: float = CURRENT_VERSION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.registry = registry
        self.store = store
        self.threads = threads
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._serving: Any = None
        self._chosen_for: str | None = None  # the current version `_serving` was chosen for
        self._checked_at = 0.0

    def classifier(self) -> Any:
        with self._lock:
            now = self._clock()
            if self._serving is not None and now - self._checked_at < self.ttl_s:
                return self._serving
            self._checked_at = now
            try:
                current = self.store.current_version()
            except Unavailable:
                if self._serving is None:
                    raise
                logger.warning("cannot read the current model version; keeping %s",
                               self._serving.version)
                return self._serving
            if self._serving is None or current != self._chosen_for:
                self._serving = self._choose(current)
                self._chosen_for = current
            return self._serving

    def _choose(self, version: str | None) -> Any:
        if version is None:  # a fresh index: nothing is current yet
            return self.registry.default_classifier(self.threads)
        try:
            if self.registry.card_for(version) is not None:
                chosen = self.registry.classifier_for(version, self.threads)
                logger.info("serving model version %s", version)
                return chosen
            problem = f"the registry at {self.registry.root} does not hold it"
        except ModelIntegrityError as exc:
            problem = str(exc)
        fallback = self.registry.default_classifier(self.threads)
        logger.warning(
            "model version %s is current but cannot serve (%s); serving the default model %s "
            "and its own rows instead", version, problem, fallback.version,
        )
        return fallback


def switch_back(store: Any, registry: Any) -> tuple[str | None, str]:
    """Roll the index back to the previously active version; returns (old, new) versions.

    Refuses when the registry lacks that version's model: predict could not serve it and would
    fall back to the default model instead of really switching back.
    """
    current = store.current_version()
    previous = store.previous_version()
    if previous is not None:
        registry.require(previous)
    return current, rollback(store)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def predict_image(
    data: bytes, classifier: Any, store: Any, lake: Any, neighbors: int = 5, scope: str = "class"
) -> dict[str, Any]:
    """Bytes of one picture -> the POST /predict answer (see docs/architecture.md).

    Neighbours are searched among rows of the classifier's own model version (embeddings of two
    models are not comparable), restricted to the predicted label when scope is "class", and
    never include the query picture itself (same SHA-256).
    """
    if scope not in ("class", "all"):
        raise ValueError(f"scope must be 'class' or 'all', not {scope!r}")
    started = time.perf_counter()
    loaded = load_image(data)
    pixels = preprocess(loaded.rgb)[np.newaxis]
    decoded = time.perf_counter()

    prediction = classifier.predict(pixels)
    probabilities = prediction.probabilities[0]
    embedding = prediction.embeddings[0]
    best = int(np.argmax(probabilities))
    label = classifier.classes[best]
    inferred = time.perf_counter()

    found: list[dict[str, Any]] = []
    if neighbors > 0:
        rows = store.nearest(
            embedding,
            k=neighbors,
            label=label if scope == "class" else None,
            exclude_sha256=hashlib.sha256(data).hexdigest(),
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
    store: Any,
    lake: Any,
    model_version: str | None,
    limit: int,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """GET /map: up to `limit` gallery embeddings of one model version projected to 3D."""
    version = model_version or store.current_version()
    rows = list(store.sample_embeddings(version, limit)) if version else []
    points_3d = project_3d(np.array([row.embedding for row in rows], dtype=np.float32).reshape(
        len(rows), -1
    ))
    points = [
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
