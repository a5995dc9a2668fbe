"""The exported model: its card (JSON) and an ONNX Runtime classifier.

One `InferenceSession` per process and card: sessions are expensive to build (graph
optimisation, weight loading), so `get_classifier` creates it on first use and every later
invocation in the same Lambda container reuses it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artlens.image import INPUT_SIZE

CARD_REQUIRED_KEYS = (
    "name", "version", "classes", "input", "outputs", "embedding_size", "onnx_file", "onnx_sha256",
)


class ModelIntegrityError(RuntimeError):
    """The model card and the ONNX file do not belong together: refuse to serve."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    classes: tuple[str, ...]
    embedding_size: int
    onnx_path: Path
    onnx_sha256: str
    input_name: str
    probabilities_output: str
    embedding_output: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        card_path = Path(path).resolve()
        try:
            raw = json.loads(card_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelIntegrityError(f"cannot read model card {card_path}: {exc}") from exc
        missing = [k for k in CARD_REQUIRED_KEYS if k not in raw]
        if missing:
            raise ModelIntegrityError(f"model card {card_path} lacks {missing}")
        classes = tuple(str(c) for c in raw["classes"])
        if len(classes) < 2:
            raise ModelIntegrityError("model card lists fewer than 2 classes")
        return cls(
            name=str(raw["name"]),
            version=str(raw["version"]),
            classes=classes,
            embedding_size=int(raw["embedding_size"]),
            onnx_path=card_path.with_name(raw["onnx_file"]),
            onnx_sha256=str(raw["onnx_sha256"]).lower(),
            input_name=str(raw["input"].get("name", "image")),
            probabilities_output=str(raw["outputs"].get("probabilities", "probabilities")),
            embedding_output=str(raw["outputs"].get("embedding", "embedding")),
            raw=raw,
        )


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # float32 [N, C], rows sum to 1
    embeddings: np.ndarray  # float32 [N, embedding_size]


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Classifier:
    """ONNX Runtime inference over batches of preprocessed images (NHWC float32 in [0, 1])."""

    def __init__(self, card: ModelCard, threads: int = 1):
        import onnxruntime as ort

        if threads < 1:
            raise ValueError("threads must be >= 1")
        try:
            model_bytes = card.onnx_path.read_bytes()
        except OSError as exc:
            raise ModelIntegrityError(f"cannot read ONNX file {card.onnx_path}: {exc}") from exc
        # Verify the exact bytes we hand to the runtime, so nothing can swap the file in between.
        actual = _sha256_bytes(model_bytes)
        if actual != card.onnx_sha256:
            raise ModelIntegrityError(
                f"{card.onnx_path.name} has SHA-256 {actual}, the card says {card.onnx_sha256}"
            )
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

    def predict(self, batch: np.ndarray) -> Prediction:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[np.newaxis]
        if batch.ndim != 4 or batch.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected [N,{INPUT_SIZE},{INPUT_SIZE},3], got {batch.shape}")
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


@functools.lru_cache(maxsize=4)
def _cached_classifier(card_path: str, threads: int) -> Classifier:
    return Classifier(ModelCard.load(card_path), threads=threads)


def get_classifier(card_path: str | Path, threads: int = 1) -> Classifier:
    """The process-wide classifier for this card and thread count (built on first call)."""
    return _cached_classifier(str(Path(card_path).resolve()), int(threads))
