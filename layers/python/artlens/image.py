"""Image intake and preprocessing: the ONE place where bytes become model input.

Training imports `load_image` and `preprocess` from here, so the tensors a model is trained on
and the tensors it serves on come from the same code (see tests/unit/test_preprocess_parity.py).

Pipeline: bytes -> limits checked from the header (pixels, and the MEMORY the decode will take)
-> decode (JPEG in draft mode, DCT-scaled to the smallest size >= the input size, so a 12 MP
photo is never decoded at full size) -> 16-bit down-converted to 8-bit with integers -> reduced
right away by whole factors (box average) to at most twice the input size per axis -> EXIF
orientation -> RGB (alpha composited on white, CMYK/palette/1-bit converted) -> resize to
size x size bilinear (aspect not kept, as the study did) -> float32 in [0, 1], NHWC.

Memory budget: a header can promise a small file that decodes to hundreds of megabytes (a 78 KB
16-bit PNG of 40 MP, a 40-byte lossless WebP canvas). What costs memory is the decoded raster,
in Pillow's own layout (4 bytes a pixel for RGB, RGBA, LA, CMYK, I, F; 2 for 16-bit grey; 1 for
L, P, 1), plus the copies a format's decoder or our first conversion make. `decode_cost` adds
these up from the header before a single pixel is decoded and `load_image` refuses a picture
whose cost exceeds `MAX_DECODE_BYTES` (413 too_many_pixels). Everything after the first
reduction works on at most (2 size)^2 pixels, so one picture's peak is bounded by the budget and
a batch holds only small rasters.

The input size is the model's (its card's `input.shape`, artlens.models.card); every function
takes it as `size`, defaulting to the first model's 150 px.
"""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from artlens.errors import ImageRejected
from artlens.names import ACCEPTED_FORMATS

INPUT_SIZE = 150
MAX_BYTES = 6 * 1024 * 1024  # the synchronous Lambda payload limit
MAX_PIXELS = 40_000_000
# The most a single decode may allocate (estimated by decode_cost, measured by
# tests/integration/test_decode_memory.py). 256 MB admits a 40 MP RGB, grey, 16-bit grey or
# palette picture; alpha costs twice (Pillow reduces it premultiplied, a full-size copy), so
# RGBA/LA stop at 32 MP; WebP goes through libwebp's own frame first: 16 MP.
MAX_DECODE_BYTES = 256_000_000
WEBP_BYTES_PER_PIXEL = 16  # measured: libwebp's frame, Pillow's copy of it, Pillow's raster

# Bytes a pixel of each Pillow mode takes in memory (Pillow pads 3- and 2-channel modes to 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes Image.reduce handles; the others are converted to one of these first.
_REDUCIBLE = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "CMYK", "I", "F")


