"""A picture over API Gateway's body limit, end to end on the real local stack (issue 12,
Bodies): POST /uploads -> PUT the bytes to the presigned URL -> POST /predict {"key"}, with a
bearer token over plain HTTP and with a signed key through `python -m client predict`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from urllib.parse import urljoin

import pytest

from artlens.api.events import MAX_BODY_BYTES
from bench.stress import REPO_ROOT, local_stack, stack_env
from tests.integration.test_uploads import big_png


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_card):
    with local_stack(tmp_path_factory.mktemp("uploads_stack"), tiny_model_card) as running:
        yield running


def http(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            raw = reply.read()
            return reply.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_large_picture_goes_up_by_put_and_is_classified_by_key(stack):
    data = big_png(11)
    sha = hashlib.sha256(data).hexdigest()
    bearer = {"Authorization": f"Bearer {stack.token}"}
    status, refused = http("POST", f"{stack.base_url}/predict", data,
                           {**bearer, "Content-Type": "image/png"})
    assert (status, refused["error"]) == (413, "too_large")

    status, ticket = http(
        "POST", f"{stack.base_url}/uploads",
        json.dumps({"sha256": sha, "size": len(data), "content_type": "image/png"}).encode(),
        {**bearer, "Content-Type": "application/json"},
    )
    assert status == 200, ticket
    assert ticket["key"] == f"uploads/{sha}" and ticket["exists"] is False
    status, _ = http("POST", f"{stack.base_url}/uploads", b"{}",
                     {"Content-Type": "application/json"})
    assert status == 401  # authenticated like /predict

    put_url = urljoin(stack.base_url + "/", ticket["url"])
    assert http("PUT", put_url, data[:-1] + b"\0", ticket["headers"])[0] == 400  # bad digest
    assert http("PUT", put_url, data, ticket["headers"]) == (200, {})
    assert (stack.state_dir / "lake" / ticket["key"]).read_bytes() == data

    status, answer = http("POST", f"{stack.base_url}/predict?scope=all&neighbors=2",
                          json.dumps({"key": ticket["key"]}).encode(),
                          {**bearer, "Content-Type": "application/json"})
    assert status == 200, answer
    assert answer["sha256"] == sha and answer["label"] in answer["probabilities"]


def test_the_cli_predicts_a_file_over_the_body_limit(stack, tmp_path):
    done = stack.run("client.keys", "--json", "issue", "--name", "uploads")
    assert done.returncode == 0, done.stderr
    key = json.loads(done.stdout)
    picture = tmp_path / "large.png"
    picture.write_bytes(big_png(12))
    assert picture.stat().st_size > MAX_BODY_BYTES
    env = stack_env({"ARTLENS_URL": stack.base_url, "ARTLENS_KEY_ID": key["key_id"],
                     "ARTLENS_KEY_SECRET": key["secret"], "ARTLENS_CONFIG": str(tmp_path / "no")})
    for _ in range(2):  # the second time the service holds the picture: no second PUT
        one = subprocess.run([sys.executable, "-m", "client", "predict", str(picture)],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert one.returncode == 0, one.stderr
        answer = json.loads(one.stdout)
        assert answer["sha256"] == hashlib.sha256(picture.read_bytes()).hexdigest()
        assert answer["label"] in answer["probabilities"]
    assert (stack.state_dir / "lake" / f"uploads/{answer['sha256']}").is_file()
    assert key["secret"] not in one.stdout + one.stderr
