"""Hostile pictures of issue 13: tiny files that decode to hundreds of megabytes. Generated (never
stored), cached per process; shared by the memory tests, the hostile-input corpus and
`make stress`'s hostile client.

Each entry: name -> (bytes, the answer the API must give: 200 or the refusal code).
"""

from __future__ import annotations

import functools
import io

from PIL import Image


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@functools.cache
def grey16_png_40mp() -> bytes:
    """~90 KB: 16-bit greyscale PNG of 39.9 MP (under the 40 MP pixel limit). Before issue 13
    it cost ~+1 GB and ~3 s to decode (a float64 copy of the whole picture)."""
    return _encode(Image.new("I;16", (6320, 6320), 1000), "PNG")


@functools.cache
def webp_canvas_40mp() -> bytes:
    """A few dozen bytes: lossless RGBA WebP, 39.9 MP canvas. libwebp's frame plus Pillow's
    copies: ~640 MB to decode; now refused from its header (413 too_many_pixels)."""
    return _encode(Image.new("RGBA", (6320, 6320), (10, 20, 30, 128)), "WEBP", lossless=True)


@functools.cache
def webp_canvas_16mp() -> bytes:
    """The largest lossless RGBA WebP canvas under the decode budget: accepted, most costly."""
    return _encode(Image.new("RGBA", (3990, 3990), (10, 20, 30, 128)), "WEBP", lossless=True)


@functools.cache
def rgba_png_40mp() -> bytes:
    """RGBA PNG of 39.9 MP: alpha costs twice (premultiplied reduction): refused (413)."""
    return _encode(Image.new("RGBA", (6320, 6320), (1, 2, 3, 100)), "PNG")


@functools.cache
def palette_png_40mp() -> bytes:
    """Palette PNG of 39.9 MP: 1 byte a pixel decoded, plus the RGB copy reduction needs."""
    return _encode(Image.new("P", (6320, 6320), 3), "PNG")


@functools.cache
def progressive_jpeg_40mp() -> bytes:
    """~470 KB progressive 4:4:4 JPEG of 39.9 MP: the draft (DCT scaling) does not help here,
    libjpeg buffers every coefficient of the picture (+234 MB); within the budget, accepted."""
    return _encode(Image.new("RGB", (6320, 6320), (120, 30, 200)), "JPEG", progressive=True,
                   subsampling=0, quality=50)


@functools.cache
def progressive_cmyk_jpeg_40mp() -> bytes:
    """The same in CMYK: four components of coefficients, over the budget: refused (413)."""
    return _encode(Image.new("CMYK", (6320, 6320), (10, 20, 30, 40)), "JPEG", progressive=True,
                   subsampling=0, quality=50)


def corpus() -> dict[str, tuple[bytes, int | str]]:
    return {
        "grey16_png_40mp": (grey16_png_40mp(), 200),
        "webp_canvas_16mp": (webp_canvas_16mp(), 200),
        "webp_canvas_40mp": (webp_canvas_40mp(), "too_many_pixels"),
        "rgba_png_40mp": (rgba_png_40mp(), "too_many_pixels"),
        "palette_png_40mp": (palette_png_40mp(), 200),
        "progressive_jpeg_40mp": (progressive_jpeg_40mp(), 200),
        "progressive_cmyk_jpeg_40mp": (progressive_cmyk_jpeg_40mp(), "too_many_pixels"),
    }