def preprocessing_for(size: int) -> dict[str, str]:
    """What the card records, so that any other consumer can reproduce the input exactly."""
    return {
        "decode": f"Pillow; JPEG draft (DCT scaling) to the smallest size >= {size}x{size}; "
        "first frame",
        "orientation": "EXIF orientation applied",
        "color": "RGB; alpha composited on white; 16-bit to 8-bit by its high byte",
        "reduce": f"box average by whole factors to at most {2 * size - 1} px per axis "
        f"(never below {size})",
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
    icc_profile: bytes | None = None  # the original's embedded colour profile, if any

    @property
    def full_size(self) -> bool:
        """Whether `rgb` holds every pixel of the original (nothing was reduced): a decode of
        the same bytes for any larger `size` would give the very same raster."""
        return self.rgb.size == (self.width, self.height)


def load_image(
    data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
    size: int = INPUT_SIZE, max_decode_bytes: int = MAX_DECODE_BYTES,
) -> LoadedImage:
    """Validate and decode image bytes into a reduced RGB image: never below `size` and below
    2 `size` on each axis (pictures already smaller are kept as they are).

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

    if img.format in ("JPEG", "MPO"):
        try:
            img.draft("RGB", (size, size))  # the DCT decodes at the reduced size directly
        except Exception:
            raise ImageRejected("corrupt_image", "The image header could not be read.") from None
    cost = decode_cost(img, width, height)
    if cost > max_decode_bytes:
        raise ImageRejected(
            "too_many_pixels",
            f"Decoding this {width}x{height} {img.mode} {source_format} image would take about "
            f"{cost / 1e6:,.0f} MB; the limit is {max_decode_bytes / 1e6:,.0f} MB.",
        )

    try:
        img.seek(0)  # first frame of animations
        img.load()
        # Read before the reduction (which drops the metadata); per-axis reduction can change
        # the aspect ratio, so whether axes swap is read from the tag, not from the sizes.
        exif = img.getexif()
        swaps = exif.get(_ORIENTATION_TAG) in _SWAPPING_ORIENTATIONS
        icc = img.info.get("icc_profile")
        img = _shrink(_eight_bit(img), size)
        img = _oriented(img, exif)
        rgb = _to_rgb(img)
    except ImageRejected:
        raise
    except Exception:
        raise ImageRejected(
            "corrupt_image", "The image data is truncated or corrupt and could not be decoded."
        ) from None

    oriented_w, oriented_h = (height, width) if swaps else (width, height)
    return LoadedImage(rgb=rgb, format=source_format, width=oriented_w, height=oriented_h,
                       icc_profile=icc if isinstance(icc, bytes) and icc else None)


# Leading bytes of the formats we accept: bytes that start like one of them but do not open
# are a damaged image (400), not a foreign format (415).
_SIGNATURES = (
    b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
)


def _has_accepted_signature(data: bytes) -> bool:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data.startswith(_SIGNATURES)


_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transpose, rotate 270, transverse, rotate 90


def _oriented(img: Image.Image, exif: Image.Exif) -> Image.Image:
    """EXIF orientation applied to `img` (reduced, so without its metadata) from the original's
    tag."""
    orientation = exif.get(_ORIENTATION_TAG)
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation) if isinstance(orientation, int) else None
    return img if method is None else img.transpose(method)


def decode_cost(img: Image.Image, full_width: int, full_height: int) -> int:
    """Estimated peak bytes of decoding `img` (opened, draft already set; `full_*` is its size
    before the draft) and reducing it.

    The decoded raster, plus: for 16-bit grey the raw copy and the 8-bit result the
    down-conversion makes; for modes Image.reduce cannot take (P, 1, PA) the RGB(A) copy made
    first; for alpha the premultiplied copy Image.reduce makes; for WebP the frame libwebp
    decodes before Pillow copies it into its own raster; for a progressive JPEG libjpeg's
    coefficient buffers, which hold the WHOLE picture whatever the draft scale (2 bytes a
    pixel and component; measured +234 MB for a 40 MP 4:4:4 RGB one).
    """
    width, height = img.size
    mode = img.mode
    if img.format == "WEBP":
        return width * height * WEBP_BYTES_PER_PIXEL
    coefficients = 0
    if img.format in ("JPEG", "MPO") and img.info.get("progressive"):
        coefficients = full_width * full_height * 2 * len(img.getbands())
    per_pixel = _MODE_BYTES.get(mode, 4)
    if mode in _SIXTEEN_BIT:
        per_pixel += 2 + 1
    elif mode not in _REDUCIBLE:
        per_pixel += 4
    if mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        per_pixel += 4
    return width * height * per_pixel + coefficients


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit grey -> 8-bit grey by keeping the high byte (v >> 8), in integers: one 1-byte
    copy, never a float64 array of the whole picture. 32-bit integer and float modes (I, F; rare,
    e.g. TIFF) are scaled after the reduction, in _to_rgb."""
    if img.mode not in _SIXTEEN_BIT:
        return img
    width, height = img.size
    # tobytes() writes the mode's own byte order: big-endian for I;16B, native for I;16N,
    # little-endian for I;16 and I;16L.
    big = img.mode == "I;16B" or (img.mode == "I;16N" and sys.byteorder == "big")
    raw = img.tobytes()
    del img
    words = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 2)
    eight = np.ascontiguousarray(words[:, :, 0 if big else 1])
    del words, raw
    return Image.fromarray(eight, mode="L")


def _shrink(img: Image.Image, size: int) -> Image.Image:
    """Reduce by whole factors (box average) so that each axis ends in [size, 2 size), right
    after decoding: what follows (orientation, colour conversion, resize) then works on at most
    (2 size)^2 pixels whatever the picture's size."""
    width, height = img.size
    factors = (max(1, width // size), max(1, height // size))
    if factors == (1, 1):
        return img
    if img.mode not in _REDUCIBLE:
        has_alpha = img.mode in ("PA", "RGBA") or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    return img.reduce(factors)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)  # already reduced: at most (2 size)^2 pixels
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
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
