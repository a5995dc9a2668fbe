"""Export: ONE ONNX graph with two outputs, verified against Keras, plus the model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from artlens.image import INPUT_SIZE, PREPROCESSING
from training.models import EMBEDDING_SIZE

OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_MIN_IMAGES = 32


class ExportParityError(RuntimeError):
    """ONNX Runtime disagrees with Keras beyond the tolerance: the export is not shipped."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_onnx(model, onnx_path: Path, parity_images: np.ndarray) -> dict:
    """Convert `model` (image -> [probabilities, embedding]) and check parity on >= 32 images.

    Returns {"max_abs_diff_probabilities", "max_abs_diff_embedding", "parity_images"}.
    """
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    if len(parity_images) < PARITY_MIN_IMAGES:
        raise ValueError(f"parity needs at least {PARITY_MIN_IMAGES} images")
    spec = (tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 3), tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def serve(image):
        probabilities, embedding = model(image, training=False)
        return {
            "probabilities": tf.identity(probabilities, name="probabilities"),
            "embedding": tf.identity(embedding, name="embedding"),
        }

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=spec, opset=OPSET, output_path=str(onnx_path)
    )
    output_names = [o.name for o in proto.graph.output]
    if sorted(output_names) != ["embedding", "probabilities"]:
        raise ExportParityError(f"unexpected ONNX outputs {output_names}")

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_probs, onnx_emb = session.run(["probabilities", "embedding"], {"image": parity_images})
    keras_probs, keras_emb = (np.asarray(t) for t in model(parity_images, training=False))
    diffs = {
        "max_abs_diff_probabilities": float(np.max(np.abs(onnx_probs - keras_probs))),
        "max_abs_diff_embedding": float(np.max(np.abs(onnx_emb - keras_emb))),
        "parity_images": int(len(parity_images)),
    }
    if max(diffs["max_abs_diff_probabilities"], diffs["max_abs_diff_embedding"]) > PARITY_TOLERANCE:
        onnx_path.unlink(missing_ok=True)
        raise ExportParityError(f"ONNX differs from Keras: {diffs}")
    return diffs


def write_card(
    card_path: Path, onnx_path: Path, *, name: str, version: str, classes: list[str], extra: dict
) -> dict:
    """Write the model card JSON beside the ONNX file; `extra` holds metrics and provenance."""
    card = {
        "name": name,
        "version": version,
        "classes": list(classes),
        "input": {"name": "image", "dtype": "float32", "shape": [None, INPUT_SIZE, INPUT_SIZE, 3]},
        "outputs": {"probabilities": "probabilities", "embedding": "embedding"},
        "embedding_size": EMBEDDING_SIZE,
        "preprocessing": PREPROCESSING,
        "onnx_file": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_opset": OPSET,
        **extra,
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


REQUIRED_CARD_KEYS = (
    "name",
    "version",
    "classes",
    "input",
    "outputs",
    "embedding_size",
    "preprocessing",
    "onnx_file",
    "onnx_sha256",
)


def validate_card(card_path: Path) -> dict:
    """Check the card is complete and matches its ONNX file; returns the card."""
    card = json.loads(Path(card_path).read_text())
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ValueError(f"model card lacks {missing}")
    onnx_path = Path(card_path).with_name(card["onnx_file"])
    if sha256_file(onnx_path) != card["onnx_sha256"]:
        raise ValueError("model card's onnx_sha256 does not match the ONNX file")
    if card["embedding_size"] != EMBEDDING_SIZE or len(card["classes"]) < 2:
        raise ValueError("model card has a wrong embedding size or fewer than 2 classes")
    return card
