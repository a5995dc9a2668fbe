"""The exported model: its card (JSON), an ONNX Runtime classifier, and the model registry.

One `InferenceSession` per process and card: sessions are expensive to build (graph
optimisation, weight loading), so `get_classifier` creates it on first use and every later
invocation in the same Lambda container reuses it.

The registry (`ModelRegistry`) is a folder of versions, `<root>/<version>/artlens.json` with the
ONNX file beside it, plus the default card the process was deployed with. Predict serves the
database's current version from it, so a reindex or a rollback changes what predict answers
with without a redeploy. On AWS the registry is the image's `/var/task/models/` (read-only): a
rollback there needs the previous version's files in the image (`models/<version>/`) or
restored from the artifacts bucket into a new image; otherwise predict falls back to the
default model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artlens.image import INPUT_SIZE

REGISTRY_CARD_NAME = "artlens.json"
# A version names a folder of the registry: no separators, no "..", nothing hidden.
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

CARD_REQUIRED_KEYS = (
    "name", "version", "classes", "input", "outputs", "embedding_size", "onnx_file", "onnx_sha256",
)


class ModelIntegrityError(RuntimeError):
    """The model card and the ONNX file do not belong together: refuse to serve."""


class ModelNotRegistered(ModelIntegrityError):
    """The registry holds no model for this version."""


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
    card_path: Path | None = field(default=None, compare=False)  # the JSON it was loaded from

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
            card_path=card_path,
        )


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # float32 [N, C], rows sum to 1
    embeddings: np.ndarray  # float32 [N, embedding_size]


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verified_model_bytes(card: ModelCard) -> bytes:
    """The ONNX file's bytes, refused unless their SHA-256 is the card's."""
    try:
        model_bytes = card.onnx_path.read_bytes()
    except OSError as exc:
        raise ModelIntegrityError(f"cannot read ONNX file {card.onnx_path}: {exc}") from exc
    actual = _sha256_bytes(model_bytes)
    if actual != card.onnx_sha256:
        raise ModelIntegrityError(
            f"{card.onnx_path.name} has SHA-256 {actual}, the card says {card.onnx_sha256}"
        )
    return model_bytes


class Classifier:
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


class ModelRegistry:
    """The models a deployment can serve, by version: `<root>/<version>/artlens.json` + ONNX.

    `default_card` is the model the process was deployed with (MODEL_CARD_PATH); it counts as
    registered under its own version even when it lives outside `root` (the AWS image keeps it
    at `models/artlens.json`, the registry's root itself).
    """

    def __init__(self, root: str | Path, default_card: str | Path | None = None):
        self.root = Path(root).expanduser().resolve()
        self.default_card_path = (
            Path(default_card).expanduser().resolve() if default_card is not None else None
        )

    @functools.cached_property
    def default_card(self) -> ModelCard | None:
        return ModelCard.load(self.default_card_path) if self.default_card_path else None

    def path_for(self, version: str) -> Path:
        """Where `version`'s card lives in the registry (whether or not it is there)."""
        if not isinstance(version, str) or not _SAFE_VERSION.match(version) or ".." in version:
            raise ModelIntegrityError(f"{version!r} is not a usable model version name")
        return self.root / version / REGISTRY_CARD_NAME

    def register(self, card_path: str | Path) -> str:
        """Copy a card and its ONNX file into `<root>/<version>/`; returns the version.

        Idempotent: registering the same model again does nothing. A different model under a
        version that is already registered is refused, because rows in the index carry only
        the version and must stay comparable with the model that serves it.
        """
        card = ModelCard.load(card_path)
        target = self.path_for(card.version)
        model_bytes = verified_model_bytes(card)
        if target.parent.exists():
            self._check_registered(card, target)
            return card.version
        self.root.mkdir(parents=True, exist_ok=True)
        # Build the version folder beside its final place, then rename it in one step, so a
        # reader (predict in another process) never sees a card without its ONNX file.
        staging = self.root / f".{card.version}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()
        try:
            (staging / card.onnx_path.name).write_bytes(model_bytes)
            shutil.copyfile(Path(card_path).expanduser().resolve(), staging / REGISTRY_CARD_NAME)
            try:
                os.rename(staging, target.parent)
            except OSError:
                if not target.parent.exists():
                    raise
                self._check_registered(card, target)  # registered meanwhile by another process
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return card.version

    @staticmethod
    def _check_registered(card: ModelCard, target: Path) -> None:
        """The registered copy of `card.version` is this very model, intact."""
        existing = ModelCard.load(target)
        if existing.onnx_sha256 != card.onnx_sha256:
            raise ModelIntegrityError(
                f"model version {card.version!r} is already registered with another model "
                f"(ONNX SHA-256 {existing.onnx_sha256}); give the new model a new version"
            )
        try:
            registered = _sha256_bytes(existing.onnx_path.read_bytes())
        except OSError:
            registered = "unreadable"
        if registered != existing.onnx_sha256:
            raise ModelIntegrityError(
                f"the registered copy {existing.onnx_path} is damaged ({registered}); "
                f"delete {target.parent} and register the model again"
            )

    def card_for(self, version: str) -> ModelCard | None:
        """The card of `version`, or None when the registry does not hold it."""
        default = self.default_card
        if default is not None and default.version == version:
            return default
        path = self.path_for(version)
        if not path.is_file():
            return None
        card = ModelCard.load(path)
        if card.version != version:
            raise ModelIntegrityError(f"{path} holds model version {card.version!r}")
        return card

    def require(self, version: str) -> ModelCard:
        card = self.card_for(version)
        if card is None:
            raise ModelNotRegistered(
                f"model version {version!r} is not in the registry at {self.root}"
            )
        return card

    def classifier_for(self, version: str, threads: int = 1) -> Classifier:
        """The process-wide classifier of `version` (its ONNX file's SHA-256 is verified)."""
        return _classifier_of(self.require(version), threads)

    def default_classifier(self, threads: int = 1) -> Classifier:
        if self.default_card is None:
            raise ModelIntegrityError("this registry has no default model card")
        return _classifier_of(self.default_card, threads)


def _classifier_of(card: ModelCard, threads: int) -> Classifier:
    # Keyed by the card's path, so the default model reached through the registry and through
    # get_classifier(MODEL_CARD_PATH) shares one session.
    assert card.card_path is not None  # every card here came from ModelCard.load
    return get_classifier(card.card_path, threads)


def registry_from_settings(settings: Any) -> ModelRegistry:
    """MODEL_REGISTRY_DIR, or the folder of MODEL_CARD_PATH (the AWS image's models/)."""
    if not settings.model_card_path:
        raise ValueError("settings name no model card")
    root = settings.model_registry_dir or Path(settings.model_card_path).parent
    return ModelRegistry(root, settings.model_card_path)
