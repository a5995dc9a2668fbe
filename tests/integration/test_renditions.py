"""Renditions in a lake: the backfill over a real folder lake (and its command against a stack
state), and the S3 adapter's cacheable URL and writes against moto (AWS mocked)."""

from __future__ import annotations

import calendar
import http.server
import io
import threading
import time
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import requests
from botocore.config import Config
from PIL import Image

from artlens import renditions
from artlens.digests import sha256_hex
from artlens.lake import RENDITION_CACHE_CONTROL, LocalLake, S3Lake, cacheable_expiry
from tests.conftest import MOTO_REGION
from tests.imagegen import artwork, encode

BUCKET = "artlens-images-renditions-test"


def gallery_picture(lake, seed: int, size=(1400, 900), fmt: str = "JPEG") -> tuple[str, str]:
    data = encode(artwork(seed, size), fmt)
    sha = sha256_hex(data)
    key = f"gallery/{sha}.{'jpg' if fmt == 'JPEG' else fmt.lower()}"
    lake.put(key, data, "image/jpeg")
    return key, sha


@pytest.fixture
def lake(tmp_path):
    return LocalLake(tmp_path / "lake", b"u" * 32)


@pytest.fixture
def gallery(lake):
    """Three works (one of them with its thumbnail already written), a gallery object that is
    not a picture, and one whose name is not a hash."""
    works = [gallery_picture(lake, 1), gallery_picture(lake, 2, (500, 700), "PNG"),
             gallery_picture(lake, 3, (300, 200))]
    _, partial_sha = works[0]
    existing = renditions.rendition_key(partial_sha, 256)
    lake.put(existing, b"already here", "image/jpeg")
    broken = "gallery/" + "e" * 64 + ".jpg"
    lake.put(broken, b"\xff\xd8\xff not really a jpeg")
    lake.put("gallery/holiday.jpg", encode(artwork(9), "JPEG"))
    return {"works": works, "existing": existing, "broken": broken}


def rendition_files(lake) -> list[str]:
    return lake.list("renditions/")


def test_backfill_writes_exactly_the_missing_renditions_and_is_idempotent(lake, gallery):
    keys = lake.list("gallery/")
    dry = renditions.backfill_renditions(lake, keys, dry_run=True)
    # A dry run reads no picture: the broken one counts as missing two renditions too.
    assert (dry.checked, dry.complete, dry.works, dry.written) == (5, 0, 4, 7)
    assert list(dry.failed) == ["gallery/holiday.jpg"]
    assert rendition_files(lake) == [gallery["existing"]]  # a dry run writes nothing

    first = renditions.backfill_renditions(lake, keys)
    assert (first.checked, first.complete, first.works, first.written) == (5, 0, 3, 5)
    assert set(first.failed) == {gallery["broken"], "gallery/holiday.jpg"}
    assert first.failed[gallery["broken"]].startswith("corrupt_image")
    assert "SHA-256" in first.failed["gallery/holiday.jpg"]
    expected = sorted(
        renditions.rendition_key(sha, side)
        for _, sha in gallery["works"] for side in renditions.RENDITION_SIDES
    )
    assert rendition_files(lake) == expected
    # Only what was missing: the rendition that existed was left alone.
    assert lake.get(gallery["existing"]) == b"already here"
    for _, sha in gallery["works"]:
        assert renditions.missing(lake, sha) == []
        preview = Image.open(io.BytesIO(lake.get(renditions.rendition_key(sha, 1024))))
        assert preview.format == "JPEG" and max(preview.size) <= 1024

    second = renditions.backfill_renditions(lake, keys)
    assert (second.checked, second.complete, second.works, second.written) == (5, 3, 0, 0)
    assert set(second.failed) == set(first.failed)
    assert rendition_files(lake) == expected


