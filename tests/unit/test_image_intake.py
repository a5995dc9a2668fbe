"""Image intake on generated pictures of every format and mode we accept, and every refusal."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from artlens.errors import ImageRejected
from artlens.image import INPUT_SIZE, MAX_BYTES, image_to_input, load_image

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def two_halves(size=(64, 32), left=RED, right=BLUE) -> Image.Image:
    """Left half one colour, right half another: orientation and colour are both visible."""
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def centre_colour(rgb: Image.Image, x_frac: float, y_frac: float) -> np.ndarray:
    arr = np.asarray(rgb.convert("RGB"), dtype=np.int32)
    h, w = arr.shape[:2]
    return arr[int(y_frac * (h - 1)), int(x_frac * (w - 1))]


def close_to(pixel, expected, tol=40) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, dtype=np.int32) - np.asarray(expected)) <= tol))


@pytest.mark.parametrize(
    ("fmt", "expected_format"),
    [("JPEG", "JPEG"), ("PNG", "PNG"), ("WEBP", "WEBP"), ("GIF", "GIF"), ("BMP", "BMP"),
     ("TIFF", "TIFF")],
)
def test_every_accepted_format_decodes_to_rgb(fmt, expected_format):
    data = encode(two_halves(), fmt)
    loaded = load_image(data)
    assert loaded.format == expected_format
    assert loaded.rgb.mode == "RGB"
    assert (loaded.width, loaded.height) == (64, 32)
    assert close_to(centre_colour(loaded.rgb, 0.2, 0.5), RED)
    assert close_to(centre_colour(loaded.rgb, 0.8, 0.5), BLUE)
    pixels = image_to_input(data)
    assert pixels.shape == (INPUT_SIZE, INPUT_SIZE, 3)
    assert pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    loaded = load_image(data)
    assert close_to(centre_colour(loaded.rgb, 0.5, 0.5), RED, tol=5)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(fmt):
    # Orientation 6 = "rotate 90 degrees clockwise to display": the left (red) half ends on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(two_halves((64, 32)), fmt, exif=exif.tobytes())
    loaded = load_image(data)
    assert (loaded.width, loaded.height) == (32, 64)
    assert loaded.rgb.size == (32, 64)
    assert close_to(centre_colour(loaded.rgb, 0.5, 0.2), RED)
    assert close_to(centre_colour(loaded.rgb, 0.5, 0.8), BLUE)


def test_exif_orientation_3_turns_upside_down():
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180: left/right swap
    loaded = load_image(encode(two_halves((64, 32)), "PNG", exif=exif.tobytes()))
    assert (loaded.width, loaded.height) == (64, 32)
    assert close_to(centre_colour(loaded.rgb, 0.2, 0.5), BLUE, tol=2)
    assert close_to(centre_colour(loaded.rgb, 0.8, 0.5), RED, tol=2)


def test_cmyk_jpeg_becomes_rgb():
    img = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    data = encode(img, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    loaded = load_image(data)
    assert loaded.rgb.mode == "RGB"
    assert close_to(centre_colour(loaded.rgb, 0.5, 0.5), RED)


def test_greyscale_png():
    img = Image.new("L", (20, 20), 100)
    loaded = load_image(encode(img, "PNG"))
    assert tuple(centre_colour(loaded.rgb, 0.5, 0.5)) == (100, 100, 100)


def test_palette_png():
    img = two_halves().quantize(colors=4)
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    loaded = load_image(data)
    assert close_to(centre_colour(loaded.rgb, 0.2, 0.5), RED, tol=2)
    assert close_to(centre_colour(loaded.rgb, 0.8, 0.5), BLUE, tol=2)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_composited_on_white(fmt):
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0] + [255, 0, 0] + [0] * (254 * 3))  # index 0 black, index 1 red
    img.paste(1, (10, 0, 20, 20))
    data = encode(img, fmt, transparency=0)  # the black half is transparent
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    loaded = load_image(data)
    assert tuple(centre_colour(loaded.rgb, 0.2, 0.5)) == WHITE
    assert tuple(centre_colour(loaded.rgb, 0.8, 0.5)) == RED


def test_one_bit_png():
    img = Image.new("1", (20, 20), 0)
    img.paste(1, (10, 0, 20, 20))
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"
    loaded = load_image(data)
    assert tuple(centre_colour(loaded.rgb, 0.2, 0.5)) == (0, 0, 0)
    assert tuple(centre_colour(loaded.rgb, 0.8, 0.5)) == WHITE


def test_sixteen_bit_greyscale_png_is_scaled_not_clipped():
    values = np.zeros((16, 32), dtype=np.uint16)
    values[:, :16] = 65535
    values[:, 16:] = 32768
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    loaded = load_image(data)
    assert tuple(centre_colour(loaded.rgb, 0.2, 0.5)) == WHITE
    mid = centre_colour(loaded.rgb, 0.8, 0.5)
    assert 120 <= mid[0] <= 136 and mid[0] == mid[1] == mid[2]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode):
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((255, 0, 0, 255), (10, 0, 20, 20))  # opaque red on the right
    img = rgba if mode == "RGBA" else rgba.convert("LA")
    loaded = load_image(encode(img, "PNG"))
    assert tuple(centre_colour(loaded.rgb, 0.2, 0.5)) == WHITE
    right = centre_colour(loaded.rgb, 0.8, 0.5)
    expected = RED if mode == "RGBA" else (76, 76, 76)  # L of pure red is 76
    assert close_to(right, expected, tol=1)


def test_semi_transparent_pixels_blend_with_white():
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 128))
    loaded = load_image(encode(img, "PNG"))
    assert close_to(centre_colour(loaded.rgb, 0.5, 0.5), (127, 127, 127), tol=2)


def test_large_jpeg_decodes_in_draft_mode():
    big = Image.new("RGB", (4000, 3000), (10, 120, 200))
    data = encode(big, "JPEG", quality=70)
    loaded = load_image(data)
    w, h = loaded.rgb.size
    assert (w, h) != (4000, 3000)
    assert w < 4000 and h < 3000
    assert w >= INPUT_SIZE and h >= INPUT_SIZE
    assert (loaded.width, loaded.height) == (4000, 3000)  # the original size is still reported
    assert image_to_input(data).shape == (INPUT_SIZE, INPUT_SIZE, 3)


# --------------------------------------------------------------------------- refusals


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims a huge size: a bomb detectable from the header alone."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def refusal(data: bytes) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        load_image(data)
    return info.value


def test_empty_is_400():
    err = refusal(b"")
    assert (err.code, err.status) == ("empty", 400)


def test_more_than_six_megabytes_is_413():
    data = encode(Image.new("RGB", (8, 8)), "PNG")
    err = refusal(data + b"\0" * (MAX_BYTES + 1 - len(data)))
    assert (err.code, err.status) == ("too_large", 413)
    assert "limit" in err.message


@pytest.mark.parametrize("size", [(20000, 20000), (7000, 7000)])
def test_too_many_pixels_is_refused_from_the_header(size):
    data = png_declaring(*size)
    assert len(data) < 200
    err = refusal(data)
    assert (err.code, err.status) == ("too_many_pixels", 413)


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageRejected) as info:
        load_image(data, max_pixels=5000)
    assert info.value.code == "too_many_pixels"
    assert load_image(data, max_pixels=10_000).rgb.size == (100, 100)


@pytest.mark.parametrize(
    "data",
    [
        b"<!doctype html><html><body>hello</body></html>",
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<rect width="10" height="10" fill="red"/></svg>',
        b"just some text",
    ],
    ids=["html", "pdf", "svg", "text"],
)
def test_foreign_formats_are_415(data):
    err = refusal(data)
    assert (err.code, err.status) == ("unsupported_format", 415)


def test_a_format_pillow_reads_but_we_do_not_accept_is_415():
    data = encode(Image.new("RGB", (16, 16), RED), "ICO")
    assert Image.open(io.BytesIO(data)).format == "ICO"
    err = refusal(data)
    assert (err.code, err.status) == ("unsupported_format", 415)
    assert "ICO" in err.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_corrupt_400(fmt):
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noisy, fmt)
    err = refusal(data[: len(data) // 2])
    assert (err.code, err.status) == ("corrupt_image", 400)


def test_damaged_header_of_an_accepted_format_is_corrupt_not_foreign():
    err = refusal(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert (err.code, err.status) == ("corrupt_image", 400)
