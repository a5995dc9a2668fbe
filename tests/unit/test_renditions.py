"""Renditions: sizes, aspect, no metadata (issue 13's GPS), and URLs that stay the same all hour
(issue 14), on pictures generated here."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageDraw

from artlens import renditions
from artlens.errors import ImageRejected
from artlens.lake import LocalLake, cacheable_expiry
from tests.imagegen import artwork, encode

SHA = "ab" * 32
HOUR = 3600
T0 = 1_790_000_000 // HOUR * HOUR  # a full hour, in the future of no real clock that matters


def opened(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def gps_jpeg(size=(3000, 2000), orientation: int | None = None) -> bytes:
    """A JPEG that tells where it was taken (EXIF GPS), with XMP, a comment and an ICC profile."""
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPSInfo
    if orientation is not None:
        exif[0x0112] = orientation
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>secret place</rdf:RDF></x:xmpmeta>'
    return encode(artwork(7, size), "JPEG", quality=90, exif=exif.tobytes(), icc_profile=srgb,
                  comment=b"shot at home", xmp=xmp)


# --- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((3000, 2000), {1024: (1024, 683), 256: (256, 171)}),  # landscape
        ((900, 1800), {1024: (512, 1024), 256: (128, 256)}),  # portrait
        ((2100, 300), {1024: (1024, 146), 256: (256, 37)}),  # a long strip
        ((600, 400), {1024: (600, 400), 256: (256, 171)}),  # between the sides
        ((200, 160), {1024: (200, 160), 256: (200, 160)}),  # smaller than both: never enlarged
    ],
)
def test_each_side_fits_keeps_the_aspect_and_is_never_enlarged(size, expected):
    out = renditions.render(encode(artwork(1, size), "PNG"))
    assert set(out) == set(renditions.RENDITION_SIDES)
    for side, data in out.items():
        img = opened(data)
        assert img.size == expected[side], side
        assert max(img.size) <= side
        assert img.width <= size[0] and img.height <= size[1]
        assert abs(img.width / img.height - size[0] / size[1]) < 0.01 * size[0] / size[1] + 0.03


def test_renditions_are_srgb_jpegs_that_look_like_the_picture():
    picture = artwork(3, (1600, 1200))
    out = renditions.render(encode(picture, "JPEG", quality=95))
    for side, data in out.items():
        img = opened(data)
        assert img.format == "JPEG" and img.mode == "RGB"
        # The preview loads coarse-to-fine; the thumbnail is small enough to arrive at once.
        assert img.info.get("progressive", 0) == (1 if side == renditions.PREVIEW_SIDE else 0)
        expected = np.asarray(picture.resize(img.size, Image.Resampling.LANCZOS), np.float32)
        # The same picture, not a blank or shifted one (JPEG twice: small differences only).
        assert np.abs(np.asarray(img, np.float32) - expected).mean() < 12


def test_no_rendition_carries_gps_exif_xmp_comments_or_an_icc_profile():
    original = gps_jpeg()
    assert b"Exif" in original and opened(original).getexif().get_ifd(0x8825)  # the premise
    for side, data in renditions.render(original).items():
        img = opened(data)
        assert dict(img.getexif()) == {}, side
        assert img.getexif().get_ifd(0x8825) == {}, side
        for marker in (b"Exif", b"GPS", b"CameraMaker", b"xmpmeta", b"secret place",
                       b"shot at home", b"ICC_PROFILE"):
            assert marker not in data, (side, marker)
        assert "icc_profile" not in img.info and "comment" not in img.info


def test_exif_orientation_is_applied_to_the_pixels_since_the_tag_is_gone():
    # Orientation 6 (rotate 90 clockwise to view): a 3000x2000 file is a 2000x3000 picture.
    out = renditions.render(gps_jpeg((3000, 2000), orientation=6))
    assert opened(out[1024]).size == (683, 1024)
    assert opened(out[256]).size == (171, 256)


def test_a_picture_no_larger_than_a_thumbnail_is_encoded_once_for_both_sides():
    out = renditions.render(encode(artwork(4, (240, 180)), "PNG"))
    assert out[renditions.THUMBNAIL_SIDE] == out[renditions.PREVIEW_SIDE]
    assert opened(out[renditions.THUMBNAIL_SIDE]).size == (240, 180)
    # thumbnail-sized pixels: baseline (progressive would triple the encode for nothing)
    assert opened(out[renditions.THUMBNAIL_SIDE]).info.get("progressive", 0) == 0
    larger = renditions.render(encode(artwork(4, (600, 450)), "PNG"))
    assert opened(larger[renditions.THUMBNAIL_SIDE]).size == (256, 192)
    assert opened(larger[renditions.PREVIEW_SIDE]).size == (600, 450)


@pytest.mark.parametrize(("size", "decodes"), [((300, 200), 0), ((900, 600), 1)])
def test_a_decode_that_kept_every_pixel_is_reused_and_gives_the_same_bytes(
    monkeypatch, size, decodes
):
    from artlens.image import load_image

    data = gps_jpeg(size)
    decoded = load_image(data, size=160)  # ingest's own decode, at the model's input size
    assert decoded.icc_profile == opened(data).info["icc_profile"]  # read before the reduction
    assert decoded.full_size is (max(size) < 2 * 160)
    expected = renditions.render(data)
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("size"))
        return load_image(*args, **kwargs)

    monkeypatch.setattr(renditions, "load_image", counted)
    assert renditions.render(data, decoded=decoded) == expected
    # A reduced raster is not what a 1,024 px decode gives: that picture is decoded again.
    assert calls == [renditions.PREVIEW_SIDE] * decodes


def test_a_sixteen_bit_png_renders_as_eight_bit_rgb():
    ramp = np.tile(np.linspace(0, 65535, 1500, dtype=np.uint16), (1000, 1))
    img = Image.fromarray(ramp)  # mode I;16
    assert img.mode.startswith("I;16")
    out = renditions.render(encode(img, "PNG"))
    preview = opened(out[1024])
    assert preview.size == (1024, 683) and preview.mode == "RGB"
    pixels = np.asarray(preview, np.float32)
    assert pixels[:, :20].mean() < 20 and pixels[:, -20:].mean() > 235  # the ramp survived


def test_transparent_and_palette_pictures_render():
    rgba = Image.new("RGBA", (500, 300), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).ellipse([50, 50, 250, 250], fill=(255, 0, 0, 255))
    for data in (encode(rgba, "PNG"), encode(artwork(2, (400, 300)).convert("P"), "GIF")):
        out = renditions.render(data)
        assert opened(out[256]).mode == "RGB"
    corner = opened(renditions.render(encode(rgba, "PNG"))[1024]).getpixel((2, 2))
    assert min(corner) > 240  # transparency on white, as load_image composites it


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (b"this is not a picture at all", "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt_image"),
        (encode(artwork(1), "JPEG")[:300], "corrupt_image"),
    ],
)
def test_unusable_bytes_are_rejected_like_load_image_does(data, code):
    with pytest.raises(ImageRejected) as caught:
        renditions.render(data)
    assert caught.value.code == code


def test_the_byte_limit_is_the_callers():
    data = encode(artwork(1, (400, 300)), "PNG")
    with pytest.raises(ImageRejected) as caught:
        renditions.render(data, max_bytes=len(data) - 1)
    assert caught.value.code == "too_large"
    assert set(renditions.render(data, max_bytes=len(data))) == {256, 1024}


# --- keys and URLs ------------------------------------------------------------------------


def test_rendition_keys_are_named_by_side_and_hash_only():
    assert renditions.rendition_key(SHA, 256) == f"renditions/256/{SHA}.jpg"
    assert renditions.rendition_key(SHA, 1024) == f"renditions/1024/{SHA}.jpg"
    for bad in ("AB" * 32, "ab" * 31, "../" + "a" * 61, SHA + ".jpg", ""):
        with pytest.raises(ValueError):
            renditions.rendition_key(bad, 256)
    with pytest.raises(ValueError):
        renditions.rendition_key(SHA, 512)


def test_cacheable_expiry_is_the_next_full_hour_plus_one():
    assert cacheable_expiry(T0) == T0 + 2 * HOUR
    assert cacheable_expiry(T0 + HOUR - 1) == T0 + 2 * HOUR
    assert cacheable_expiry(T0 + HOUR) == T0 + 3 * HOUR
    assert cacheable_expiry(T0 + 0.5) == T0 + 2 * HOUR


@pytest.fixture
def clock():
    return {"now": float(T0 + 5)}


@pytest.fixture
def lake(tmp_path, clock):
    return LocalLake(tmp_path / "lake", b"k" * 32, "http://127.0.0.1:8080",
                     clock=lambda: clock["now"])


def query_of(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


def test_a_cacheable_url_is_identical_within_the_hour_and_changes_with_it(lake, clock):
    key = renditions.rendition_key(SHA, 256)
    first = lake.cacheable_url_for(key, now=T0 + 1)
    assert lake.cacheable_url_for(key, now=T0 + 1799) == first
    assert lake.cacheable_url_for(key, now=T0 + HOUR - 1) == first
    assert lake.cacheable_url_for(key) == first  # the lake's own clock, same hour
    later = lake.cacheable_url_for(key, now=T0 + HOUR)
    assert later != first
    assert query_of(first)["exp"] == str(T0 + 2 * HOUR)
    assert query_of(later)["exp"] == str(T0 + 3 * HOUR)
    # Another object, another signature.
    assert lake.cacheable_url_for(renditions.rendition_key(SHA, 1024), now=T0 + 1) != first


def test_the_local_gateway_check_accepts_a_cacheable_url_until_it_expires(lake, clock):
    key = renditions.rendition_key(SHA, 1024)
    url = lake.cacheable_url_for(key)
    parts = urlsplit(url)
    assert parts.path == f"/lake/{key}"
    path_key = unquote(parts.path[len("/lake/"):])
    query = query_of(url)
    assert lake.verify_url(path_key, query["exp"], query["sig"])
    clock["now"] = T0 + 2 * HOUR - 1  # still valid for the last second
    assert lake.verify_url(path_key, query["exp"], query["sig"])
    clock["now"] = T0 + 2 * HOUR + 1
    assert not lake.verify_url(path_key, query["exp"], query["sig"])
    clock["now"] = T0 + 5
    assert not lake.verify_url(path_key, str(int(query["exp"]) + HOUR), query["sig"])
    assert not lake.verify_url(renditions.rendition_key("cd" * 32, 1024), query["exp"],
                               query["sig"])


def test_urls_name_both_renditions_through_the_lake_or_the_cdn(lake):
    local = renditions.urls(lake, SHA, now=T0 + 10)
    assert set(local) == {"thumbnail_url", "preview_url"}
    assert local["thumbnail_url"] == lake.cacheable_url_for(
        renditions.rendition_key(SHA, 256), now=T0 + 10)
    assert local["preview_url"] == lake.cacheable_url_for(
        renditions.rendition_key(SHA, 1024), now=T0 + 10)
    assert renditions.urls(lake, SHA, now=T0 + 3000) == local

    cdn = renditions.urls(lake, SHA, base_url="https://d111.cloudfront.net")
    assert cdn == {
        "thumbnail_url": f"https://d111.cloudfront.net/renditions/256/{SHA}.jpg",
        "preview_url": f"https://d111.cloudfront.net/renditions/1024/{SHA}.jpg",
    }
    assert renditions.urls(lake, SHA, base_url="https://d111.cloudfront.net/") == cdn
