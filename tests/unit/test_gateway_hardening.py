"""The local gateway under hostile connections (issue 13): stalled and half-open connections,
slow header drips, oversized request lines and headers, secrets in query strings, events Lambda
would refuse, the authorizer's documented refusal codes, one caller's fair share of predict, and
the cache headers of signed lake URLs. A real GatewayServer on a real socket; the backend is a
recording stand-in (the real handlers are exercised by tests/e2e)."""

from __future__ import annotations

import hashlib
import json
import logging
import select
import socket
import threading
import time

import pytest

from artlens.lake import LocalLake
from local_stack.gateway import (
    Backend,
    FairShare,
    GatewayConfig,
    GatewayServer,
    Throttled,
    redact,
)

ALLOW = {
    "principalId": "dev",
    "policyDocument": {"Version": "2012-10-17", "Statement": [{
        "Action": "execute-api:Invoke", "Effect": "Allow",
        "Resource": "arn:aws:execute-api:local:000000000000:artlens/local/*/*"}]},
    "context": {"sub": "dev", "scheme": "bearer"},
}


class Recorder:
    """Authorizer and predict stand-ins. The caller is the Authorization header (principalId);
    predict computes until `hold[caller]` is set when there is one, so a test can keep a turn
    busy and charged (the fair share charges CPU time, as a costly decode would use)."""

    def __init__(self):
        self.events: list[dict] = []
        self.policy: dict | None = None
        self.hold: dict[str, threading.Event] = {}

    def authorizer(self, event, context):
        if self.policy is not None:
            return self.policy
        caller = (event.get("headers") or {}).get("Authorization") or "dev"
        return {**ALLOW, "principalId": caller}

    def predict(self, event, context):
        self.events.append(event)
        caller = event["requestContext"]["authorizer"]["principalId"]
        if caller in self.hold:
            deadline = time.monotonic() + 30
            while not self.hold[caller].is_set() and time.monotonic() < deadline:
                sum(range(1000))
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
                "body": json.dumps({"path": event["path"], "caller": caller})}


