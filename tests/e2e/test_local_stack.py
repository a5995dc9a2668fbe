"""End to end: the local stack as a user runs it (`make run`, `make ingest`, the API with curl).

One stack process for the module (fixture `local_stack`), fed a folder of generated pictures
through `python -m local_stack.ingest`, then called over HTTP like the page or curl would.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

import numpy as np
import pytest
from PIL import Image, ImageDraw

from local_stack.watcher import IncomingWatcher
from tests.e2e.conftest import REPO_ROOT, stack_env

UNIQUE_IMAGES = 10


def _picture(index: int) -> Image.Image:
    """Ten visibly different pictures: solid colours, gradients, stripes, checks, shapes, noise."""
    rng = np.random.default_rng(index)
    size = (160 + 13 * index, 140 + 7 * index)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    other = tuple(255 - c for c in colour)
    kind = index % 5
    if kind == 0:
        image = Image.new("RGB", size, colour)
    elif kind == 1:
        ramp = np.linspace(0, 255, size[0], dtype=np.uint8)
        pixels = np.stack([np.tile(ramp, (size[1], 1))] * 3, axis=-1)
        pixels[..., index % 3] = 255 - pixels[..., index % 3]
        image = Image.fromarray(pixels, "RGB")
    elif kind == 2:
        image = Image.new("RGB", size, colour)
        draw = ImageDraw.Draw(image)
        for x in range(0, size[0], 12 + index):
            draw.rectangle([x, 0, x + 5, size[1]], fill=other)
    elif kind == 3:
        cells = (np.indices((size[1], size[0])) // (8 + index)).sum(axis=0) % 2
        pixels = np.where(cells[..., None] == 1, np.array(colour), np.array(other))
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    else:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB")
        ImageDraw.Draw(image).ellipse([20, 20, size[0] - 20, size[1] - 20], fill=colour)
    return image


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def picture_folder(tmp_path_factory) -> Path:
    """10 distinct pictures (JPEG and PNG, one in a subfolder), one byte-identical duplicate,
    one text file named .jpg (to be rejected) and one notes.txt (to be skipped)."""
    folder = tmp_path_factory.mktemp("pictures")
    (folder / "more").mkdir()
    for index in range(UNIQUE_IMAGES):
        fmt, suffix = ("PNG", "png") if index % 2 else ("JPEG", "jpg")
        target = folder / ("more" if index == 7 else "") / f"work {index:02d}.{suffix}"
        target.write_bytes(_encode(_picture(index), fmt))
    shutil.copyfile(folder / "work 03.png", folder / "more" / "copy-of-work-03.png")
    (folder / "broken.jpg").write_text("this is not a picture at all\n")
    (folder / "notes.txt").write_text("not an image either, and not named like one\n")
    return folder


@pytest.fixture(scope="module")
def ingested(local_stack, picture_folder) -> dict:
    """The human summary of the first ingest, then the JSON summary of a second run."""
    first = local_stack.run("local_stack.ingest", str(picture_folder), "--no-progress",
                            "--timeout", "120")
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}\n{local_stack.log_tail()}"
    return {"table": first.stdout}


def _count(table: str, name: str) -> int:
    match = re.search(rf"^\s+{name}\s+(\d+)", table, re.MULTILINE)
    assert match, f"no {name!r} row in:\n{table}"
    return int(match.group(1))


def _request(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) without raising on 4xx/5xx."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _raw_get(base_url: str, raw_path: str):
    """GET with the path sent exactly as written (urllib would normalise `..`)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("GET", raw_path, skip_accept_encoding=True)
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def _query_picture() -> bytes:
    return _encode(_picture(42), "JPEG")


def test_health_reports_model_and_index(local_stack, ingested):
    status, headers, body = _request("GET", f"{local_stack.base_url}/health")
    assert status == 200
    answer = json.loads(body)
    assert answer["status"] == "ok"
    assert answer["model_version"] == "tiny-0"
    assert answer["indexed"] == UNIQUE_IMAGES


def test_ingest_summary_counts_every_file(local_stack, ingested, picture_folder):
    table = ingested["table"]
    assert _count(table, "indexed") == UNIQUE_IMAGES
    assert _count(table, "duplicates") == 1
    assert _count(table, "rejected") == 1
    assert _count(table, "skipped") == 1
    assert re.search(r"broken\.jpg\s+(unsupported_format|corrupt_image)", table), table
    assert not any((local_stack.lake_dir / "incoming").iterdir())
    gallery = list((local_stack.lake_dir / "gallery").iterdir())
    assert len(gallery) == UNIQUE_IMAGES

    again = local_stack.run("local_stack.ingest", str(picture_folder), "--no-progress", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["indexed"], summary["duplicates"], summary["rejected"]) == (
        0, UNIQUE_IMAGES + 1, 1,
    )


