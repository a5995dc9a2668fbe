"""Signed requests through the real local stack (gateway -> authorizer -> predict handler), with
keys issued and revoked live by `python -m client.keys`, and the nonce ledger in PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote, urlencode, urlsplit

import psycopg2
import pytest

from artlens.auth.keys import FileKeys, issue_key
from artlens.auth.replay import PostgresNonces
from artlens.auth.signing import SignedRequests, sign_request, verify_signed_body
from artlens.errors import Unauthorized
from artlens.index.database import Database
from artlens.index.embeddings import EmbeddingStore
from bench.stress import REPO_ROOT, LocalStackProcess, local_stack, stack_env
from client import ApiError, ArtLensClient
from tests.imagegen import jpeg_bytes

PICTURE = jpeg_bytes(601)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_card):
    with local_stack(tmp_path_factory.mktemp("signed_stack"), tiny_model_card) as running:
        STACK_URL[0] = running.base_url
        yield running


def issue(stack: LocalStackProcess, name: str) -> dict:
    done = stack.run("client.keys", "--json", "issue", "--name", name)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def key(stack) -> dict:
    return issue(stack, "integration")


def post(stack, headers: dict, body: bytes, query: dict | None = None) -> tuple[int, dict]:
    url = f"{stack.base_url}/predict"
    if query:
        url += "?" + urlencode(query, quote_via=quote)
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "image/jpeg", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def signed(key: dict, body: bytes, query: dict | None = None, **kwargs) -> dict:
    host = kwargs.pop("host", None) or urlsplit(STACK_URL[0]).netloc
    return sign_request(key["key_id"], key["secret"], "POST", "/predict",
                        list((query or {}).items()), body, host=host,
                        content_type="image/jpeg", **kwargs)


STACK_URL: list[str] = [""]  # the module's stack, for the Host the signatures cover


def test_a_signed_request_is_classified_by_the_client_library(stack, key):
    client = ArtLensClient(stack.base_url, key["key_id"], key["secret"])
    answer = client.predict(PICTURE, content_type="image/jpeg", neighbors=2, scope="all")
    assert answer["label"] in answer["probabilities"]
    assert answer["model_version"]


def test_the_cli_predicts_a_file_and_summarizes_a_folder(stack, key, tmp_path):
    (tmp_path / "one.jpg").write_bytes(PICTURE)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "two.jpg").write_bytes(jpeg_bytes(602))
    env = stack_env({"ARTLENS_URL": stack.base_url, "ARTLENS_KEY_ID": key["key_id"],
                     "ARTLENS_KEY_SECRET": key["secret"], "ARTLENS_CONFIG": str(tmp_path / "no")})
    one = subprocess.run([sys.executable, "-m", "client", "predict", str(tmp_path / "one.jpg")],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["label"]
    folder = subprocess.run([sys.executable, "-m", "client", "upload", str(tmp_path), "--json"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert folder.returncode == 0, folder.stderr
    lines = [json.loads(line) for line in folder.stdout.splitlines()]
    assert sorted(line["file"] for line in lines[:-1]) == ["one.jpg", "sub/two.jpg"]
    assert lines[-1]["classified"] == 2 and lines[-1]["failed"] == 0
    assert key["secret"] not in one.stdout + one.stderr + folder.stdout + folder.stderr


def test_a_body_other_than_the_signed_one_is_refused(stack, key):
    headers = signed(key, PICTURE)
    status, body = post(stack, headers, jpeg_bytes(603))
    assert (status, body["error"]) == (401, "body_hash_mismatch")


def test_a_stale_timestamp_is_refused_with_the_documented_code(stack, key):
    status, body = post(stack, signed(key, PICTURE, now=time.time() - 301), PICTURE)
    assert (status, body["error"]) == (401, "stale_request")
    status, _ = post(stack, signed(key, PICTURE, now=time.time() + 400), PICTURE)
    assert status == 401


def test_a_replayed_request_is_refused(stack, key):
    headers = signed(key, PICTURE)
    assert post(stack, headers, PICTURE)[0] == 200
    assert post(stack, headers, PICTURE)[0] == 401
    # The ledger of record is the database, so another authorizer container would refuse too.
    dsn = json.loads((stack.state_dir / "stack.json").read_text())["dsn"]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM request_nonces WHERE key_id = %s AND nonce = %s",
                    (key["key_id"], headers["X-ArtLens-Nonce"]))
        assert cur.fetchone()[0] == 1


def test_a_tampered_query_is_refused(stack, key):
    headers = signed(key, PICTURE, {"neighbors": "1"})
    assert post(stack, headers, PICTURE, {"neighbors": "20"})[0] == 401
    assert post(stack, headers, PICTURE, {"neighbors": "1", "scope": "all"})[0] == 401
    assert post(stack, headers, PICTURE, {"neighbors": "1"})[0] == 200


def test_a_revoked_key_is_refused_without_a_restart(stack):
    fresh = issue(stack, "short-lived")
    deadline = time.monotonic() + 10
    while post(stack, signed(fresh, PICTURE), PICTURE)[0] != 200:  # key cache TTL: 2 s locally
        assert time.monotonic() < deadline, "a newly issued key was never accepted"
        time.sleep(0.3)
    revoked = stack.run("client.keys", "revoke", fresh["key_id"])
    assert revoked.returncode == 0, revoked.stderr
    assert fresh["secret"] not in revoked.stdout + revoked.stderr
    deadline = time.monotonic() + 10
    while post(stack, signed(fresh, PICTURE), PICTURE)[0] != 401:
        assert time.monotonic() < deadline, "a revoked key was still accepted after 10 s"
        time.sleep(0.3)
    listed = stack.run("client.keys", "--json", "list")
    entries = {k["key_id"]: k for k in json.loads(listed.stdout)}
    assert entries[fresh["key_id"]]["revoked"] and "secret" not in listed.stdout
    key_file = stack.state_dir / "api_keys.json"
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"


def test_bearer_tokens_still_work_beside_signatures(stack):
    assert post(stack, {"Authorization": f"Bearer {stack.token}"}, PICTURE)[0] == 200


def test_a_wrong_host_or_unsigned_content_type_is_refused(stack, key):
    # Signed for another deployment's host, sent here (urllib writes the real Host).
    headers = signed(key, PICTURE, host="other-deployment.example")
    del headers["Host"]
    assert post(stack, headers, PICTURE)[0] == 401
    headers = signed(key, PICTURE)
    headers["X-ArtLens-Signed-Headers"] = "host"  # Content-Type sent but not signed
    assert post(stack, headers, PICTURE)[0] == 401


def test_two_containers_share_the_nonce_ledger(pg_dsn, tmp_path):
    """Two predict containers with their own connections: a signed request is served once."""
    key = issue_key(FileKeys(tmp_path / "api_keys.json"), "shared")
    headers = sign_request(key.key_id, key.secret, "GET", "/map", [], b"", host="api.example")
    event = {"httpMethod": "GET", "path": "/map", "headers": headers, "body": "",
             "requestContext": {"authorizer": {"scheme": "hmac", "sub": key.key_id}}}
    EmbeddingStore(pg_dsn).migrate()  # the ledger's table is a migration (sql/002_...)
    environ = {"API_KEYS_FILE": str(tmp_path / "api_keys.json")}
    first, second = (SignedRequests.from_env(PostgresNonces(Database(pg_dsn)), environ)
                     for _ in range(2))
    verify_signed_body(event, first)
    with pytest.raises(Unauthorized) as refused:
        verify_signed_body(event, second)
    assert refused.value.code == "replayed_request"


def test_the_client_raises_typed_errors(stack, key):
    client = ArtLensClient(stack.base_url, key["key_id"], "not-the-secret")
    with pytest.raises(ApiError) as refused:
        client.predict(PICTURE)
    assert refused.value.status == 401


def test_the_predict_handler_verifies_every_signed_request_under_a_cached_context(
    pg_dsn, tiny_model_card, tmp_path, monkeypatch
):
    """Issue 13, as reproduced: the real predict handler receives the authorizer context API
    Gateway cached for a captured Authorization header, with everything else forged."""
    import base64

    from artlens.auth.keys import revoke_key
    from lambdas import predict
    from local_stack.events import LambdaContext

    keys = FileKeys(tmp_path / "api_keys.json")
    key = issue_key(keys, "victim")
    for name, value in {
        "MODEL_CARD_PATH": str(tiny_model_card), "DATABASE_URL": pg_dsn,
        "LOCAL_LAKE_DIR": str(tmp_path / "lake"), "LOCAL_URL_KEY": "u" * 32,
        "API_KEYS_FILE": str(tmp_path / "api_keys.json"), "API_KEYS_TTL_S": "0",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("IMAGES_BUCKET", raising=False)
    EmbeddingStore(pg_dsn).migrate()
    predict.reset()

    def call(headers: dict, body: bytes, method: str = "POST", path: str = "/predict") -> dict:
        event = {
            "resource": path, "path": path, "httpMethod": method, "headers": headers,
            "body": base64.b64encode(body).decode(), "isBase64Encoded": True,
            "requestContext": {"path": f"/prod{path}", "requestId": "r",
                               "authorizer": {"scheme": "hmac", "sub": key.key_id,
                                              "principalId": key.key_id}},
        }
        response = predict.handler(event, LambdaContext("artlens-predict"))
        return {"status": response["statusCode"], **json.loads(response["body"])}

    def sign(body: bytes, **kwargs) -> dict:
        return sign_request(key.key_id, key.secret, "POST", "/predict", [], body,
                            host="api.example", content_type="image/jpeg", **kwargs)

    try:
        captured = sign(PICTURE)
        other = jpeg_bytes(604)
        attacks = {
            "another body": (
                {**captured, "X-ArtLens-Content-SHA256": hashlib.sha256(other).hexdigest()},
                other, "POST", "/predict"),
            "another route": (captured, b"", "GET", "/map"),
            "own nonce": ({**captured, "X-ArtLens-Nonce": "attacker-nonce-0123456789"},
                          PICTURE, "POST", "/predict"),
            "timestamp 1": ({**captured, "X-ArtLens-Timestamp": "1"}, PICTURE, "POST",
                            "/predict"),
        }
        for name, (headers, body, method, path) in attacks.items():
            answer = call(headers, body, method, path)
            assert answer["status"] == 401, (name, answer)
        assert call({**captured, "X-ArtLens-Timestamp": "1"}, PICTURE)["error"] == "stale_request"
        assert call(captured, PICTURE)["status"] == 200  # the request itself, once
        assert call(captured, PICTURE)["error"] == "replayed_request"

        revoke_key(keys, key.key_id)  # API_KEYS_TTL_S=0: the bound is the next request
        answer = call(sign(PICTURE), PICTURE)
        assert (answer["status"], answer["error"]) == (401, "bad_key")
    finally:
        predict.reset()