@pytest.fixture
def start_gateway(tmp_path):
    servers = []

    def start(lake_object=lambda k, e, s: None, **options) -> GatewayServer:
        recorder = Recorder()
        backend = Backend(authorizer=recorder.authorizer, predict=recorder.predict,
                          health=lambda: {"status": "ok"}, lake_object=lake_object)
        options.setdefault("read_timeout_s", 0.5)
        server = GatewayServer(("127.0.0.1", 0),
                               GatewayConfig(static_dir=tmp_path, cors_origin="*"), backend,
                               **options)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        server.recorder = recorder
        servers.append(server)
        return server

    yield start
    for server in servers:
        for event in server.recorder.hold.values():
            event.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def gateway(start_gateway):
    return start_gateway()


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


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    """One whole answer on a kept-alive connection (head, then Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_half_open_connections_are_answered_408_and_closed(gateway):
    """A stalled head is answered 408 JSON once it has been silent read_timeout_s, then closed
    (the 20 s client socket timeout guards against a server that never closes)."""
    stalled = [connect(gateway) for _ in range(40)]
    for sock in stalled:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    for sock in stalled:
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
        sock.close()
    health = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, _, _ = exchange(gateway, health)
    assert status == 200
    assert gateway.open_connections == 0


def test_a_header_drip_is_cut_off_at_the_total_header_deadline(start_gateway):
    """Slowloris: one byte every 0.1 s never leaves the connection silent for read_timeout_s
    (2 s), so only a deadline on the whole head ends it. Dripping stops at 400 bytes (40 s);
    without the deadline the server would still be reading then."""
    gateway = start_gateway(read_timeout_s=2.0, header_timeout_s=1.0)
    sent, answer = 0, b""
    with connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Drip: ")
        while sent < 400:
            if select.select([sock], [], [], 0.1)[0]:
                answer = read_all(sock)
                break
            try:
                sock.sendall(b"a")
            except OSError:  # reset: closed before our byte
                break
            sent += 1
    assert sent < 400, "the server never cut off the drip"
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"


def test_a_body_drip_is_cut_off_at_the_body_deadline(start_gateway):
    """The body too has a total deadline (read_timeout_s + length / MIN_BODY_RATE: here about
    2 s for 1,000 bytes); one byte every 0.1 s would otherwise hold the worker for 100 s."""
    gateway = start_gateway(read_timeout_s=2.0)
    sent, answer = 0, b""
    with connect(gateway) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        while sent < 400:
            if select.select([sock], [], [], 0.1)[0]:
                answer = read_all(sock)
                break
            try:
                sock.sendall(b"a")
            except OSError:
                break
            sent += 1
    assert sent < 400, "the server never cut off the drip"
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert gateway.recorder.events == []


def test_many_half_open_connections_hold_no_thread_and_block_no_request(start_gateway):
    """50 connections that never finish their headers (the issue's 300, lighter) and 8 idle
    kept-alive ones wait in the selector: the workers stay at most 4 threads and a normal
    request is answered at once. (A thread per connection would start 58 threads; workers that
    waited on those connections would leave none for the request.)"""
    gateway = start_gateway(read_timeout_s=30.0, header_timeout_s=30.0, workers=4)
    threads_before = threading.active_count()
    half_open = [connect(gateway) for _ in range(50)]
    for sock in half_open:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
    idle = [connect(gateway) for _ in range(8)]
    for sock in idle:  # one whole request each, then silence on a kept-alive connection
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    try:
        status, _, body = exchange(
            gateway, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 200 and json.loads(body) == {"status": "ok"}
        assert threading.active_count() - threads_before <= 4
        assert gateway.workers.threads <= 4
        assert gateway.open_connections == 58
    finally:
        for sock in half_open + idle:
            sock.close()


def test_a_kept_alive_connection_serves_requests_in_turn_and_pipelined(gateway):
    with connect(gateway) as sock:
        for _ in range(3):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_all(sock).count(b"HTTP/1.1 200 ") == 2


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


# -- fair share of predict per caller -------------------------------------------------------


def wait_until(condition, what: str) -> None:
    """Poll for a state the other threads reach (a hang guard, not a timing assertion)."""
    for _ in range(2000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"never reached: {what}")


def turn_taker(share: FairShare, now: list[float], order: list[str]):
    """A request of `caller` that takes a turn, records it in `order`, waits for `hold` if
    given, and costs `cost` seconds of the shared clock `now`."""

    def request(caller: str, cost: float, hold: threading.Event | None = None) -> None:
        with share.turn(caller):
            order.append(caller)
            if hold:
                hold.wait(30)
            now[0] += cost

    return request


def test_the_next_turn_goes_to_the_caller_who_used_the_least_time():
    """A caller whose request took 10 s waits behind callers who queued after it: turns are
    shared by seconds used, not by arrival. (First come, first served would run h first.)"""
    now = [0.0]
    # No anticipation here (this clock stands still between requests; see the next test).
    share = FairShare(clock=lambda: now[0], cost_clock=lambda: now[0], anticipate_s=0)
    order: list[str] = []
    go = threading.Event()
    request = turn_taker(share, now, order)

    first = threading.Thread(target=request, args=("h", 10.0, go))
    first.start()
    wait_until(lambda: order == ["h"], "h runs")
    queued = []
    for caller in ("h", "a", "b"):  # h queues first
        thread = threading.Thread(target=request, args=(caller, 0.01))
        thread.start()
        queued.append(thread)
        wait_until(lambda c=caller: share.waiting(c) == 1, f"{caller} waits")
    go.set()
    for thread in [first, *queued]:
        thread.join(30)
    assert order == ["h", "a", "b", "h"]


def test_a_free_turn_waits_briefly_for_a_caller_who_is_behind():
    """A client sends its next request only after the last answer: between the two, the
    caller who is ahead (h, a 1 s request done, another queued) must not get the free turn,
    or it would get turns by count. The turn waits for a (behind, back within anticipate_s);
    once a's time is up without a request, h goes. Work-conserving order: h, a, h, a."""
    now = [0.0]
    share = FairShare(clock=lambda: now[0], cost_clock=lambda: now[0], lead_s=0.1,
                      anticipate_s=0.05)
    order: list[str] = []
    go = threading.Event()
    request = turn_taker(share, now, order)

    first = threading.Thread(target=request, args=("h", 1.0, go))
    first.start()
    wait_until(lambda: order == ["h"], "h runs")
    a1 = threading.Thread(target=request, args=("a", 0.01))
    a1.start()
    wait_until(lambda: share.waiting("a") == 1, "a waits")
    h2 = threading.Thread(target=request, args=("h", 1.0))
    h2.start()
    wait_until(lambda: share.waiting("h") == 1, "h waits again")
    go.set()
    first.join(30)
    a1.join(30)
    assert order == ["h", "a"] and share.waiting("h") == 1  # the turn is kept for a
    assert share.anticipated >= 1
    a2 = threading.Thread(target=request, args=("a", 0.01))  # a's next request
    a2.start()
    a2.join(30)
    assert order == ["h", "a", "a"]
    now[0] += 1.0  # a's time to come back is up: h may go
    h2.join(30)
    assert order == ["h", "a", "a", "h"]


def test_a_caller_past_its_share_is_throttled_and_others_are_not():
    share = FairShare(queued_per_caller=2)
    go = threading.Event()
    inside = threading.Event()
    results: list[str] = []

    def request(caller: str) -> None:
        try:
            with share.turn(caller):
                inside.set()
                go.wait(30)
            results.append(f"{caller} ok")
        except Throttled as throttled:
            results.append(f"{caller} throttled {throttled.retry_after_s}")

    threads = [threading.Thread(target=request, args=("h",))]
    threads[0].start()
    wait_until(inside.is_set, "h runs")
    for _ in range(2):
        threads.append(threading.Thread(target=request, args=("h",)))
        threads[-1].start()
    wait_until(lambda: share.waiting("h") == 2, "h's queue is full")
    # 1 running + 2 waiting: the 4th is refused
    with pytest.raises(Throttled) as refused, share.turn("h"):
        pass
    assert refused.value.retry_after_s >= 1
    threads.append(threading.Thread(target=request, args=("a",)))  # another caller still waits
    threads[-1].start()
    wait_until(lambda: share.waiting("a") == 1, "a waits")
    go.set()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == ["a ok", "h ok", "h ok", "h ok"]
    assert share.throttled == {"h": 1}


def test_the_gateway_answers_429_past_a_callers_share_and_serves_other_callers_first(
        start_gateway):
    """One caller with seven requests at once beside another caller with one: the first gets
    one turn, four waiting places and two 429s with Retry-After; the other is served next,
    before the first caller's queue."""
    gateway = start_gateway(read_timeout_s=30.0)
    recorder = gateway.recorder
    recorder.hold["hostile"] = threading.Event()
    answers: dict[str, list] = {"hostile": [], "normal": []}

    def post(caller: str) -> None:
        raw = (f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: {caller}\r\n"
               "Connection: close\r\nContent-Length: 0\r\n\r\n").encode()
        answers[caller].append(exchange(gateway, raw))

    threads = [threading.Thread(target=post, args=("hostile",)) for _ in range(7)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(answers["hostile"]) == 2, "two 429s")
    assert [status for status, _, _ in answers["hostile"]] == [429, 429]
    for _, headers, body in answers["hostile"]:
        assert int(headers["retry-after"]) >= 1
        assert json.loads(body)["error"] == "too_many_requests"
        assert headers["access-control-allow-origin"] == "*"
    normal = threading.Thread(target=post, args=("normal",))
    normal.start()
    wait_until(lambda: gateway.ready_backend.fair_share.waiting("bearer:normal") == 1,
               "normal waits")
    recorder.hold["hostile"].set()
    for thread in [*threads, normal]:
        thread.join(30)
    callers = [e["requestContext"]["authorizer"]["principalId"] for e in recorder.events]
    assert callers == ["hostile", "normal", "hostile", "hostile", "hostile", "hostile"]
    assert sorted(status for status, _, _ in answers["hostile"]) == [200] * 5 + [429] * 2
    assert [status for status, _, _ in answers["normal"]] == [200]


# -- signed lake URLs: browsers may cache them until they expire ----------------------------


def lake_gateway(start_gateway, tmp_path, clock=time.time):
    lake = LocalLake(tmp_path / "lake", b"url-key", clock=clock)
    lake.put("renditions/a.jpg", b"\xff\xd8 picture bytes", "image/jpeg")

    def lake_object(key, exp, sig):
        return (lake.get(key), "image/jpeg") if lake.verify_url(key, exp, sig) else None

    return start_gateway(lake_object=lake_object), lake


def get(gateway, url: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    extra = "".join(f"{header}\r\n" for header in headers)
    return exchange(gateway, f"GET {url} HTTP/1.1\r\nHost: x\r\n{extra}"
                             "Connection: close\r\n\r\n".encode())


def test_a_signed_lake_url_may_be_cached_until_it_expires_and_revalidated(
        start_gateway, tmp_path):
    gateway, lake = lake_gateway(start_gateway, tmp_path)
    url = lake.url_for("renditions/a.jpg", expires=3600).removeprefix(lake.base_url)
    status, headers, body = get(gateway, url)
    assert status == 200 and body == b"\xff\xd8 picture bytes"
    exp = int(url.split("exp=")[1].split("&")[0])
    directive, max_age = headers["cache-control"].split(", max-age=")
    assert directive == "private"
    assert exp - time.time() - 60 <= int(max_age) <= exp - time.time() + 1
    etag = headers["etag"]
    assert etag == f'"{hashlib.sha256(body).hexdigest()}"'

    status, again, body = get(gateway, url, f"If-None-Match: {etag}")
    assert status == 304 and body == b""
    assert again["etag"] == etag and again["cache-control"] == headers["cache-control"]
    status, _, body = get(gateway, url, 'If-None-Match: "another", W/' + etag)
    assert status == 304
    status, _, body = get(gateway, url, 'If-None-Match: "another"')
    assert status == 200 and body == b"\xff\xd8 picture bytes"


def test_a_lake_url_at_its_expiry_is_not_cached_and_a_bad_one_gets_no_cache_headers(
        start_gateway, tmp_path):
    # The lake's clock runs a minute behind the gateway's: its URL is still valid to the lake
    # but expired by the gateway's clock, so max-age is 0, never negative.
    gateway, lake = lake_gateway(start_gateway, tmp_path, clock=lambda: time.time() - 60)
    url = lake.url_for("renditions/a.jpg", expires=10).removeprefix(lake.base_url)
    status, headers, _ = get(gateway, url)
    assert status == 200 and headers["cache-control"] == "private, max-age=0"
    status, headers, body = get(gateway, url.replace("sig=", "sig=0"))
    assert status == 403 and "etag" not in headers
    assert headers["cache-control"] == "no-store"
