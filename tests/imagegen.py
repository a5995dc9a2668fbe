"""Generated test pictures (tests never read ../shared): distinct works per seed, plus helpers
that make exact and near copies the way the Kaggle data has them (re-encoded, resized)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def artwork(seed: int, size: tuple[int, int] = (200, 160)) -> Image.Image:
    """A distinct RGB picture: random coloured shapes on a random background."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
    return img


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def near_copy(img: Image.Image) -> bytes:
    """Re-encoded at another quality and size: a near duplicate, not an exact one."""
    w, h = img.size
    return encode(img.resize((int(w * 0.8), int(h * 0.8))), "JPEG", quality=70)


def jpeg_bytes(seed: int, size: tuple[int, int] = (200, 160)) -> bytes:
    return encode(artwork(seed, size), "JPEG", quality=90)