def test_predict_with_token_returns_five_neighbours_that_serve_images(local_stack, ingested):
    status, headers, body = _request(
        "POST", f"{local_stack.base_url}/predict?scope=all", _query_picture(),
        {"Authorization": f"Bearer {local_stack.token}", "Content-Type": "image/jpeg"},
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["label"] in answer["probabilities"]
    assert answer["model_version"] == "tiny-0"
    assert abs(sum(answer["probabilities"].values()) - 1.0) < 1e-3
    neighbours = answer["neighbors"]
    assert len(neighbours) == 5
    similarities = [n["similarity"] for n in neighbours]
    assert similarities == sorted(similarities, reverse=True)
    assert len({n["key"] for n in neighbours}) == 5
    for neighbour in neighbours:
        assert neighbour["key"].startswith("gallery/")
        url = neighbour["url"]
        if url.startswith("/"):
            url = local_stack.base_url + url
        got, got_headers, data = _request("GET", url)
        assert got == 200
        assert got_headers["Content-Type"].startswith("image/")
        Image.open(io.BytesIO(data)).verify()  # real picture bytes


def test_predict_class_scope_keeps_to_the_predicted_label(local_stack, ingested):
    status, _, body = _request(
        "POST", f"{local_stack.base_url}/predict", _query_picture(),
        {"Authorization": f"Bearer {local_stack.token}", "Content-Type": "image/jpeg"},
    )
    assert status == 200, body
    answer = json.loads(body)
    assert len(answer["neighbors"]) <= 5
    assert all(n["label"] == answer["label"] for n in answer["neighbors"])


def test_predict_without_token_is_401_json_with_cors(local_stack):
    status, headers, body = _request(
        "POST", f"{local_stack.base_url}/predict", _query_picture(),
        {"Content-Type": "image/jpeg"},
    )
    assert status == 401
    assert json.loads(body)["error"] == "unauthorized"
    assert headers["Access-Control-Allow-Origin"]
    assert headers["Content-Type"].startswith("application/json")


def test_predict_with_bad_token_is_401(local_stack):
    forged = local_stack.token[:-4] + ("AAAA" if not local_stack.token.endswith("AAAA") else "BBBB")
    for token in (forged, "not-a-jwt"):
        status, _, body = _request(
            "POST", f"{local_stack.base_url}/predict", _query_picture(),
            {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"},
        )
        assert status == 401, body
        assert json.loads(body)["error"] == "unauthorized"


def test_predict_bad_image_is_a_typed_error_not_500(local_stack):
    status, headers, body = _request(
        "POST", f"{local_stack.base_url}/predict", b"plain text, not an image",
        {"Authorization": f"Bearer {local_stack.token}", "Content-Type": "image/jpeg"},
    )
    assert status in (400, 415)
    assert set(json.loads(body)) == {"error", "message"}
    assert headers["Access-Control-Allow-Origin"]


def test_preflight_answers_cors(local_stack):
    status, headers, _ = _request(
        "OPTIONS", f"{local_stack.base_url}/predict",
        headers={"Origin": local_stack.base_url, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
    )
    assert status == 204
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "authorization" in headers["Access-Control-Allow-Headers"].lower()


def test_map_needs_a_token_and_projects_the_gallery(local_stack, ingested):
    assert _request("GET", f"{local_stack.base_url}/map")[0] == 401
    status, _, body = _request(
        "GET", f"{local_stack.base_url}/map",
        headers={"Authorization": f"Bearer {local_stack.token}"},
    )
    assert status == 200, body
    points = json.loads(body)["points"]
    assert len(points) == UNIQUE_IMAGES
    assert all({"key", "label", "x", "y", "z", "url"} <= set(point) for point in points)


def test_lake_refuses_a_bad_or_missing_signature(local_stack, ingested):
    key = next((local_stack.lake_dir / "gallery").iterdir()).name
    for query in ("", "?exp=9999999999&sig=" + "0" * 64, "?exp=1&sig=abc"):
        status, _, body = _request("GET", f"{local_stack.base_url}/lake/gallery/{key}{query}")
        assert status == 403, query
        assert json.loads(body)["error"] == "forbidden"


def test_static_serving_refuses_path_traversal(local_stack):
    for raw_path in ("/../pyproject.toml", "/%2e%2e/pyproject.toml", "/..%2fpyproject.toml",
                     "/%2e%2e/%2e%2e/etc/passwd", "/.git/config", "/lake/../token.key"):
        status, body = _raw_get(local_stack.base_url, raw_path)
        assert status in (400, 403, 404), raw_path
        assert b"[project]" not in body and b"root:" not in body and b"[core]" not in body


def test_config_json_and_unknown_routes(local_stack):
    status, headers, body = _request("GET", f"{local_stack.base_url}/config.json")
    assert status == 200
    assert json.loads(body) == {"apiBaseUrl": ""}
    status, headers, body = _request("GET", f"{local_stack.base_url}/no/such/page.html")
    assert status == 404
    assert json.loads(body)["error"] == "not_found"


def test_oversized_body_is_413_json(local_stack):
    status, _, body = _request(
        "POST", f"{local_stack.base_url}/predict", b"\0" * (10 * 1024 * 1024 + 1),
        {"Authorization": f"Bearer {local_stack.token}", "Content-Type": "image/jpeg"},
    )
    assert status == 413
    assert json.loads(body)["error"] == "too_large"


def test_ingest_says_so_when_the_stack_is_not_running(tmp_path, picture_folder):
    done = subprocess.run(
        [sys.executable, "-m", "local_stack.ingest", str(picture_folder),
         "--state-dir", str(tmp_path / "never_started")],
        cwd=REPO_ROOT, env=stack_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "not running" in done.stderr
    assert done.stdout == ""


class _ScriptedEmbed:
    """Stands in for the embed handler's side effects so the watcher's delivery rules (the
    SQS event source mapping's: batches, partial failures, retries, DLQ) can be driven exactly.
    Succeeds by deleting the object, as the real handler does; fails keys containing "flaky"."""

    def __init__(self, lake_dir: Path):
        self.lake_dir = lake_dir
        self.batches: list[list[dict]] = []

    def __call__(self, event, context):
        self.batches.append(event["Records"])
        failures = []
        for record in event["Records"]:
            s3_record = json.loads(record["body"])["Records"][0]
            key = unquote_plus(s3_record["s3"]["object"]["key"])
            if "flaky" in key:
                failures.append({"itemIdentifier": record["messageId"]})
            else:
                (self.lake_dir / key).unlink()
        assert context.get_remaining_time_in_millis() > 0
        return {"batchItemFailures": failures}

    def deliveries(self, fragment: str) -> list[dict]:
        return [r for batch in self.batches for r in batch if fragment in r["body"]]


def test_watcher_batches_retries_and_dead_letters(tmp_path):
    lake, dlq = tmp_path / "lake", tmp_path / "dlq"
    incoming = lake / "incoming"
    (incoming / "sub").mkdir(parents=True)
    for index in range(11):
        (incoming / f"picture {index:02d}.png").write_bytes(b"x" * (index + 1))
    (incoming / "sub" / "flaky.png").write_bytes(b"flaky")
    (incoming / ".half-written.png.tmp").write_bytes(b"partial")
    (incoming / "download.part").write_bytes(b"partial")
    embed = _ScriptedEmbed(lake)
    watcher = IncomingWatcher(lake, dlq, embed, max_receives=2, backoff_s=0.05)

    watcher.poll_once()
    assert embed.batches == []  # first sighting: not yet known to be complete
    watcher.poll_once()
    assert [len(batch) for batch in embed.batches] == [10, 2]

    first = embed.batches[0][0]
    assert first["eventSource"] == "aws:sqs"
    s3_record = json.loads(first["body"])["Records"][0]
    assert s3_record["eventName"] == "ObjectCreated:Put"
    assert s3_record["s3"]["object"]["key"] == "incoming/picture+00.png"  # URL-encoded, as S3
    assert s3_record["s3"]["object"]["size"] == 1

    time.sleep(0.1)
    watcher.poll_once()
    flaky = embed.deliveries("flaky")
    assert len(flaky) == 2
    assert flaky[0]["messageId"] == flaky[1]["messageId"]
    assert [r["attributes"]["ApproximateReceiveCount"] for r in flaky] == ["1", "2"]
    parked = [json.loads(p.read_text()) for p in dlq.glob("*.json")]
    assert [record["key"] for record in parked] == ["incoming/sub/flaky.png"]
    assert sorted(p.name for p in incoming.iterdir()) == [
        ".half-written.png.tmp", "download.part", "sub",
    ]

    # Parked stays parked, in this watcher and after a restart, until the file changes.
    watcher.poll_once()
    restarted = IncomingWatcher(lake, dlq, embed, max_receives=2, backoff_s=0.05)
    restarted.poll_once()
    restarted.poll_once()
    assert len(embed.deliveries("flaky")) == 2
    assert not any("half-written" in r["body"] or ".part" in r["body"]
                   for batch in embed.batches for r in batch)

    # A file still growing between polls is not announced until its size settles.
    growing = incoming / "growing.png"
    growing.write_bytes(b"a")
    restarted.poll_once()
    growing.write_bytes(b"ab")
    restarted.poll_once()
    assert embed.deliveries("growing") == []
    restarted.poll_once()
    assert len(embed.deliveries("growing")) == 1
