"""Export: ONE ONNX graph with two outputs, verified against Keras, plus the model card.

The ONNX file and its card point at each other: the card holds the ONNX file's SHA-256
(`onnx_sha256`), and the ONNX file's metadata_props hold the card's SHA-256
(`artlens.card_sha256`). To break the cycle the card hash is defined over the card WITHOUT its
`onnx_sha256` key: SHA-256 of json.dumps(card_without_onnx_sha256, sort_keys=True,
separators=(",", ":"), ensure_ascii=False) encoded as UTF-8 (see card_digest).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from artlens.digests import sha256_file
from artlens.image import INPUT_SIZE, PREPROCESSING
from training.models import EMBEDDING_SIZE

CARD_HASH_EXCLUDES = ("onnx_sha256",)
CARD_HASH_DEFINITION = (
    "SHA-256 of the card without onnx_sha256, serialised as json.dumps(card, sort_keys=True, "
    "separators=(',', ':'), ensure_ascii=False) in UTF-8; stored in the ONNX file's "
    "metadata_props as artlens.card_sha256"
)

OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_MIN_IMAGES = 32


class ExportParityError(RuntimeError):
    """ONNX Runtime disagrees with Keras beyond the tolerance: the export is not shipped."""


def export_onnx(model, onnx_path: Path, parity_images: np.ndarray) -> dict:
    """Convert `model` (image -> [probabilities, embedding]) and check parity on >= 32 images.

    Returns {"max_abs_diff_probabilities", "max_abs_diff_embedding", "parity_images"}.
    """
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    if len(parity_images) < PARITY_MIN_IMAGES:
        raise ValueError(f"parity needs at least {PARITY_MIN_IMAGES} images")
    # the input size is the parity pictures' size: 150 for the CNN configs, S for the backbone
    spec = (tf.TensorSpec((None, *parity_images.shape[1:]), tf.float32, name="image"),)

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


def card_digest(card: dict) -> str:
    """The card's SHA-256 as the ONNX metadata records it (see the module docstring)."""
    body = {k: v for k, v in card.items() if k not in CARD_HASH_EXCLUDES}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stamp_onnx(onnx_path: Path, card: dict) -> None:
    """Write model version, classes and the card's SHA-256 into the ONNX metadata_props."""
    import onnx

    model = onnx.load(str(onnx_path))
    props = {
        "artlens.name": str(card["name"]),
        "artlens.model_version": str(card["version"]),
        "artlens.classes": json.dumps(card["classes"]),
        "artlens.embedding_size": str(card["embedding_size"]),
        "artlens.card_sha256": card_digest(card),
        "artlens.card_sha256_definition": CARD_HASH_DEFINITION,
    }
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(onnx_path))


def write_card(
    card_path: Path,
    onnx_path: Path,
    *,
    name: str,
    version: str,
    classes: list[str],
    extra: dict,
    input_size: int = INPUT_SIZE,
    embedding_size: int = EMBEDDING_SIZE,
    preprocessing: dict | None = None,
) -> dict:
    """Write the model card JSON beside the ONNX file; `extra` holds metrics and provenance.
    The ONNX file is stamped with the card's digest first, then its own SHA-256 goes in the card.
    """
    card = {
        "name": name,
        "version": version,
        "classes": list(classes),
        "input": {"name": "image", "dtype": "float32", "shape": [None, input_size, input_size, 3]},
        "outputs": {"probabilities": "probabilities", "embedding": "embedding"},
        "embedding_size": int(embedding_size),
        "preprocessing": preprocessing or PREPROCESSING,
        "onnx_file": onnx_path.name,
        "onnx_opset": OPSET,
        "card_sha256_definition": CARD_HASH_DEFINITION,
        **extra,
    }
    stamp_onnx(onnx_path, card)
    card["onnx_sha256"] = sha256_file(onnx_path)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


def restamp_card(card_path: Path, updates: dict) -> dict:
    """Change top-level card fields after a run (e.g. the version the lead ships it under):
    re-stamp the ONNX metadata with the new card digest and record the new ONNX SHA-256. The
    graph itself is untouched."""
    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    card.pop("onnx_sha256", None)
    card |= updates
    onnx_path = card_path.with_name(card["onnx_file"])
    stamp_onnx(onnx_path, card)
    card["onnx_sha256"] = sha256_file(onnx_path)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card


def onnx_metadata(onnx_path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}


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
    if len(card["classes"]) < 2:
        raise ValueError("model card has fewer than 2 classes")
    import onnx

    model = onnx.load(str(onnx_path))
    outputs = {o.name: o for o in model.graph.output}
    emb_dim = outputs["embedding"].type.tensor_type.shape.dim[1].dim_value
    if emb_dim and emb_dim != card["embedding_size"]:
        raise ValueError(f"card embedding_size {card['embedding_size']} != ONNX output {emb_dim}")
    size = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    if size and list(card["input"]["shape"][1:]) != [size, size, 3]:
        raise ValueError(f"card input shape {card['input']['shape']} != ONNX input {size}")
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("artlens.card_sha256") != card_digest(card):
        raise ValueError("ONNX metadata artlens.card_sha256 does not match the card")
    return card
