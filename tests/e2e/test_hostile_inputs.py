"""Hostile and odd input against the running local stack, over HTTP.

A generated corpus (no files from outside the repo), each input with the answer it must get:
refusals are typed 4xx JSON errors, valid oddities are classified (200), and nothing yields a
5xx, a hang (every request has a timeout) or a dead server (/health is checked after the corpus).
The lake part drops files with awkward names and a batch mixing bad and good files into
incoming/ of a private stack, so the shared stack's gallery counts stay as other tests expect.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import numpy as np
import pytest
from PIL import Image

from bench.stress import local_stack
from tests import hostile
from tests.imagegen import artwork, encode, jpeg_bytes

REQUEST_TIMEOUT_S = 30.0
PICTURE = artwork(71, (180, 140))
JPEG = jpeg_bytes(71, (180, 140))
PNG = encode(PICTURE, "PNG")


# --------------------------------------------------------------------------- generators


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height; the few compressed bytes would inflate hugely."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 65536, 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def gif_bomb() -> bytes:
    """GIF logical screen and image 65535 x 65535 with a tiny LZW stream."""
    return (b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + b"\x00" * 6
            + b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00;")


def bmp_bomb() -> bytes:
    """A BMP header claiming 50000 x 50000 pixels at 24 bits, with 16 bytes of pixel data."""
    header = struct.pack("<IiiHHIIiiII", 40, 50000, 50000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + header + b"\x00" * 16


def tiff_bomb() -> bytes:
    """A little-endian TIFF whose IFD says 60000 x 60000, 8-bit grey, one tiny strip."""
    entries = [(256, 4, 1, 60000), (257, 4, 1, 60000), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, 60000),
               (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries
    ) + b"\x00\x00\x00\x00"
    return b"II*\x00" + struct.pack("<I", 24) + b"\x00" * 16 + ifd


def save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    return save(artwork(72, (200, 100)), "JPEG", exif=exif.tobytes())


def huge_exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "A" * 60_000  # ImageDescription: one APP1 segment holds at most 64 KB
    return save(artwork(73, (120, 90)), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [artwork(80 + i, (64, 48)).convert("P") for i in range(4)]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def sixteen_bit_png() -> bytes:
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    return save(Image.fromarray(ramp), "PNG")  # uint16 -> mode I;16


def multipart(fields: dict[str, tuple[str | None, bytes]], boundary: str = "xYzZy") -> bytes:
    parts = []
    for name, (filename, data) in fields.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def alg_none_token(sub: str = "dev") -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': sub, 'exp': 4102444800})}."


# --------------------------------------------------------------------------- the corpus


@dataclass
class Case:
    name: str
    body: bytes
    status: int
    error: str | None = None  # the JSON error code; None for 200 or a non-JSON gateway answer
    content_type: str | None = "application/octet-stream"
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    authorization: str | None = "TOKEN"  # "TOKEN" -> the stack's valid bearer token


rng = np.random.default_rng(6)
OK = 200
CORPUS = [
    # -- not images at all
    Case("empty body", b"", 400, "empty"),
    Case("random bytes", b"\x00\x17" + rng.bytes(4096), 415, "unsupported_format"),
    Case("html as jpeg", b"<!doctype html><html><body><script>alert(1)</script>", 415,
         "unsupported_format", content_type="image/jpeg"),
    Case("svg as image", b'<svg xmlns="http://www.w3.org/2000/svg" width="1e6" height="1e6">'
         b'<script>alert(1)</script></svg>', 415, "unsupported_format",
         content_type="image/svg+xml"),
    Case("pdf as image", b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\ntrailer<<>>\n%%EOF", 415,
         "unsupported_format", content_type="image/png"),
    Case("zip as image", b"PK\x03\x04" + rng.bytes(200), 415, "unsupported_format"),
    Case("ico (a format we do not take)", save(PICTURE.resize((32, 32)), "ICO"), 415,
         "unsupported_format"),
    # -- broken images
    Case("truncated jpeg", JPEG[: len(JPEG) // 3], 400, "corrupt_image"),
    Case("truncated png", PNG[: len(PNG) // 2], 400, "corrupt_image"),
    Case("jpeg header only", JPEG[:20], 400, "corrupt_image"),
    Case("png signature only", b"\x89PNG\r\n\x1a\n", 400, "corrupt_image"),
    # -- decompression bombs
    Case("png bomb 100000x100000", png_bomb(100_000, 100_000), 413, "too_many_pixels"),
    Case("png bomb just over the limit", png_bomb(8000, 5001), 413, "too_many_pixels"),
    Case("gif bomb 65535x65535", gif_bomb(), 413, "too_many_pixels"),
    Case("bmp bomb 50000x50000", bmp_bomb(), 413, "too_many_pixels"),
    Case("tiff bomb 60000x60000", tiff_bomb(), 413, "too_many_pixels"),
    # -- too big
    Case("body just over 6 MB", JPEG + b"\x00" * (6 * 1024 * 1024), 413, "too_large"),
    Case("body over the gateway's 10 MB", b"\x00" * (10 * 1024 * 1024 + 1), 413, "too_large"),
    # -- valid oddities: classified
    Case("1x1 png", save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), OK),
    Case("10000x1 png", save(PICTURE.resize((10000, 1)), "PNG"), OK),
    Case("1x10000 jpeg", save(PICTURE.resize((1, 10000)), "JPEG"), OK),
    Case("cmyk jpeg", save(PICTURE.convert("CMYK"), "JPEG"), OK),
    Case("16-bit png", sixteen_bit_png(), OK),
    Case("1-bit png", save(PICTURE.convert("1"), "PNG"), OK),
    Case("palette png", save(PICTURE.convert("P"), "PNG"), OK),
    Case("palette png with transparency", save(PICTURE.convert("P"), "PNG", transparency=0), OK),
    Case("rgba png", save(PICTURE.convert("RGBA"), "PNG"), OK),
    Case("greyscale+alpha png", save(PICTURE.convert("LA"), "PNG"), OK),
    Case("animated gif", animated_gif(), OK),
    Case("webp", save(PICTURE, "WEBP", quality=80), OK),
    Case("lossless webp with alpha", save(PICTURE.convert("RGBA"), "WEBP", lossless=True), OK),
    Case("bmp", save(PICTURE, "BMP"), OK),
    Case("tiff", save(PICTURE, "TIFF"), OK),
    Case("exif-rotated jpeg", exif_rotated_jpeg(), OK),
    Case("jpeg with 60 KB of exif", huge_exif_jpeg(), OK),
    Case("progressive jpeg", save(PICTURE, "JPEG", progressive=True), OK),
    Case("polyglot jpeg+zip", JPEG + b"PK\x03\x04" + rng.bytes(300), OK),
    Case("polyglot jpeg+html", JPEG + b"<html><script>alert(1)</script></html>", OK),
    Case("polyglot gif/js", b"GIF89a/*\x00\x00\x00\x00*/=alert(1);", 400, "corrupt_image"),
    # -- body forms and content types
    Case("jpeg labelled image/png", JPEG, OK, content_type="image/png"),
    Case("no content type", PNG, OK, content_type=None),
    Case("image labelled text/plain", PNG, OK, content_type="text/plain"),
    Case("json with base64", json.dumps({"image_base64": base64.b64encode(PNG).decode()})
         .encode(), OK, content_type="application/json"),
    Case("json data url", json.dumps({"image_base64": "data:image/png;base64,"
                                      + base64.b64encode(PNG).decode()}).encode(), OK,
         content_type="application/json"),
    Case("json with invalid base64", b'{"image_base64": "!!!not*base64???"}', 400,
         "invalid_base64", content_type="application/json"),
    Case("json without the field", b'{"image": "abc"}', 400, "missing_file",
         content_type="application/json"),
    Case("json that is not json", b'{"image_base64": ', 400, "bad_json",
         content_type="application/json"),
    Case("json array", b"[1, 2, 3]", 400, "missing_file", content_type="application/json"),
    Case("multipart with a file", multipart({"file": ("a.png", PNG)}), OK,
         content_type="multipart/form-data; boundary=xYzZy"),
    Case("multipart without a file", multipart({"title": (None, b"hello")}), 400,
         "missing_file", content_type="multipart/form-data; boundary=xYzZy"),
    Case("multipart without a boundary", multipart({"file": ("a.png", PNG)}), 400,
         "bad_multipart", content_type="multipart/form-data"),
    Case("multipart with the wrong boundary", multipart({"file": ("a.png", PNG)}), 400,
         "bad_multipart", content_type="multipart/form-data; boundary=other"),
    Case("raw base64 text as image", base64.b64encode(PNG), 415, "unsupported_format",
         content_type="text/plain"),
    # -- query strings
    Case("neighbors not a number", PNG, 400, "bad_query", query="neighbors=abc"),
    Case("neighbors negative", PNG, 400, "bad_query", query="neighbors=-1"),
    Case("neighbors too many", PNG, 400, "bad_query", query="neighbors=21"),
    Case("neighbors huge", PNG, 400, "bad_query", query="neighbors=" + "9" * 400),
    Case("neighbors sql injection", PNG, 400, "bad_query",
         query="neighbors=1%3B%20DROP%20TABLE%20images%3B--"),
    Case("scope sql injection", PNG, 400, "bad_query", query="scope=%27%20OR%201%3D1%20--"),
    Case("scope script", PNG, 400, "bad_query", query="scope=%3Cscript%3Ealert(1)%3C/script%3E"),
    Case("neighbors nul byte", PNG, 400, "bad_query", query="neighbors=%00"),
    Case("neighbors full-width digit", PNG, 400, "bad_query", query="neighbors=%EF%BC%91"),
    Case("unknown parameter", PNG, 400, "bad_query", query="debug=true"),
    Case("repeated parameter", PNG, 400, "bad_query", query="neighbors=1&neighbors=2"),
    Case("valid odd query", PNG, OK, query="neighbors=0&scope=ALL"),
    # -- Authorization
    Case("no authorization", PNG, 401, "unauthorized", authorization=None),
    Case("bearer without token", PNG, 401, "unauthorized", authorization="Bearer"),
    Case("basic auth", PNG, 401, "unauthorized", authorization="Basic ZGV2OmRldg=="),
    Case("garbage token", PNG, 401, "unauthorized", authorization="Bearer a.b.c"),
    Case("alg none jwt", PNG, 401, "unauthorized", authorization=f"Bearer {alg_none_token()}"),
    Case("jwt signed with another key", PNG, 401, "unauthorized", authorization="Bearer " +
         jwt.encode({"sub": "dev", "exp": 4102444800}, "k" * 40, algorithm="HS256")),
    Case("expired jwt", PNG, 401, "unauthorized", authorization="Bearer EXPIRED"),
    Case("oversize bearer (8 KB)", PNG, 401, "unauthorized", authorization="Bearer " + "A" * 8192),
    Case("hmac scheme with garbage", PNG, 401, "unauthorized",
         authorization="ArtLens-HMAC-SHA256 " + "f" * 64),
    Case("unknown scheme", PNG, 401, "unauthorized", authorization="Negotiate YIIB"),
    Case("header over 64 KB", PNG, 431, "headers_too_large",
         authorization="Bearer " + "B" * 70_000),
    # -- issue 13: small files, huge rasters (budgeted by decode memory, tests/hostile.py)
    Case("16-bit grey png of 39.9 MP (90 KB)", hostile.grey16_png_40mp(), OK),
    Case("lossless webp canvas of 39.9 MP (1.7 KB)", hostile.webp_canvas_40mp(), 413,
         "too_many_pixels"),
    Case("lossless webp canvas of 16 MP", hostile.webp_canvas_16mp(), OK),
    Case("rgba png of 39.9 MP", hostile.rgba_png_40mp(), 413, "too_many_pixels"),
    Case("palette png of 39.9 MP", hostile.palette_png_40mp(), OK),
    Case("progressive jpeg of 39.9 MP", hostile.progressive_jpeg_40mp(), OK),
    Case("progressive cmyk jpeg of 39.9 MP", hostile.progressive_cmyk_jpeg_40mp(), 413,
         "too_many_pixels"),
    # -- issue 13: the gateway and the tokens
    Case("body whose lambda event passes 6 MB", JPEG + b"\x00" * 4_800_000, 413, "too_large"),
    Case("query over 64 KB", PNG, 414, "uri_too_long", query="neighbors=" + "1" * 70_000),
    Case("body shorter than its content-length", b"0123456789", 408, "request_timeout",
         headers={"Content-Length": "1000"}),
    Case("jwt with exp as a string", PNG, 401, "unauthorized", authorization="Bearer STRING_EXP"),
    Case("jwt living a year", PNG, 401, "unauthorized", authorization="Bearer YEAR_LONG"),
    Case("hmac signature in upper case", PNG, 401, "unauthorized",
         authorization="ArtLens-HMAC-SHA256 " + "F" * 64),
]


def test_the_corpus_is_big_and_varied():
    assert len(CORPUS) >= 40
    assert len({c.name for c in CORPUS}) == len(CORPUS)
    assert sum(c.status == OK for c in CORPUS) >= 15
    assert {c.status for c in CORPUS} >= {200, 400, 401, 413, 415}


def forged_tokens(key: str) -> dict[str, str]:
    """Tokens signed with the stack's own key that must still be refused."""
    now = int(time.time())
    return {
        "Bearer EXPIRED": jwt.encode({"sub": "dev", "iat": 1, "exp": 2}, key, algorithm="HS256"),
        "Bearer STRING_EXP": jwt.encode({"sub": "dev", "exp": str(now + 600)}, key,
                                        algorithm="HS256"),
        "Bearer YEAR_LONG": jwt.encode({"sub": "dev", "iat": now, "exp": now + 365 * 86400},
                                       key, algorithm="HS256"),
    }


