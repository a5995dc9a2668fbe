"""Which pretrained backbone weights the job loads, checked before TensorFlow is imported.

The default is the shared Keras MobileNetV2 file (../shared/models/mobilenet_v2/, see its
README); its SHA-256 is pinned here so a truncated or swapped file is refused with a clear
message instead of failing deep inside Keras (or, worse, training on wrong weights).
`imagenet` lets Keras download the same weights on a machine with internet access.
"""

from __future__ import annotations

from pathlib import Path

from artlens.digests import sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_WEIGHTS = (
    REPO_ROOT.parent / "shared/models/mobilenet_v2/mobilenet_v2_1.0_imagenet_no_top.weights.h5"
)
SHARED_WEIGHTS_SHA256 = "6714965a05ee6d8568343664bb9cda7456c6eb1fa190a6f5eb39bf087068b100"
# Apache 2.0: the TF-slim mobilenet_v2_1.0_224 checkpoint the Keras weights were exported from.
WEIGHTS_LICENCE = "Apache-2.0 (TF-slim mobilenet_v2_1.0_224 checkpoint, tensorflow/models)"


class BackboneWeightsError(ValueError):
    """The backbone weights file is missing or is not the file it claims to be."""


def resolve_backbone_weights(value: str | Path | None, expected_sha256: str | None = None) -> dict:
    """Check the weights the user asked for; returns {"weights": path-or-"imagenet", "sha256"}.

    `value` None means the shared default. The shared file's SHA-256 is always checked; any other
    file is checked when `expected_sha256` is given (tests use this), else only its existence and
    suffix (Keras 3 loads `.weights.h5` files only).
    """
    if value is not None and str(value) == "imagenet":
        return {"weights": "imagenet", "sha256": None, "source": "keras download"}
    path = Path(value) if value is not None else SHARED_WEIGHTS
    if not path.is_file():
        raise BackboneWeightsError(
            f"backbone weights not found: {path}. Pass --backbone-weights PATH (a Keras "
            "MobileNetV2 no-top .weights.h5 file, see ../shared/models/README.md) or "
            "--backbone-weights imagenet on a machine with internet access."
        )
    if not path.name.endswith(".weights.h5"):
        raise BackboneWeightsError(
            f"backbone weights {path}: Keras 3 loads '.weights.h5' files only"
        )
    is_shared = path.resolve() == SHARED_WEIGHTS.resolve()
    want = expected_sha256 or (SHARED_WEIGHTS_SHA256 if is_shared else None)
    digest = sha256_file(path)
    if want is not None and digest != want:
        raise BackboneWeightsError(
            f"backbone weights {path} have SHA-256 {digest}, expected {want}: the file is "
            "damaged or not the published MobileNetV2 weights; restore it or pass another file"
        )
    return {
        "weights": str(path),
        "sha256": digest,
        "source": "shared MobileNetV2 ImageNet (alpha 1.0, no top)" if is_shared else "user file",
    }
