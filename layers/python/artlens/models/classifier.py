"""Classifiers: the `Classifier` protocol every consumer types against, and its ONNX Runtime
implementation.

One `InferenceSession` per process and card: sessions are expensive to build (graph
optimisation, weight loading), so `get_classifier` creates it on first use and every later
invocation in the same Lambda container reuses it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from artlens.models.card import ModelCard, verified_model_bytes


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # float32 [N, C], rows sum to 1
    embeddings: np.ndarray  # float32 [N, embedding_size]


class Classifier(Protocol):
    """What ingestion, reindexing and predict need from a model."""

    @property
    def version(self) -> str: ...

    @property
    def classes(self) -> tuple[str, ...]: ...

    @property
    def input_size(self) -> int: ...

    @property
    def embedding_size(self) -> int: ...

    def predict(self, batch: np.ndarray) -> Prediction: ...


class OnnxClassifier:
    """ONNX Runtime inference over batches of preprocessed images (NHWC float32 in [0, 1])."""

    def __init__(self, card: ModelCard, threads: int = 1):
        import onnxruntime as ort

        if threads < 1:
            raise ValueError("threads must be >= 1")
        # Verify the exact bytes we hand to the runtime, so nothing can swap the file in between.
        model_bytes = verified_model_bytes(card)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.card = card
        self.threads = threads
        self._outputs = [card.probabilities_output, card.embedding_output]

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def classes(self) -> tuple[str, ...]:
        return self.card.classes

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def embedding_size(self) -> int:
        return self.card.embedding_size

    def predict(self, batch: np.ndarray) -> Prediction:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[np.newaxis]
        size = self.card.input_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(f"expected [N,{size},{size},3], got {batch.shape}")
        if batch.shape[0] == 0:
            return Prediction(
                np.zeros((0, len(self.classes)), np.float32),
                np.zeros((0, self.card.embedding_size), np.float32),
            )
        probabilities, embeddings = self._session.run(
            self._outputs, {self.card.input_name: np.ascontiguousarray(batch)}
        )
        return Prediction(
            probabilities=np.asarray(probabilities, dtype=np.float32),
            embeddings=np.asarray(embeddings, dtype=np.float32),
        )


@functools.lru_cache(maxsize=8)
def _cached_classifier(card_path: str, threads: int) -> OnnxClassifier:
    return OnnxClassifier(ModelCard.load(card_path), threads=threads)


def get_classifier(card_path: str | Path, threads: int = 1) -> OnnxClassifier:
    """The process-wide classifier for this card and thread count (built on first call)."""
    return _cached_classifier(str(Path(card_path).resolve()), int(threads))


def classifier_of(card: ModelCard, threads: int) -> OnnxClassifier:
    # Keyed by the card's path, so the default model reached through the registry and through
    # get_classifier(MODEL_CARD_PATH) shares one session.
    assert card.card_path is not None  # every card here came from ModelCard.load
    return get_classifier(card.card_path, threads)