def send(base_url: str, case: Case, token: str, forged: dict[str, str]
         ) -> tuple[int, bytes, dict, float]:
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT_S)
    headers = {"Content-Length": str(len(case.body)), **case.headers}
    if case.content_type:
        headers["Content-Type"] = case.content_type
    if case.authorization == "TOKEN":
        headers["Authorization"] = f"Bearer {token}"
    elif case.authorization in forged:
        headers["Authorization"] = f"Bearer {forged[case.authorization]}"
    elif case.authorization is not None:
        headers["Authorization"] = case.authorization
    started = time.monotonic()
    try:
        connection.putrequest("POST", "/predict" + (f"?{case.query}" if case.query else ""),
                              skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        # The server may answer (413, 431) before reading everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.send(case.body)
        answer = connection.getresponse()
        return answer.status, answer.read(), dict(answer.getheaders()), time.monotonic() - started
    finally:
        connection.close()


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_hostile_input_gets_its_answer(local_stack, case):
    key = (local_stack.state_dir / "token.key").read_text().strip()
    status, raw, headers, elapsed = send(local_stack.base_url, case, local_stack.token,
                                         forged_tokens(key))
    assert status < 500, f"{case.name}: {status} {raw[:300]!r}\n{local_stack.log_tail(3000)}"
    assert elapsed < REQUEST_TIMEOUT_S
    assert status == case.status, f"{case.name}: {status} {raw[:300]!r}"
    body = json.loads(raw)  # every answer is JSON, the HTTP layer's own refusals (431, 414) too
    if status == OK:
        assert body["label"] in body["probabilities"]
        assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-3
        assert headers.get("Access-Control-Allow-Origin")
    else:
        assert body["error"] == case.error, f"{case.name}: {body}"
        assert body["message"] and "Traceback" not in body["message"]


def test_the_stack_is_healthy_after_the_corpus(local_stack):
    parts = urlsplit(local_stack.base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("GET", "/health")
    answer = connection.getresponse()
    assert answer.status == 200 and json.loads(answer.read())["status"] == "ok"
    assert local_stack.process.poll() is None


# --------------------------------------------------------------------------- the lake


@pytest.fixture(scope="module")
def lake_stack(tmp_path_factory, tiny_model_card):
    with local_stack(tmp_path_factory.mktemp("hostile_lake"), tiny_model_card) as running:
        yield running


def drop(lake_dir: Path, key: str, data: bytes) -> None:
    """Write then rename, as an upload completes: the watcher never sees half a file."""
    target = lake_dir / key
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def wait_until_incoming_is_empty(stack, timeout: float = 90.0) -> None:
    incoming = stack.lake_dir / "incoming"
    deadline = time.monotonic() + timeout
    while any(p.is_file() for p in incoming.rglob("*")):
        assert time.monotonic() < deadline, (
            f"still in incoming/: {sorted(map(str, incoming.rglob('*')))}\n{stack.log_tail()}")
        time.sleep(0.3)


def indexed_count(stack) -> int:
    parts = urlsplit(stack.base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("GET", "/health")
    return json.loads(connection.getresponse().read())["indexed"]


def gallery_for(stack, data: bytes) -> list[Path]:
    import hashlib

    return list((stack.lake_dir / "gallery").glob(hashlib.sha256(data).hexdigest() + ".*"))


def test_lake_keys_with_spaces_and_unicode_are_indexed(lake_stack):
    before = indexed_count(lake_stack)
    names = {
        "incoming/salle 3/nature morte été.jpg": jpeg_bytes(501),
        "incoming/日本の版画 (1).png": encode(artwork(502), "PNG"),
        "incoming/a+b%20c & d's #1.webp": encode(artwork(503), "WEBP"),
        "incoming/emoji 🎨 ümlaut/Ωmega.gif": encode(artwork(504).convert("P"), "GIF"),
        "incoming/  leading and trailing spaces  .jpg": jpeg_bytes(505),
    }
    for key, data in names.items():
        drop(lake_stack.lake_dir, key, data)
    wait_until_incoming_is_empty(lake_stack)
    for key, data in names.items():
        assert len(gallery_for(lake_stack, data)) == 1, key
    assert not list((lake_stack.lake_dir / "rejected").rglob("*"))
    assert indexed_count(lake_stack) == before + len(names)
    assert not list((lake_stack.state_dir / "dlq").glob("*.json"))


def test_bad_files_in_a_batch_are_rejected_with_a_reason_and_never_block_the_rest(lake_stack):
    before = indexed_count(lake_stack)
    good = {f"incoming/mixed/good {i}.jpg": jpeg_bytes(520 + i) for i in range(5)}
    bad = {
        "incoming/mixed/page.jpg": (b"<html>not a picture</html>", "unsupported_format"),
        "incoming/mixed/truncated.png": (PNG[: len(PNG) // 2], "corrupt_image"),
        "incoming/mixed/bomb.png": (png_bomb(100_000, 100_000), "too_many_pixels"),
        "incoming/mixed/empty.jpg": (b"", "empty"),
        "incoming/mixed/random.bin.gif": (rng.bytes(2048), "unsupported_format"),
    }
    # Interleaved, so bad files sit between good ones in every delivered batch.
    for (gkey, gdata), (bkey, (bdata, _)) in zip(good.items(), bad.items(), strict=True):
        drop(lake_stack.lake_dir, bkey, bdata)
        drop(lake_stack.lake_dir, gkey, gdata)
    wait_until_incoming_is_empty(lake_stack)

    assert indexed_count(lake_stack) == before + len(good)
    for key, data in good.items():
        assert len(gallery_for(lake_stack, data)) == 1, key
    for key, (data, reason) in bad.items():
        document = rejected_reason(lake_stack, data)
        assert document["error"] == reason, (key, document)
        assert document["source_key"] == key and document["message"]
    assert not list((lake_stack.state_dir / "dlq").glob("*.json"))


def rejected_reason(stack, data: bytes) -> dict:
    """Rejects are parked as rejected/<sha256 of the bytes> with the reason beside them."""
    import hashlib

    parked = stack.lake_dir / "rejected" / hashlib.sha256(data).hexdigest()
    assert parked.read_bytes() == data
    return json.loads(parked.with_name(parked.name + ".reason.json").read_text())


def test_issue_13_drops_dot_files_reason_names_long_names_and_huge_rasters(lake_stack):
    before = indexed_count(lake_stack)
    long_name = "n" * 246 + ".jpg"  # 250 bytes: "<name>.reason.json" would exceed NAME_MAX
    good = {
        "incoming/.hidden picture.jpg": jpeg_bytes(540),  # a dot-file is a picture too
        "incoming/grey16 40mp.png": hostile.grey16_png_40mp(),
        "incoming/palette 40mp.png": hostile.palette_png_40mp(),
    }
    bad = {
        "incoming/same/page.jpg": (b"<html>first</html>", "unsupported_format"),
        "incoming/other/page.jpg": (b"<html>second, same name</html>", "unsupported_format"),
        "incoming/same/page.jpg.reason.json": (b'{"error": "forged"}', "unsupported_format"),
        f"incoming/{long_name}": (b"not a picture, long name", "unsupported_format"),
        "incoming/webp canvas 40mp.webp": (hostile.webp_canvas_40mp(), "too_many_pixels"),
    }
    editor_temp = ["incoming/.#lock.jpg", "incoming/.picture.jpg.swp", "incoming/._picture.jpg"]
    for key, data in good.items():
        drop(lake_stack.lake_dir, key, data)
    for key, (data, _) in bad.items():
        drop(lake_stack.lake_dir, key, data)
    for key in editor_temp:
        drop(lake_stack.lake_dir, key, jpeg_bytes(541))
    deadline = time.monotonic() + 120
    incoming = lake_stack.lake_dir / "incoming"
    while {p.relative_to(lake_stack.lake_dir).as_posix()
           for p in incoming.rglob("*") if p.is_file()} != set(editor_temp):
        assert time.monotonic() < deadline, lake_stack.log_tail()
        time.sleep(0.3)

    assert indexed_count(lake_stack) == before + len(good)
    for key, data in good.items():
        assert len(gallery_for(lake_stack, data)) == 1, key
    for key, (data, reason) in bad.items():
        document = rejected_reason(lake_stack, data)
        assert (document["error"], document["source_key"]) == (reason, key)
        assert document["name"] == key.removeprefix("incoming/")
    log = lake_stack.log_tail(200_000)
    assert all(f"not ingesting {key}" in log for key in editor_temp), log[-3000:]
    assert not list((lake_stack.state_dir / "dlq").glob("*.json"))
