"""The model card (JSON): what a model is, what it takes, and its ONNX file's checksum.

Card keys used by serving: `name`, `version`, `classes` (output order), `input` {name, shape
[N,H,W,3], dtype}, `outputs` {probabilities, embedding} (ONNX output names), `embedding_size`,
`preprocessing` (artlens.image.PREPROCESSING), `onnx_file` (beside the card), `onnx_sha256`.
The card's `input.shape` decides the input size serving resizes to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artlens.digests import sha256_hex
from artlens.image import INPUT_SIZE, PREPROCESSING

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
    input_size: int  # H = W of the model input, from the card's input.shape [N, H, W, 3]
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
            input_size=_input_size(raw, card_path),
            raw=raw,
            card_path=card_path,
        )


def _input_size(raw: dict[str, Any], card_path: Path) -> int:
    """The card's input.shape [N, S, S, 3] -> S; a card without a shape is a 150 px model (the
    first cards). Serving preprocesses to [0, 1] (PREPROCESSING["scale"]); a card that asks for
    another scaling is refused rather than fed the wrong numbers."""
    shape = raw["input"].get("shape") or [None, INPUT_SIZE, INPUT_SIZE, 3]
    try:
        _, height, width, channels = shape
        size = int(height)
    except (TypeError, ValueError):
        raise ModelIntegrityError(f"model card {card_path}: input.shape {shape!r} is not "
                                  "[N, H, W, 3]") from None
    if width != height or channels != 3 or not 16 <= size <= 1024:
        raise ModelIntegrityError(
            f"model card {card_path}: input.shape {shape!r} is not a square RGB input"
        )
    scale = (raw.get("preprocessing") or {}).get("scale", PREPROCESSING["scale"])
    if scale != PREPROCESSING["scale"]:
        raise ModelIntegrityError(
            f"model card {card_path}: preprocessing.scale {scale!r} is not what serving does "
            f"({PREPROCESSING['scale']!r}); bake any other scaling into the graph"
        )
    return size


def verified_model_bytes(card: ModelCard) -> bytes:
    """The ONNX file's bytes, refused unless their SHA-256 is the card's."""
    try:
        model_bytes = card.onnx_path.read_bytes()
    except OSError as exc:
        raise ModelIntegrityError(f"cannot read ONNX file {card.onnx_path}: {exc}") from exc
    actual = sha256_hex(model_bytes)
    if actual != card.onnx_sha256:
        raise ModelIntegrityError(
            f"{card.onnx_path.name} has SHA-256 {actual}, the card says {card.onnx_sha256}"
        )
    return model_bytes


