"""Image intake and preprocessing: the ONE place where bytes become model input.

Training imports `load_image` and `preprocess` from here, so the tensors a model is trained on
and the tensors it serves on come from the same code (see tests/unit/test_preprocess_parity.py).

Pipeline: bytes -> limits checked from the header -> decode (JPEG in draft mode, DCT-scaled to
the smallest size >= the input size, so a 12 MP photo is never decoded at full size) -> EXIF
orientation -> RGB (alpha composited on white, 16-bit scaled, CMYK/palette/1-bit converted) ->
resize to size x size bilinear (aspect not kept, as the study did) -> float32 in [0, 1], NHWC.

The input size is the model's (its card's `input.shape`, artlens.models.card); every function
takes it as `size`, defaulting to the first model's 150 px.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from artlens.errors import ImageRejected
from artlens.names import ACCEPTED_FORMATS

INPUT_SIZE = 150
MAX_BYTES = 6 * 1024 * 1024  # the synchronous Lambda payload limit
MAX_PIXELS = 40_000_000



def preprocessing_for(size: int) -> dict[str, str]:
    """What the card records, so that any other consumer can reproduce the input exactly."""
    return {
        "decode": f"Pillow; JPEG draft (DCT scaling) to the smallest size >= {size}x{size}; "
        "first frame",
        "orientation": "EXIF orientation applied",
        "color": "RGB; alpha composited on white; 16-bit scaled to 8-bit",
        "resize": f"{size}x{size}, bilinear (Pillow), aspect ratio not kept",
        "scale": "float32 = uint8 / 255",
        "layout": "NHWC",
    }


PREPROCESSING = preprocessing_for(INPUT_SIZE)

# Pillow warns (and later raises) on its own bomb threshold; we refuse from the header first.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class LoadedImage:
    """A decoded RGB picture plus what we learned about the original."""

    rgb: Image.Image
    format: str
    width: int  # of the original, after EXIF orientation
    height: int


def load_image(
    data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
    size: int = INPUT_SIZE,
) -> LoadedImage:
    """Validate and decode image bytes into a (possibly draft-reduced, never below `size`) RGB
    image.

    Raises ImageRejected with a reason code for anything we will not decode.
    """
    if not data:
        raise ImageRejected("empty", "The request contained no image bytes.")
    if len(data) > max_bytes:
        raise ImageRejected(
            "too_large", f"The image is {len(data):,} bytes; the limit is {max_bytes:,} bytes."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("too_many_pixels", "The image has too many pixels.") from None
    except UnidentifiedImageError:
        if _has_accepted_signature(data):
            raise ImageRejected(
                "corrupt_image", "The image header is damaged and could not be read."
            ) from None
        raise ImageRejected(
            "unsupported_format",
            "The file is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF).",
        ) from None
    except Exception:  # Pillow raises assorted errors on malformed headers
        raise ImageRejected("corrupt_image", "The image header could not be read.") from None

    if img.format not in ACCEPTED_FORMATS:
        raise ImageRejected(
            "unsupported_format",
            f"{img.format} images are not supported; send JPEG, PNG, WebP, GIF, BMP or TIFF.",
        )
    source_format = img.format  # exif_transpose returns a copy that no longer knows it
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt_image", "The image has no pixels.")
    if width * height > max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"The image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {max_pixels:,}.",
        )

    try:
        if img.format in ("JPEG", "MPO"):
            img.draft("RGB", (size, size))
        img.seek(0)  # first frame of animations
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
    except ImageRejected:
        raise
    except Exception:
        raise ImageRejected(
            "corrupt_image", "The image data is truncated or corrupt and could not be decoded."
        ) from None

    oriented_w, oriented_h = (height, width) if _swaps_axes(img, width, height) else (width, height)
    return LoadedImage(rgb=rgb, format=source_format, width=oriented_w, height=oriented_h)


# Leading bytes of the formats we accept: bytes that start like one of them but do not open
# are a damaged image (400), not a foreign format (415).
_SIGNATURES = (
    b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
)


def _has_accepted_signature(data: bytes) -> bool:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data.startswith(_SIGNATURES)


def _swaps_axes(img: Image.Image, width: int, height: int) -> bool:
    w, h = img.size
    return width != height and (w >= h) != (width >= height)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")  # 2-D uint8 -> mode L
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def resize(rgb: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """RGB image -> uint8 array [size, size, 3]. Training caches this form."""
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def scale(pixels: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 in [0, 1]."""
    return pixels.astype(np.float32) / np.float32(255.0)


def preprocess(rgb: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """RGB image -> float32 [size, size, 3], exactly the model's input for one picture."""
    return scale(resize(rgb, size))


def image_to_input(data: bytes, size: int = INPUT_SIZE) -> np.ndarray:
    """Bytes -> float32 [size, size, 3]; the whole intake in one call."""
    return preprocess(load_image(data, size=size).rgb, size)
