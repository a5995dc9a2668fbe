"""`python -m client` and ArtLensClient under throttling: a 429 is sent again after the
answer's Retry-After (else a doubling wait), each time signed afresh (a resent signature would
be a replay), a bounded number of times; other errors are never retried."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from artlens.auth.signing import NONCE_HEADER
from client.signer import MAX_RETRY_WAIT_S, ApiError, ArtLensClient


class Script:
    """The answers to give, in order (status, Retry-After or None), then 200."""

    def __init__(self, answers: list[tuple[int, str | None]]):
        self.answers = list(answers)
        self.nonces: list[str] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            script.nonces.append(self.headers.get(NONCE_HEADER, ""))
            status, retry_after = script.answers.pop(0) if script.answers else (200, None)
            body = json.dumps({"ok": True} if status == 200 else
                              {"error": "too_many_requests" if status == 429 else "bad",
                               "message": "..."}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def client_for(url: str, waits: list[float], retries: int = 4) -> ArtLensClient:
    client = ArtLensClient(url, "key-id", "secret", timeout=5, retries=retries)
    client.sleep = waits.append
    return client


def test_a_throttled_request_is_retried_after_retry_after_and_signed_afresh(server):
    url, script = server
    script.answers = [(429, "2"), (429, "0.25")]
    waits: list[float] = []
    assert client_for(url, waits).predict(b"picture") == {"ok": True}
    assert waits == [2.0, 0.25]
    assert len(script.nonces) == 3 and len(set(script.nonces)) == 3  # never a replayed nonce


def test_without_retry_after_the_wait_doubles_and_a_huge_one_is_capped(server):
    url, script = server
    script.answers = [(429, None), (429, "junk"), (429, "86400")]
    waits: list[float] = []
    assert client_for(url, waits).predict(b"picture") == {"ok": True}
    assert waits == [0.5, 1.0, MAX_RETRY_WAIT_S]


def test_retries_run_out_with_the_429_and_other_errors_are_not_retried(server):
    url, script = server
    script.answers = [(429, "0")] * 3
    waits: list[float] = []
    with pytest.raises(ApiError) as raised:
        client_for(url, waits, retries=2).predict(b"picture")
    assert raised.value.status == 429 and raised.value.retry_after == 0.0
    assert len(script.nonces) == 3 and waits == [0.0, 0.0]

    script.nonces.clear()
    script.answers = [(400, None)]
    with pytest.raises(ApiError) as raised:
        client_for(url, waits).predict(b"picture")
    assert raised.value.status == 400 and len(script.nonces) == 1
