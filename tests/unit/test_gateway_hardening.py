"""The local gateway under hostile connections (issue 13): stalled and half-open connections,
oversized request lines and headers, secrets in query strings, events Lambda would refuse, and
the authorizer's documented refusal codes. A real GatewayServer on a real socket; the backend
is a recording stand-in (the real handlers are exercised by tests/e2e)."""

from __future__ import annotations

import json
import logging
import socket
import threading

import pytest

from local_stack.gateway import Backend, GatewayConfig, GatewayServer, redact

ALLOW = {
    "principalId": "dev",
    "policyDocument": {"Version": "2012-10-17", "Statement": [{
        "Action": "execute-api:Invoke", "Effect": "Allow",
        "Resource": "arn:aws:execute-api:local:000000000000:artlens/local/*/*"}]},
    "context": {"sub": "dev", "scheme": "bearer"},
}


class Recorder:
    def __init__(self):
        self.events: list[dict] = []
        self.policy: dict = ALLOW

    def authorizer(self, event, context):
        return self.policy

    def predict(self, event, context):
        self.events.append(event)
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
                "body": json.dumps({"path": event["path"]})}


@pytest.fixture
def gateway(tmp_path):
    recorder = Recorder()
    backend = Backend(authorizer=recorder.authorizer, predict=recorder.predict,
                      health=lambda: {"status": "ok"}, lake_object=lambda k, e, s: None)
    server = GatewayServer(("127.0.0.1", 0), GatewayConfig(static_dir=tmp_path, cors_origin="*"),
                           backend, read_timeout_s=0.5)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.recorder = recorder
    yield server
    server.shutdown()
    server.server_close()


def connect(server) -> socket.socket:
    sock = socket.create_connection(server.server_address[:2], timeout=20)
    return sock


def exchange(server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(server) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_a_short_body_is_answered_408_json_and_the_connection_closed(gateway):
    status, headers, body = exchange(
        gateway, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b")
    assert status == 408 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "request_timeout"
    assert gateway.recorder.events == []  # the handler never saw half a picture


def test_half_open_connections_are_closed_not_held(gateway):
    """Each stalled connection holds a thread until its read times out; then it is closed."""
    stalled = [connect(gateway) for _ in range(40)]
    for sock in stalled:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    for sock in stalled:
        assert sock.recv(65536) == b""  # closed by the server (the 20 s socket timeout guards)
        sock.close()
    health = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, _, _ = exchange(gateway, health)
    assert status == 200


def test_a_body_ended_early_by_the_client_is_400(gateway):
    with connect(gateway) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")
    assert json.loads(data.partition(b"\r\n\r\n")[2])["error"] == "incomplete_body"


@pytest.mark.parametrize("raw,status,code", [
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n", 431,
     "headers_too_large"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(120)) + b"\r\n", 431,
     "headers_too_large"),
    (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
])
def test_the_standard_librarys_refusals_are_json(gateway, raw, status, code):
    got, headers, body = exchange(gateway, raw)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == code


def test_tokens_and_lake_signatures_never_reach_the_access_log(gateway, caplog):
    caplog.set_level(logging.INFO, logger="local_stack.gateway")
    exchange(gateway, b"GET /lake/gallery/a.jpg?exp=99&sig=SIGSECRET HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
    exchange(gateway, b"GET /map?limit=5&access_token=TOKSECRET HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "/lake/gallery/a.jpg?exp=99&sig=***" in text and "limit=5&access_token=***" in text
    assert "SIGSECRET" not in text and "TOKSECRET" not in text


def test_redact_keeps_harmless_parameters():
    assert redact('"POST /predict?neighbors=3&scope=all&token=x HTTP/1.1" 200 -') == (
        '"POST /predict?neighbors=3&scope=all&token=*** HTTP/1.1" 200 -')


def test_a_body_whose_lambda_event_would_pass_6_mb_is_413_json(gateway):
    body = b"\xff" * (4_800_000)  # under the 10 MB API limit, over 6 MB once base64-encoded
    status, headers, answer = exchange(
        gateway, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert status == 413 and json.loads(answer)["error"] == "too_large"
    assert gateway.recorder.events == []
    small = b"\xff" * 4_000_000
    status, _, _ = exchange(
        gateway, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(small) + small)
    assert status == 200


def test_a_deny_with_a_documented_code_is_401_with_that_code(gateway):
    gateway.recorder.policy = {
        "principalId": "denied",
        "policyDocument": {"Version": "2012-10-17", "Statement": [{
            "Action": "execute-api:Invoke", "Effect": "Deny",
            "Resource": "arn:aws:execute-api:local:000000000000:artlens/local/POST/predict"}]},
        "context": {"error": "stale_request", "message": "check the clock"},
    }
    status, _, body = exchange(gateway, b"POST /predict HTTP/1.1\r\nHost: x\r\n"
                                        b"Connection: close\r\nContent-Length: 0\r\n\r\n")
    assert status == 401 and json.loads(body)["error"] == "stale_request"


@pytest.mark.parametrize("method,path", [("GET", "/whoami"), ("POST", "/preview")])
def test_whoami_and_preview_go_through_the_authorizer_to_predict(gateway, method, path):
    raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    status, _, body = exchange(gateway, raw.encode())
    assert status == 200 and json.loads(body)["path"] == path
    preflight = f"OPTIONS {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, headers, _ = exchange(gateway, preflight.encode())
    assert status == 204 and "access-control-allow-methods" in headers
