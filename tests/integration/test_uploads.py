"""Large pictures around API Gateway's body limit (issue 12, Bodies): POST /uploads answers a
presigned PUT to `uploads/<sha256>`, the lake takes the PUT (S3 with moto for the URL; the local
gateway's signed PUT on a real socket), and POST /predict {"key"} classifies the stored picture
under the picture limit, through the real predict handler (PostgreSQL + pgvector, tiny ONNX)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit

import boto3
import numpy as np
import pytest
from botocore.config import Config
from PIL import Image

from artlens.api.events import MAX_BODY_BYTES
from artlens.image import MAX_BYTES
from artlens.lake import LocalLake, S3Lake, checksum_header, upload_headers
from local_stack.gateway import Backend, GatewayConfig, GatewayServer
from tests.conftest import MOTO_REGION
from tests.integration.test_api_contract import call, post_json
from tests.integration.test_predict_handler import answer, post
from tests.integration.test_predict_handler import (
    stack as stack,  # the fixture: a gallery of real embeddings, the handler environment
)


def big_png(seed: int, low: int = MAX_BODY_BYTES + 1, high: int = MAX_BYTES) -> bytes:
    """A real picture (noise barely compresses) between the body limit and the picture limit."""
    pixels = np.random.default_rng(seed).integers(0, 256, (1_300, 1_300, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    data = out.getvalue()
    assert low <= len(data) <= high, len(data)
    return data


BIG = big_png(7)
BIG_SHA = hashlib.sha256(BIG).hexdigest()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ticket_for(data: bytes, content_type: str = "image/png") -> dict:
    return post_json({"sha256": digest(data), "size": len(data), "content_type": content_type},
                     path="/uploads")


# -- S3: the presigned PUT ------------------------------------------------------------------


@pytest.fixture
def s3(moto_aws):
    client = boto3.client("s3", region_name=MOTO_REGION, config=Config(signature_version="s3v4"))
    client.create_bucket(Bucket="images",
                         CreateBucketConfiguration={"LocationConstraint": MOTO_REGION})
    return client


def test_s3_upload_url_signs_the_key_type_length_checksum_and_expiry(s3):
    lake = S3Lake(s3, "images")
    data = b"\x89PNG not really, but bytes"
    key = "uploads/" + digest(data)
    url = lake.upload_url(key, "image/png", len(data), digest(data), 600)
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert parts.scheme == "https" and parts.path.endswith("/" + key)
    assert query["X-Amz-Expires"] == "600" and query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    # S3 refuses a PUT whose signed headers differ: another length, type or checksum.
    assert set(query["X-Amz-SignedHeaders"].split(";")) >= {
        "content-length", "content-type", "host", "x-amz-checksum-sha256"}
    # The signature covers the method: the GET link of the same key is another signature.
    get_query = parse_qs(urlsplit(lake.url_for(key, 600)).query)
    assert get_query["X-Amz-Signature"] != [query["X-Amz-Signature"]]
    other = parse_qs(urlsplit(lake.upload_url(key, "image/png", len(data) + 1, digest(data),
                                              600)).query)
    assert other["X-Amz-Signature"] != [query["X-Amz-Signature"]]

    lake.put(key, data, "image/png")
    head = s3.head_object(Bucket="images", Key=key)
    assert head["ContentLength"] == len(data) and head["ContentType"] == "image/png"
    assert lake.exists(key) and lake.get(key, max_bytes=len(data)) == data


def test_upload_headers_name_the_checksum_s3_checks():
    data = b"picture"
    headers = upload_headers("image/jpeg", digest(data))
    assert headers == {"Content-Type": "image/jpeg",
                       "x-amz-checksum-sha256": base64.b64encode(
                           hashlib.sha256(data).digest()).decode()}


# -- the local gateway's signed PUT ---------------------------------------------------------


@pytest.fixture
def gateway(tmp_path):
    lake = LocalLake(tmp_path / "lake", b"gateway-key")

    def lake_object(key, exp, sig):
        return (lake.get(key), "image/png") if lake.verify_url(key, exp, sig) else None

    backend = Backend(authorizer=lambda e, c: {}, predict=lambda e, c: {},
                      health=lambda: {"status": "ok"}, lake_object=lake_object, lake=lake)
    server = GatewayServer(("127.0.0.1", 0), GatewayConfig(static_dir=tmp_path, cors_origin="*"),
                           backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, lake
    server.shutdown()
    server.server_close()


def put(server, url: str, data: bytes, headers: dict[str, str],
        method: str = "PUT") -> tuple[int, dict]:
    request = urllib.request.Request(server.url + url, data=data if method == "PUT" else None,
                                     headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            body = reply.read()
            return reply.status, {} if method == "PUT" else {"bytes": body}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_signed_put_stores_exactly_the_picture_and_its_get_link_serves_it(gateway):
    server, lake = gateway
    key = "uploads/" + BIG_SHA
    url = lake.upload_url(key, "image/png", len(BIG), BIG_SHA)
    assert "m=PUT" in url
    assert put(server, url, BIG, upload_headers("image/png", BIG_SHA)) == (200, {})
    assert lake.get(key) == BIG
    assert lake.list("uploads/") == [key]  # no temporary file left beside it
    # The upload link does not read; the lake's GET link does.
    status, refused = put(server, url, b"", {}, method="GET")
    assert status == 403 and refused["error"] == "forbidden"
    assert put(server, lake.url_for(key), b"", {}, method="GET") == (200, {"bytes": BIG})


def refused(server, lake, url: str, data: bytes, headers: dict[str, str]) -> dict:
    status, body = put(server, url, data, headers)
    assert lake.list("") == [], "a refused PUT wrote nothing"
    return {"status": status, "error": body.get("error")}


def test_a_put_with_a_get_link_an_expired_link_or_other_headers_is_403(gateway):
    server, lake = gateway
    data = b"a small picture's bytes"
    sha = digest(data)
    key = "uploads/" + sha
    headers = upload_headers("image/jpeg", sha)
    forbidden = {"status": 403, "error": "forbidden"}
    assert refused(server, lake, lake.url_for(key), data, headers) == forbidden
    expired = lake.upload_url(key, "image/jpeg", len(data), sha, expires=-1)
    assert refused(server, lake, expired, data, headers) == forbidden
    good = lake.upload_url(key, "image/jpeg", len(data), sha)
    assert refused(server, lake, good, data, {**headers, "Content-Type": "image/png"}) == forbidden
    assert refused(server, lake, good, data + b"!", headers) == forbidden  # another length
    unsigned = good.replace("sig=", "sig=0")
    assert refused(server, lake, unsigned, data, headers) == forbidden
    as_get = good.replace("m=PUT&", "")
    assert refused(server, lake, as_get, data, headers) == forbidden


def test_a_put_outside_uploads_is_403_even_when_signed(gateway):
    server, lake = gateway
    data = b"bytes"
    sha = digest(data)
    for key in (f"gallery/{sha}.png", f"incoming/{sha}", "uploads/not-a-digest",
                f"uploads/{sha}/x"):
        url = lake.upload_url(key, "image/png", len(data), sha)
        status = refused(server, lake, url, data, upload_headers("image/png", sha))
        assert status == {"status": 403, "error": "forbidden"}, key


def test_a_put_whose_bytes_are_not_the_checksum_is_400(gateway):
    server, lake = gateway
    signed_for, sent = b"the picture named", b"another picture!!"
    assert len(signed_for) == len(sent)
    sha = digest(signed_for)
    url = lake.upload_url("uploads/" + sha, "image/png", len(sent), sha)
    status = refused(server, lake, url, sent, upload_headers("image/png", sha))
    assert status == {"status": 400, "error": "bad_digest"}


def test_a_put_over_the_picture_limit_is_413_json(gateway):
    server, lake = gateway
    data = bytes(MAX_BYTES + 1)
    sha = digest(data)
    url = lake.upload_url("uploads/" + sha, "image/png", len(data), sha)
    status = refused(server, lake, url, data, upload_headers("image/png", sha))
    assert status == {"status": 413, "error": "too_large"}


def test_a_gateway_without_a_lake_refuses_puts(tmp_path):
    lake = LocalLake(tmp_path / "lake", b"k")
    backend = Backend(authorizer=lambda e, c: {}, predict=lambda e, c: {},
                      health=lambda: {}, lake_object=lambda k, e, s: None)
    server = GatewayServer(("127.0.0.1", 0), GatewayConfig(static_dir=tmp_path, cors_origin="*"),
                           backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sha = digest(b"x")
        url = lake.upload_url("uploads/" + sha, "image/png", 1, sha)
        assert refused(server, lake, url, b"x", upload_headers("image/png", sha)) == {
            "status": 403, "error": "forbidden"}
    finally:
        server.shutdown()
        server.server_close()


# -- the API: POST /uploads, then POST /predict {"key"} ------------------------------------


def test_post_uploads_answers_a_presigned_put_to_the_pictures_content_address(stack):
    _, lake = stack
    before = int(time.time())
    ticket = answer(ticket_for(BIG))
    key = "uploads/" + BIG_SHA
    assert ticket["key"] == key and ticket["method"] == "PUT"
    assert ticket["headers"] == {"Content-Type": "image/png",
                                 "x-amz-checksum-sha256": checksum_header(BIG_SHA)}
    assert ticket["max_bytes"] == MAX_BYTES and ticket["exists"] is False
    assert before + 900 <= ticket["expires_at"] <= int(time.time()) + 900
    parts = urlsplit(ticket["url"])
    assert parts.path == "/lake/" + key
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert lake.verify_upload(key, query, "image/png", len(BIG), checksum_header(BIG_SHA))
    assert not lake.verify_upload(key, query, "image/png", len(BIG) - 1,
                                  checksum_header(BIG_SHA))
    assert not lake.verify_url(key, query["exp"], query["sig"])  # not a GET link


def test_a_picture_over_the_body_limit_is_classified_by_key_after_its_put(stack):
    _, lake = stack
    assert answer(post(BIG), 413)["error"] == "too_large"  # the body route cannot take it
    key = answer(ticket_for(BIG))["key"]
    assert answer(post_json({"key": key}), 404)["error"] == "not_found"  # nothing PUT yet
    lake.put(key, BIG, "image/png")  # what the gateway (or S3) does with the PUT
    by_key = answer(post_json({"key": key}, query={"scope": "all", "neighbors": "3"}))
    assert by_key["sha256"] == BIG_SHA and by_key["label"] in by_key["probabilities"]
    assert len(by_key["neighbors"]) == 3
    by_sha = answer(post_json({"sha256": BIG_SHA}, query={"scope": "all", "neighbors": "3"}))
    assert (by_sha["label"], by_sha["embedding"]) == (by_key["label"], by_key["embedding"])
    assert answer(ticket_for(BIG))["exists"] is True  # asking again: no second PUT needed


def test_a_stored_upload_over_the_picture_limit_is_413_not_read(stack):
    _, lake = stack
    data = bytes(MAX_BYTES + 1)
    key = "uploads/" + digest(data)
    lake.put(key, data)
    error = answer(post_json({"key": key}), 413)
    assert error["error"] == "too_large" and f"{MAX_BYTES:,}" in error["message"]


@pytest.mark.parametrize(
    ("document", "status", "code"),
    [
        ({"size": 10}, 400, "bad_sha256"),
        ({"sha256": "x" * 64, "size": 10}, 400, "bad_sha256"),
        ({"sha256": "a" * 64}, 400, "bad_upload"),
        ({"sha256": "a" * 64, "size": 0}, 400, "bad_upload"),
        ({"sha256": "a" * 64, "size": True}, 400, "bad_upload"),
        ({"sha256": "a" * 64, "size": "10"}, 400, "bad_upload"),
        ({"sha256": "a" * 64, "size": MAX_BYTES + 1}, 413, "too_large"),
        ({"sha256": "a" * 64, "size": 10, "content_type": "text/html"}, 400, "bad_upload"),
        ({"sha256": "a" * 64, "size": 10, "content_type": "image/png\r\nX: y"}, 400,
         "bad_upload"),
        ([], 400, "bad_upload"),
    ],
)
def test_bad_upload_requests_are_4xx_json(stack, document, status, code):
    error = answer(post_json(document, path="/uploads"), status)
    assert error["error"] == code and error["message"]


def test_upload_request_needs_json_and_no_query(stack):
    assert answer(call("POST", "/uploads", body="{", headers={
        "Content-Type": "application/json"}), 400)["error"] == "bad_json"
    assert answer(post_json({"sha256": "a" * 64, "size": 1}, path="/uploads",
                            query={"x": "1"}), 400)["error"] == "bad_query"
    default = answer(post_json({"sha256": "a" * 64, "size": 1}, path="/uploads"))
    assert default["headers"]["Content-Type"] == "application/octet-stream"
    assert default["key"] == "uploads/" + "a" * 64 and default["exists"] is False


def test_predict_by_key_accepts_gallery_and_upload_keys_only(stack):
    for key in ("uploads/" + "A" * 64, "uploads/put/" + "a" * 32, "uploads/" + "a" * 64 + "/x",
                "rejected/" + "a" * 64):
        assert answer(post_json({"key": key}), 400)["error"] == "bad_key", key