def test_backfill_decodes_at_most_two_pictures_at_once(lake, monkeypatch):
    keys = [gallery_picture(lake, seed, (800, 600))[0] for seed in range(8)]
    active, peak = 0, 0
    lock = threading.Lock()
    real_render = renditions.render

    def counting_render(data, **kwargs):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            time.sleep(0.02)  # keeps each decode open long enough for others to try
            return real_render(data, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(renditions, "render", counting_render)
    counts = renditions.backfill_renditions(lake, keys, workers=8)
    assert counts.written == 16 and not counts.failed
    assert 1 <= peak <= renditions.DEFAULT_DECODERS


def test_backfill_reports_a_picture_over_the_byte_limit_and_goes_on(lake):
    big_key, _ = gallery_picture(lake, 5, (1200, 900), "PNG")
    small_key, small_sha = gallery_picture(lake, 6, (100, 80))
    limit = len(lake.get(big_key)) - 1
    assert len(lake.get(small_key)) < limit
    counts = renditions.backfill_renditions(lake, [big_key, small_key], max_bytes=limit)
    assert counts.failed[big_key].startswith("too_large")
    assert counts.works == 1 and renditions.missing(lake, small_sha) == []


# --- the command --------------------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def stack_state(tmp_path):
    """A state folder whose stack.json names a live process answering /health, as a running
    stack publishes it (the command reads only the lake folder and url.key from it)."""
    from local_stack.state import RunningStack, StatePaths, load_or_create_secret

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    paths = StatePaths(tmp_path / "state")
    paths.create()
    load_or_create_secret(paths.url_key)
    RunningStack(pid=__import__("os").getpid(), url=f"http://127.0.0.1:{server.server_port}",
                 dsn="postgresql://unused", lake_dir=str(paths.lake),
                 model_version="test").write(paths)
    yield paths
    server.shutdown()
    server.server_close()


def test_the_command_backfills_the_running_stacks_lake(stack_state, capsys):
    from local_stack.renditions import main

    lake = LocalLake(stack_state.lake, b"any")
    _, sha = gallery_picture(lake, 11)
    lake.put("gallery/" + "f" * 64 + ".png", b"not a png")

    assert main(["--state-dir", str(stack_state.root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "would write" in out and renditions.missing(lake, sha) == [256,
                                                                                          1024]
    assert main(["--state-dir", str(stack_state.root)]) == 0
    out = capsys.readouterr().out
    assert "written           2  renditions, for 1 works" in out
    assert "failed            1" in out and "f" * 64 in out and "unsupported_format" in out
    assert renditions.missing(lake, sha) == []
    assert main(["--state-dir", str(stack_state.root)]) == 0
    assert "complete          1" in capsys.readouterr().out


def test_the_command_says_when_the_stack_is_not_running(tmp_path, capsys):
    from local_stack.renditions import main

    assert main(["--state-dir", str(tmp_path / "nothing")]) == 2
    assert "not running" in capsys.readouterr().err


# --- S3 (moto) ----------------------------------------------------------------------------


@pytest.fixture
def s3_lake(moto_aws):
    # As artlens.lake.lake_from_settings builds it: SigV4 presigned URLs.
    client = boto3.client("s3", region_name=MOTO_REGION, config=Config(signature_version="s3v4"))
    client.create_bucket(Bucket=BUCKET,
                         CreateBucketConfiguration={"LocationConstraint": MOTO_REGION})
    return S3Lake(client, BUCKET)


def test_s3_renditions_are_written_as_jpeg_and_found(s3_lake):
    data = encode(artwork(4, (1300, 1000)), "JPEG")
    sha = sha256_hex(data)
    assert renditions.missing(s3_lake, sha) == [256, 1024]
    keys = renditions.write(s3_lake, sha, renditions.render(data))
    assert keys == [renditions.rendition_key(sha, 256), renditions.rendition_key(sha, 1024)]
    assert renditions.missing(s3_lake, sha) == []
    head = s3_lake._s3.head_object(Bucket=BUCKET, Key=keys[0])
    assert head["ContentType"] == "image/jpeg"
    # CloudFront and browsers keep it (the key names the original's hash); originals not.
    assert head["CacheControl"] == RENDITION_CACHE_CONTROL
    s3_lake.put(f"gallery/{sha}.jpg", data, "image/jpeg")
    assert "CacheControl" not in s3_lake._s3.head_object(Bucket=BUCKET, Key=f"gallery/{sha}.jpg")


def test_s3_cacheable_url_reaches_the_rounded_expiry_and_works(s3_lake):
    key = renditions.rendition_key("9" * 64, 256)
    s3_lake.put(key, b"rendition bytes", "image/jpeg")
    before = cacheable_expiry(time.time())
    url = s3_lake.cacheable_url_for(key)
    after = cacheable_expiry(time.time())
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    assert urlsplit(url).path.endswith(f"/{key}")
    signed_at = calendar.timegm(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    expires_at = signed_at + int(query["X-Amz-Expires"])
    # The presigner signs with the current time (botocore offers no other), so what is
    # rounded is the expiry: valid until the next full hour plus one, like the local lake's.
    assert abs(expires_at - before) <= 2 or abs(expires_at - after) <= 2
    assert 3600 <= int(query["X-Amz-Expires"]) <= 7200
    # moto serves the presigned GET but checks neither its signature nor its expiry (tried:
    # a changed signature or date also answers 200), so the URL's structure is asserted above.
    response = requests.get(url, timeout=10)
    assert response.status_code == 200 and response.content == b"rendition bytes"
    assert renditions.urls(s3_lake, "9" * 64, base_url="https://cdn.example")[
        "thumbnail_url"] == f"https://cdn.example/{key}"
