"""One HTTP server standing in for API Gateway, S3 presigned URLs and the static site.

Routes:
  GET  /health              stack status (local only)
  POST /predict, GET /map, GET /whoami, POST /preview, POST /uploads, GET /works/<key>,
  GET /duplicates, GET /review, POST /review/<key>, GET /reports, GET /reports/<batch>
                            REQUEST authorizer, then the predict handler, as API Gateway would
  OPTIONS on those routes   CORS preflight, answered by the "gateway" like API Gateway's CORS
  GET  /lake/<key>?exp&sig  lake objects behind an HMAC-signed URL (the local presigned GET)
  PUT  /lake/uploads/<sha256>?m=PUT&exp&sig
                            one picture, as S3 takes a presigned PUT from POST /uploads: the
                            signed type, length and x-amz-checksum-sha256, at most
                            artlens.image.MAX_BYTES, the bytes checked against the checksum
  GET  /config.json         generated page configuration
  GET  /…                   frontend_static/

Lake objects are answered with `Cache-Control: private, max-age=<seconds until the URL's exp>`
and a strong ETag (the bytes' SHA-256): the API hands out hour-rounded signed URLs, so a browser
keeps a rendition for as long as its URL stays valid, and revalidates with If-None-Match (304).

Connections (slowloris, half-open clients). One selector thread holds every connection until its
request head (request line and headers) is complete; only then does one of at most `workers`
threads (default 64) take it, and after the answer a kept-alive connection goes back to the
selector. So connections that never finish their headers hold a socket, never a thread, and a
normal request is served beside hundreds of them. Limits, as Apache's mod_reqtimeout sets them:
  read_timeout_s    15 s of silence ends a connection (idle keep-alive, stalled head or body)
  header_timeout_s  20 s for the whole head from its first byte: a client dripping one byte at a
                    time resets the silence timer but not this one (408 JSON, then closed)
  body deadline     read_timeout_s + Content-Length / MIN_BODY_RATE (32 KB/s), in total
  max_connections   1,024 open at once; beyond that new connections are closed unanswered

Fair share per caller (default on; `Backend(fair_share=None)` turns it off). The local stack runs
one predict at a time, like one warm container; on AWS each request gets its own Lambda
instance, so one caller's costly pictures never take CPU from another's, and API Gateway's usage
plans throttle each API key with 429 and Retry-After. Locally `FairShare` stands in for both:
  - each caller (the authorizer's scheme and principalId: a token's sub, a signing key's id) has
    at most `in_flight_per_caller` (1) request in the handler and `queued_per_caller` (4) more
    waiting; one more is answered 429 `too_many_requests` with Retry-After, as a usage plan's
    burst limit would, and so is a request still waiting after `max_wait_s` (25 s, under API
    Gateway's 29 s integration timeout);
  - the next turn goes to the waiting caller that has used the least handler CPU time
    (start-time fair queuing on the CPU seconds the handler's thread used), so a caller whose
    pictures cost 0.4 s each to decode gets about the same CPU seconds as a caller whose
    pictures cost 10 ms, not the same number of turns; a free turn waits up to 50 ms for a
    caller who is behind and between two requests (`FairShare`).
A turn is not pre-empted: a normal request that arrives while a costly one runs still waits for
it. Settings: GatewayServer(read_timeout_s=, header_timeout_s=, workers=, max_connections=) and
Backend(fair_share=FairShare(in_flight_per_caller=, queued_per_caller=, max_wait_s=, lead_s=,
anticipate_s=)). What `make stress` measured with them: docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import logging
import math
import mimetypes
import queue
import re
import selectors
import socket
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from artlens.api.events import UPLOAD_KEY
from artlens.api.responses import cors_headers
from artlens.image import MAX_BYTES as MAX_PICTURE_BYTES
from artlens.lake import LocalLake, matches_checksum
from local_stack import events

log = logging.getLogger("local_stack.gateway")

MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's own payload limit
MAX_DRAIN_BYTES = 64 * 1024 * 1024
# A synchronous Lambda invocation carries at most 6 MB of event JSON; the body travels in it
# base64-encoded (4/3 larger), so on AWS a body over ~4.5 MB fails at the integration. The local
# gateway answers that 413 itself instead of passing the handler an event Lambda never would.
LAMBDA_EVENT_LIMIT_BYTES = 6 * 1024 * 1024
# Seconds a connection may stay silent while we read its request (line, headers, body): a
# half-open or stalled connection gives its thread back instead of holding it forever.
READ_TIMEOUT_S = 15.0
# Seconds for a whole request head from its first byte: each byte resets READ_TIMEOUT_S, so
# without a total a client sending one header byte every 14 s would never be cut off.
HEADER_TIMEOUT_S = 20.0
# A body must arrive at this rate on average (plus READ_TIMEOUT_S): a 4.5 MB picture gets 2.5 min.
MIN_BODY_RATE = 32 * 1024
WORKERS = 64
MAX_CONNECTIONS = 1024
# A head still incomplete past the standard library's line limit goes to a worker anyway, which
# answers 414/431 (or reads the rest within the head's deadline).
MAX_HEAD_STAGE_BYTES = 65_536
# Query parameters whose values may appear in the access log; every other value (tokens passed
# as ?access_token=, the lake's ?sig=) is written as "***".
LOGGED_QUERY_PARAMETERS = frozenset({"neighbors", "scope", "limit", "exp", "m"})
_QUERY_IN_TEXT = re.compile(r"\?([^\s\"]*)")
API_ROUTES = {
    "/predict": ("POST",), "/map": ("GET",), "/whoami": ("GET",), "/preview": ("POST",),
    "/uploads": ("POST",), "/works/{key}": ("GET",), "/duplicates": ("GET",),
    "/review": ("GET",), "/review/{key}": ("POST",), "/reports": ("GET",),
    "/reports/{batch}": ("GET",),
}
# Routes with a path parameter: path prefix -> (API Gateway resource, parameter name).
PARAMETER_ROUTES = {
    "/works/": ("/works/{key}", "key"), "/review/": ("/review/{key}", "key"),
    "/reports/": ("/reports/{batch}", "batch"),
}

# Explicit types for what the page ships; mimetypes' platform tables vary (e.g. .js, .mjs, .wasm).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
    ".woff2": "font/woff2",
}
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._~@+=,-]+$")

Handler = Callable[[dict, Any], Any]
_STDLIB_ERROR_CODES = {
    400: "bad_request", 408: "request_timeout", 414: "uri_too_long",
    431: "headers_too_large", 501: "not_implemented", 505: "http_version_not_supported",
}


class Unauthorized(Exception):
    """The authorizer raised "Unauthorized": API Gateway answers 401."""


class Throttled(Exception):
    """The caller has its share in use and its queue full, or waited too long: 429."""

    def __init__(self, retry_after_s: int, message: str):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Ticket:
    order: int
    granted: threading.Event = field(default_factory=threading.Event)
    start: float = 0.0  # the virtual time at which it was let in


@dataclass(eq=False)
class _Caller:
    waiting: deque[_Ticket] = field(default_factory=deque)
    in_flight: int = 0
    finish: float = 0.0  # virtual time its last request ended: start + seconds it took
    left_at: float = -math.inf  # clock when its last request ended


class FairShare:
    """Per-caller admission to `slots` handler slots (see the module docstring).

    Start-time fair queuing: a request's start tag is max(virtual time, its caller's last
    finish tag); the waiting request with the smallest tag goes next, and the caller's finish
    tag becomes that tag plus the CPU seconds the handler's thread used (`cost_clock`, the
    thread's CPU time: decoding runs there). CPU time, not wall time: on a shared machine a
    normal request that waited for a core would otherwise be charged as if it were costly,
    and its caller sent to the back for many rounds. Idle callers keep no credit (a finish
    tag behind the virtual time counts as the virtual time) and are forgotten.

    Anticipation: a client sends its next request only after reading the last answer, so at
    the moment a slot frees, the callers who are behind are often between two requests while
    a caller who is ahead always has one queued; giving it the slot then would hand it turns
    by count again. So when the best waiting request's tag is more than `lead_s` ahead of a
    caller whose request ended under `anticipate_s` ago, the slot waits for that caller up to
    `anticipate_s` (as Linux's anticipatory I/O scheduler waited for a process's next read).
    """

    def __init__(
        self, *, slots: int = 1, in_flight_per_caller: int = 1, queued_per_caller: int = 4,
        max_wait_s: float = 25.0, lead_s: float = 0.1, anticipate_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        cost_clock: Callable[[], float] = time.thread_time,
    ):
        if slots < 1 or in_flight_per_caller < 1 or queued_per_caller < 0 or max_wait_s <= 0 \
                or lead_s < 0 or anticipate_s < 0:
            raise ValueError("FairShare needs slots >= 1, in_flight_per_caller >= 1, "
                             "queued_per_caller >= 0, max_wait_s > 0, lead_s and anticipate_s "
                             ">= 0")
        self.in_flight_per_caller = in_flight_per_caller
        self.queued_per_caller = queued_per_caller
        self.max_wait_s = max_wait_s
        self.lead_s = lead_s
        self.anticipate_s = anticipate_s
        self._clock = clock
        self._cost_clock = cost_clock
        self._lock = threading.Lock()
        self._callers: dict[str, _Caller] = {}
        self._free = slots
        self._virtual = 0.0
        self._arrivals = itertools.count()
        self._seconds_per_turn = 0.05  # running mean, for Retry-After
        self._timer: threading.Timer | None = None
        self.throttled: Counter[str] = Counter()
        """429s answered, per caller (for `make stress` and the tests)."""
        self.anticipated = 0
        """Times a free slot waited for a caller that was behind (for the tests)."""

    @contextmanager
    def turn(self, caller: str) -> Iterator[None]:
        """Wait for this caller's turn (or raise Throttled), hold a slot while inside."""
        ticket = self._enter(caller)
        started, cost_started = self._clock(), self._cost_clock()
        try:
            yield
        finally:
            self._leave(caller, ticket, self._cost_clock() - cost_started,
                        self._clock() - started)

    def check(self, caller: str) -> None:
        """Raise Throttled now if this caller's share is already taken (before the gateway
        builds an event for a request it would refuse anyway); turn() checks again."""
        with self._lock:
            state = self._callers.get(caller)
            outstanding = state.in_flight + len(state.waiting) if state else 0
            if outstanding >= self.in_flight_per_caller + self.queued_per_caller:
                self.throttled[caller] += 1
                retry = self._retry_after()
                raise Throttled(retry, (
                    f"This caller already has {outstanding} request(s) running or waiting; "
                    f"retry after {retry} s."))

    def waiting(self, caller: str) -> int:
        with self._lock:
            state = self._callers.get(caller)
            return len(state.waiting) if state else 0

    def _retry_after(self) -> int:
        # About one round of everyone's outstanding requests; whole seconds, 1 to 60.
        busy = sum(len(c.waiting) + c.in_flight for c in self._callers.values())
        return min(60, max(1, math.ceil(busy * self._seconds_per_turn)))

    def _enter(self, caller: str) -> _Ticket:
        with self._lock:
            state = self._callers.setdefault(caller, _Caller())
            outstanding = state.in_flight + len(state.waiting)
            if outstanding >= self.in_flight_per_caller + self.queued_per_caller:
                self.throttled[caller] += 1
                retry = self._retry_after()
                raise Throttled(retry, (
                    f"This caller already has {outstanding} request(s) running or waiting; "
                    f"retry after {retry} s."))
            ticket = _Ticket(order=next(self._arrivals))
            state.waiting.append(ticket)
            self._dispatch()
        if ticket.granted.wait(self.max_wait_s):
            return ticket
        with self._lock:
            if ticket.granted.is_set():  # let in just as the wait ended
                return ticket
            state.waiting.remove(ticket)
            self.throttled[caller] += 1
            retry = self._retry_after()
            self._dispatch()  # its place may have been what a free slot anticipated
        raise Throttled(retry, f"The local stack is busy; waited {self.max_wait_s:g} s. "
                               f"Retry after {retry} s.")

    def _dispatch(self) -> None:
        """Let in the waiting requests with the smallest start tags while slots are free
        (lock held)."""
        while self._free > 0:
            now = self._clock()
            best: tuple[tuple[float, int], _Caller] | None = None
            returning = math.inf  # the soonest end of a wait for a caller who is behind
            behind = math.inf  # the smallest tag among those callers
            for name, state in list(self._callers.items()):
                tag = max(self._virtual, state.finish)
                if state.waiting and state.in_flight < self.in_flight_per_caller:
                    key = (tag, state.waiting[0].order)
                    if best is None or key < best[0]:
                        best = (key, state)
                elif not state.waiting and not state.in_flight:
                    if state.left_at + self.anticipate_s > now:
                        returning = min(returning, state.left_at + self.anticipate_s)
                        behind = min(behind, tag)
                    elif state.finish <= self._virtual:
                        del self._callers[name]  # idle, no credit left: as good as new
            if best is None:
                return
            (start, _), state = best
            if start - behind > self.lead_s:
                self.anticipated += 1
                self._wake_at(returning - now)
                return
            ticket = state.waiting.popleft()
            self._virtual = ticket.start = start
            state.in_flight += 1
            self._free -= 1
            ticket.granted.set()

    def _wake_at(self, delay: float) -> None:
        """Dispatch again once an anticipated caller's time is up (one timer at a time)."""
        if self._timer is not None and self._timer.is_alive():
            return
        self._timer = threading.Timer(max(delay, 0.005), self._redispatch)
        self._timer.daemon = True
        self._timer.start()

    def _redispatch(self) -> None:
        with self._lock:
            self._timer = None
            self._dispatch()

    def _leave(self, caller: str, ticket: _Ticket, cost: float, seconds: float) -> None:
        with self._lock:
            state = self._callers[caller]
            state.in_flight -= 1
            state.finish = max(state.finish, ticket.start + cost)
            state.left_at = self._clock()
            self._seconds_per_turn += 0.05 * (seconds - self._seconds_per_turn)
            self._free += 1
            self._dispatch()


@dataclass
class GatewayConfig:
    static_dir: Path
    cors_origin: str
    api_base_url: str = ""


@dataclass
class Backend:
    """What the gateway calls. Handlers run one at a time per function, like one warm container;
    predict's turns are shared fairly between callers (`fair_share`; None: one lock, first come
    whoever wins it)."""

    authorizer: Handler
    predict: Handler
    health: Callable[[], dict]
    lake_object: Callable[[str, str, str], tuple[bytes, str] | None]
    """(key, exp, sig) -> (bytes, content type), or None when the signature is not valid."""
    lake: LocalLake | None = None
    """The lake that takes presigned PUTs (POST /uploads); None: the gateway refuses them."""
    fair_share: FairShare | None = field(default_factory=FairShare)

    def __post_init__(self) -> None:
        self._authorizer_lock = threading.Lock()
        self._predict_lock = threading.Lock()

    def authorize(self, event: dict) -> dict:
        with self._authorizer_lock:
            try:
                return self.authorizer(event, events.LambdaContext("artlens-authorizer"))
            except Exception as exc:
                if str(exc) == "Unauthorized":
                    raise Unauthorized from None
                raise

    def call_predict(self, event: dict, caller: str = "") -> dict:
        """Run predict in this caller's turn; raises Throttled (429) past its share."""
        if self.fair_share is None:
            with self._predict_lock:
                return self.predict(event, events.LambdaContext("artlens-predict"))
        with self.fair_share.turn(caller), self._predict_lock:
            return self.predict(event, events.LambdaContext("artlens-predict"))


def policy_allows(policy: dict, arn: str) -> bool:
    """Evaluate an authorizer's IAM policy for one method ARN (explicit Deny wins)."""
    statements = (policy.get("policyDocument") or {}).get("Statement") or []
    if isinstance(statements, dict):
        statements = [statements]
    allowed = False
    for statement in statements:
        resources = statement.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if not any(_arn_matches(a, "execute-api:Invoke") for a in actions):
            continue
        if not any(_arn_matches(pattern, arn) for pattern in resources):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") == "Allow":
            allowed = True
    return allowed


def _arn_matches(pattern: str, value: str) -> bool:
    regex = "^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"
    return re.match(regex, value) is not None


def caller_of(policy: dict) -> str:
    """Who a request is charged to: the authorizer's scheme and principalId."""
    scheme = (policy.get("context") or {}).get("scheme") or ""
    return f"{scheme}:{policy.get('principalId') or ''}"


def _authorizer_context(policy: dict) -> dict:
    """What API Gateway puts in requestContext.authorizer: principalId plus the context map."""
    context = {key: value for key, value in (policy.get("context") or {}).items()}
    context["principalId"] = policy.get("principalId")
    return context


def resolve_static(static_dir: Path, url_path: str) -> Path | None:
    """Map a URL path to a file under static_dir, or None. Refuses anything that could escape."""
    root = static_dir.resolve()
    decoded = unquote(url_path)
    if "\x00" in decoded or "\\" in decoded:
        return None
    segments = [s for s in decoded.split("/") if s]
    if any(s in (".", "..") or s.startswith(".") or not _SAFE_SEGMENT.match(s) for s in segments):
        return None
    candidate = root.joinpath(*segments) if segments else root
    if candidate.is_dir():
        candidate = candidate / "index.html"
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        return None
    return resolved


def redact(text: str) -> str:
    """`GET /lake/a.jpg?exp=1&sig=abc HTTP/1.1` -> `GET /lake/a.jpg?exp=1&sig=*** HTTP/1.1`."""

    def one_query(match: re.Match[str]) -> str:
        pairs = []
        for pair in match.group(1).split("&"):
            name, equals, _value = pair.partition("=")
            keep = unquote(name).lower() in LOGGED_QUERY_PARAMETERS
            pairs.append(pair if keep or not equals else f"{name}=***")
        return "?" + "&".join(pairs)

    return _QUERY_IN_TEXT.sub(one_query, text)


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match as RFC 9110 compares it for GET: weakly, any listed tag or `*`."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or etag in (tag.removeprefix("W/") for tag in tags)


def content_type_for(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def _head_complete(buffer: bytes | bytearray) -> bool:
    """The request line and headers have all arrived (an empty line ends them), or the head is
    past what the selector holds (the worker answers 414/431 or reads the rest in time)."""
    return (b"\n\n" in buffer or b"\n\r\n" in buffer or buffer[:1] == b"\n"
            or buffer[:2] == b"\r\n" or len(buffer) > MAX_HEAD_STAGE_BYTES)


def _error_bytes(status: int, code: str, message: str) -> bytes:
    """A whole JSON error answer, for the selector thread (which has no handler to send it)."""
    body = json.dumps({"error": code, "message": message}).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\n\r\n")
    return head.encode() + body


@dataclass(eq=False)
class _Connection:
    """One client connection between requests: its socket and what it has sent so far."""

    sock: socket.socket
    address: Any
    buffer: bytearray
    idle_deadline: float
    head_deadline: float | None = None  # set by the head's first byte


class _Reader(io.RawIOBase):
    """The handler's rfile: the bytes the selector already read, then the socket, with a total
    deadline for the current phase (head, then body) on top of the per-recv timeout."""

    def __init__(self, sock: socket.socket, initial: bytes, read_timeout_s: float,
                 deadline: float | None):
        super().__init__()
        self._sock = sock
        self._buffer = bytearray(initial)
        self._read_timeout_s = read_timeout_s
        self.deadline = deadline
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        if self._eof:
            return False
        timeout = self._read_timeout_s
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive in time")
            timeout = min(timeout, left)
        self._sock.settimeout(timeout)
        chunk = self._sock.recv(1 << 16)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 and (limit is None or end < limit):
                return self._take(end + 1)
            if limit is not None and len(self._buffer) >= limit:
                return self._take(limit)
            if not self._fill():
                return self._take(len(self._buffer))

    def read(self, size: int | None = -1) -> bytes:
        while size is None or size < 0 or len(self._buffer) < size:
            if not self._fill():
                break
        return self._take(len(self._buffer) if size is None or size < 0 else size)

    def readinto(self, buffer: Any) -> int:  # what io's helpers fall back on
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _take(self, count: int) -> bytes:
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def leftover(self) -> bytes:
        """Bytes read past this request (a pipelined next one): they go back to the selector."""
        return bytes(self._buffer)


class _Writer(io.BufferedIOBase):
    """The handler's wfile: every write goes out whole (socket.sendall)."""

    def __init__(self, sock: socket.socket):
        super().__init__()
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class _HeadStage:
    """One thread with a selector: holds connections until their request head is complete,
    answers 408 to a head that takes too long in total, closes silent connections; complete
    heads go to the workers."""

    def __init__(self, server: GatewayServer):
        self._server = server
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._incoming: deque[_Connection] = deque()
        self._lock = threading.Lock()
        self._held: set[_Connection] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="gateway-heads", daemon=True)
        self._thread.start()

    def add(self, connection: _Connection) -> None:
        with self._lock:
            self._incoming.append(connection)
        self._wake()

    def stop(self) -> None:
        self._stopped = True
        self._wake()
        self._thread.join(timeout=5)

    def _wake(self) -> None:
        # OSError: already woken (its buffer is full), or stopping.
        with suppress(OSError):
            self._wake_write.send(b"x")

    def _run(self) -> None:
        try:
            while not self._stopped:
                self._take_incoming()
                for key, _ in self._selector.select(self._next_timeout()):
                    if key.data is None:
                        try:
                            while self._wake_read.recv(4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
                    else:
                        self._read(key.data)
                self._expire()
        except Exception:
            log.error("the gateway's connection thread failed\n%s", traceback.format_exc())
        finally:
            for connection in list(self._held):
                self._drop(connection)
            with self._lock:
                while self._incoming:
                    self._server.close_connection(self._incoming.popleft())
            self._selector.close()
            self._wake_read.close()
            self._wake_write.close()

    def _take_incoming(self) -> None:
        with self._lock:
            arrived = list(self._incoming)
            self._incoming.clear()
        for connection in arrived:
            if connection.buffer and _head_complete(connection.buffer):
                self._server.submit(connection)  # a pipelined request, already whole
                continue
            try:
                self._selector.register(connection.sock, selectors.EVENT_READ, connection)
            except (ValueError, OSError):
                self._server.close_connection(connection)
                continue
            self._held.add(connection)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        soonest = min((min(c.idle_deadline, c.head_deadline or math.inf) for c in self._held),
                      default=now + 1.0)
        return min(1.0, max(0.0, soonest - now))

    def _read(self, connection: _Connection) -> None:
        try:
            chunk = connection.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(connection)
            return
        now = time.monotonic()
        if connection.head_deadline is None:
            connection.head_deadline = now + self._server.header_timeout_s
        connection.idle_deadline = now + self._server.read_timeout_s
        connection.buffer += chunk
        if _head_complete(connection.buffer):
            self._release(connection)
            self._server.submit(connection)

    def _expire(self) -> None:
        now = time.monotonic()
        for connection in [c for c in self._held
                           if min(c.idle_deadline, c.head_deadline or math.inf) <= now]:
            if connection.buffer:
                # A request was begun and not finished in time: say so, as mod_reqtimeout does.
                log.info("%s: request head incomplete after %g s; closed", connection.address[0],
                         self._server.header_timeout_s if connection.head_deadline
                         and connection.head_deadline <= now else self._server.read_timeout_s)
                with suppress(OSError):
                    connection.sock.send(_error_bytes(
                        408, "request_timeout", "The request headers did not arrive in time."))
            self._drop(connection)

    def _release(self, connection: _Connection) -> None:
        self._held.discard(connection)
        with suppress(KeyError, ValueError, OSError):
            self._selector.unregister(connection.sock)

    def _drop(self, connection: _Connection) -> None:
        self._release(connection)
        self._server.close_connection(connection)


class _Workers:
    """At most `limit` daemon threads, started as work arrives; the rest waits in order."""

    def __init__(self, limit: int, work: Callable[[_Connection], None]):
        self._limit = limit
        self._work = work
        self._queue: queue.SimpleQueue[_Connection] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0

    @property
    def threads(self) -> int:
        return self._threads

    def submit(self, connection: _Connection) -> None:
        with self._lock:
            self._queued += 1
            start = self._queued > self._idle and self._threads < self._limit
            if start:
                self._threads += 1
        if start:
            threading.Thread(target=self._run, name=f"gateway-{self._threads}",
                             daemon=True).start()
        self._queue.put(connection)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            connection = self._queue.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            try:
                self._work(connection)
            except Exception:
                log.error("gateway worker failed\n%s", traceback.format_exc())


class GatewayServer(HTTPServer):
    # Python's default listen backlog (5) resets connections when 32 clients connect at once.
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], config: GatewayConfig, backend: Backend | None,
        *, read_timeout_s: float = READ_TIMEOUT_S, header_timeout_s: float = HEADER_TIMEOUT_S,
        workers: int = WORKERS, max_connections: int = MAX_CONNECTIONS,
    ):
        super().__init__(address, GatewayRequestHandler)
        self.config = config
        self.backend = backend
        self.read_timeout_s = read_timeout_s
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self._count_lock = threading.Lock()
        self._open = 0
        self._closing = False
        self.workers = _Workers(workers, self._serve_connection)
        self._heads = _HeadStage(self)

    @property
    def ready_backend(self) -> Backend:
        """The backend; `make run` sets it after binding, before serving the first request."""
        if self.backend is None:
            raise RuntimeError("the gateway has no backend yet")
        return self.backend

    @property
    def url(self) -> str:
        host, port = cast(tuple[str, int], self.server_address)[:2]
        return f"http://{host}:{port}"

    @property
    def open_connections(self) -> int:
        return self._open

    # socketserver calls this for each accepted connection (in serve_forever's thread).
    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count_lock:
            full = self._closing or self._open >= self.max_connections
            if not full:
                self._open += 1
        if full:
            log.warning("%s: %d connections open; refused", client_address[0], self._open)
            self.shutdown_request(request)
            return
        request.setblocking(False)
        self._heads.add(_Connection(request, client_address, bytearray(),
                                    time.monotonic() + self.read_timeout_s))

    def submit(self, connection: _Connection) -> None:
        self.workers.submit(connection)

    def _serve_connection(self, connection: _Connection) -> None:
        """One request on a worker; a kept-alive connection then goes back to the selector."""
        connection.sock.setblocking(True)
        try:
            # socketserver's request is a socket; ours carries the bytes read before it too.
            handler = GatewayRequestHandler(
                cast(Any, connection), connection.address, self)
        except Exception:
            log.error("request failed on %s\n%s", connection.address[0], traceback.format_exc())
            self.close_connection(connection)
            return
        if handler.close_connection or self._closing:
            self.close_connection(connection)
            return
        connection.sock.setblocking(False)
        connection.buffer = bytearray(handler.rfile.leftover())
        connection.head_deadline = time.monotonic() + self.header_timeout_s \
            if connection.buffer else None
        connection.idle_deadline = time.monotonic() + self.read_timeout_s
        self._heads.add(connection)

    def close_connection(self, connection: _Connection) -> None:
        with self._count_lock:
            self._open -= 1
        self.shutdown_request(connection.sock)

    def server_close(self) -> None:
        self._closing = True
        super().server_close()
        self._heads.stop()


class GatewayRequestHandler(BaseHTTPRequestHandler):
    server: GatewayServer
    server_version = "ArtLensLocal/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # -- plumbing -------------------------------------------------------------------------

    rfile: _Reader  # type: ignore[assignment]
    request: _Connection

    def setup(self) -> None:
        # The selector already read the head (or its start); the reader continues from there.
        # Every read gives up after read_timeout_s without a byte, and the head as a whole at
        # its deadline (the body's is set once its length is known).
        connection = self.request
        self.connection = connection.sock
        self.rfile = _Reader(
            connection.sock, bytes(connection.buffer), self.server.read_timeout_s,
            connection.head_deadline or time.monotonic() + self.server.header_timeout_s)
        self.wfile = _Writer(connection.sock)

    def handle(self) -> None:
        # One request per turn on a worker: a kept-alive connection waits for its next request
        # in the selector, not in a thread (GatewayServer._serve_connection).
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        pass  # the socket outlives the handler (keep-alive); the server closes it

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        # The request line carries the query string: no token or lake signature in the log.
        log.info("%s %s", self.address_string(), redact(format % args))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (414 URI too long, 431 headers too large, 400
        malformed request line, 501 unknown method, 408 timeout) as our JSON, not HTML."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        body = json.dumps({"error": _STDLIB_ERROR_CODES.get(code, "bad_request"),
                           "message": message or phrase}).encode()
        self.send_response(code, phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _cors_headers(self) -> dict[str, str]:
        # The same CORS headers the handlers send, so gateway answers (401, preflight) match.
        return cors_headers(self.server.config.cors_origin)

    def _send(
        self, status: int, body: bytes, headers: dict[str, str] | None = None,
        multi_headers: dict[str, list[str]] | None = None,
    ) -> None:
        self.send_response(status)
        sent = set()
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
            sent.add(name.lower())
        for name, values in (multi_headers or {}).items():
            if name.lower() in sent:
                continue
            for value in values:
                self.send_header(name, str(value))
        if "content-length" not in sent:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: dict, cors: bool = True) -> None:
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        if cors:
            headers.update(self._cors_headers())
        self._send(status, json.dumps(payload).encode(), headers)

    def _send_error_json(self, status: int, code: str, message: str) -> None:
        self._send_json(status, {"error": code, "message": message})

    def _split(self) -> tuple[str, str]:
        parts = urlsplit(self.path)
        return parts.path or "/", parts.query

    def _read_body(self, limit: int = MAX_BODY_BYTES) -> bytes | None:
        """The request body, or None after answering 411/413/400 for a body we will not read."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            self._send_error_json(411, "length_required", "Send the body with a Content-Length.")
            return None
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._send_error_json(400, "bad_request", "Content-Length is not a valid number.")
            return None
        self._body_deadline(length)
        if length > limit:
            # Clients that send the whole body before reading (urllib, requests) see a broken
            # pipe if we answer early, so a moderately large body is drained first; beyond
            # that the connection is simply closed after the answer.
            self._drain(min(length, MAX_DRAIN_BYTES))
            self.close_connection = True
            self._send_error_json(
                413, "too_large",
                f"The request body is {length:,} bytes; the limit is {limit:,} bytes.",
            )
            return None
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            self._send_error_json(
                408, "request_timeout",
                f"The body did not arrive in time ({self.server.read_timeout_s:g} s without a "
                f"byte, or slower than {MIN_BODY_RATE // 1024} KB/s).",
            )
            return None
        if len(body) < length:
            self.close_connection = True
            self._send_error_json(
                400, "incomplete_body",
                f"The connection ended after {len(body):,} of {length:,} body bytes.",
            )
            return None
        return body

    def _body_deadline(self, length: int) -> None:
        """A body's reads end together at read_timeout_s + length / MIN_BODY_RATE: dripping a
        byte at a time keeps no thread for longer than an honest slow upload would."""
        self.rfile.deadline = (time.monotonic() + self.server.read_timeout_s
                               + length / MIN_BODY_RATE)

    def _drain(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)

    def _dispatch(self) -> None:
        self.rfile.deadline = None  # the head is in; a body gets its own deadline
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.error("unhandled error on %s %s\n%s", self.command, redact(self.path),
                      traceback.format_exc())
            try:
                self._send_error_json(500, "internal_error", "The local stack failed; see its log.")
            except OSError:
                self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch  # noqa: N815

    # -- routing --------------------------------------------------------------------------

    def _route(self) -> None:
        path, query = self._split()
        method = self.command
        parameter_route = any(path.startswith(p) and path != p for p in PARAMETER_ROUTES)
        if path in API_ROUTES or parameter_route:
            self._api(method, path, query)
        elif path == "/health":
            self._only(("GET", "HEAD"), self._health)
        elif path.startswith("/lake/") and method == "PUT":
            self._lake_put(path, query)
        elif path.startswith("/lake/"):
            self._only(("GET", "HEAD"), lambda: self._lake(path, query))
        elif path == "/config.json":
            self._only(("GET", "HEAD"), self._config)
        else:
            self._only(("GET", "HEAD"), lambda: self._static(path))

    def _only(self, methods: tuple[str, ...], action: Callable[[], None]) -> None:
        if self.command not in methods:
            self._read_body_and_discard()
            self._send_error_json(
                405, "method_not_allowed", f"{self.command} is not allowed here."
            )
            return
        action()

    def _read_body_and_discard(self) -> None:
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= MAX_DRAIN_BYTES:
            self._body_deadline(int(length))
            self._drain(int(length))
        elif length:
            self.close_connection = True

    def _health(self) -> None:
        try:
            payload = self.server.ready_backend.health()
        except Exception as exc:
            log.warning("health check failed: %s", exc)
            self._send_error_json(503, "unavailable", "The database is not reachable.")
            return
        self._send_json(200, payload)

    def _config(self) -> None:
        body = json.dumps({"apiBaseUrl": self.server.config.api_base_url}).encode()
        self._send(200, body, {"Content-Type": "application/json", "Cache-Control": "no-store"})

    def _static(self, path: str) -> None:
        file = resolve_static(self.server.config.static_dir, path)
        if file is None:
            self._send_error_json(404, "not_found", "There is no such page.")
            return
        self._send(
            200, file.read_bytes(),
            {"Content-Type": content_type_for(file.name), "Cache-Control": "no-cache"},
        )

    def _lake(self, path: str, query: str) -> None:
        key = unquote(path[len("/lake/"):])
        params = parse_qs(query)
        exp = (params.get("exp") or [""])[-1]
        sig = (params.get("sig") or [""])[-1]
        found = self.server.ready_backend.lake_object(key, exp, sig) if exp and sig else None
        if found is None:
            self._send_error_json(403, "forbidden", "The link is not valid or has expired.")
            return
        data, content_type = found
        # The URL is valid until exp (verified above): a browser may keep the object that long
        # and no longer; the ETag (its bytes' SHA-256) lets it revalidate without the bytes.
        try:
            max_age = max(0, int(exp) - int(time.time()))
        except ValueError:  # a lake_object that took another form of exp: do not cache
            max_age = 0
        headers = {"Cache-Control": f"private, max-age={max_age}",
                   "ETag": f'"{hashlib.sha256(data).hexdigest()}"', **self._cors_headers()}
        if _etag_matches(self.headers.get("If-None-Match"), headers["ETag"]):
            self.send_response(304)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            return
        self._send(200, data, {"Content-Type": content_type, **headers})

    def _lake_put(self, path: str, query: str) -> None:
        """A presigned PUT, refused as S3 would: 403 unless signed for exactly these headers,
        400 when the bytes are not what the checksum names; only upload keys, only pictures
        the service would read (413 past MAX_BYTES)."""
        key = unquote(path[len("/lake/"):])
        lake = self.server.ready_backend.lake
        if lake is None or not UPLOAD_KEY.match(key):
            self._read_body_and_discard()
            self._send_error_json(403, "forbidden", "Only upload links take a PUT.")
            return
        body = self._read_body(MAX_PICTURE_BYTES)
        if body is None:
            return
        params = {name: values[-1] for name, values in parse_qs(query).items()}
        checksum = self.headers.get("x-amz-checksum-sha256") or ""
        content_type = self.headers.get("Content-Type") or ""
        if not lake.verify_upload(key, params, content_type, len(body), checksum):
            self._send_error_json(403, "forbidden", "The link is not valid or has expired, or "
                                  "the request's type, length or checksum is not the signed one.")
            return
        if not matches_checksum(body, checksum):
            self._send_error_json(400, "bad_digest", "The bytes do not match the checksum.")
            return
        lake.put(key, body, content_type)  # write then rename: never half a picture
        self._send(200, b"", self._cors_headers())

    # -- API Gateway ----------------------------------------------------------------------

    def _api(self, method: str, path: str, query: str) -> None:
        resource, parameters = path, None
        for prefix, (template, name) in PARAMETER_ROUTES.items():
            if path.startswith(prefix):
                # As API Gateway: the resource template, the rest of the path as the parameter
                # (left URL-encoded; the handler decodes it).
                resource, parameters = template, {name: path[len(prefix):]}
        allowed = API_ROUTES[resource]
        if method == "OPTIONS":
            self._read_body_and_discard()
            self._send(204, b"", self._cors_headers())
            return
        if method not in allowed:
            self._read_body_and_discard()
            self._send_error_json(405, "method_not_allowed", f"{method} is not allowed on {path}.")
            return
        body = self._read_body()
        if body is None:
            return
        request = events.HttpRequest(
            method=method, path=path, query=query, headers=list(self.headers.items()),
            body=body, source_ip=self.client_address[0],
        )
        request_id = str(uuid.uuid4())
        backend = self.server.ready_backend
        try:
            policy = backend.authorize(events.authorizer_event(request, request_id))
        except Unauthorized:
            self._send_error_json(401, "unauthorized", "A valid bearer token is required.")
            return
        arn = events.method_arn(method, path)
        if not isinstance(policy, dict) or not policy_allows(policy, arn):
            told = (policy.get("context") or {}) if isinstance(policy, dict) else {}
            if told.get("error"):
                # As API Gateway's ACCESS_DENIED gateway response is configured (infra): 401
                # with the code the authorizer put in its Deny (e.g. stale_request).
                self._send_error_json(401, str(told["error"]), str(told.get("message") or ""))
                return
            self._send_error_json(403, "forbidden", "The token does not allow this request.")
            return
        caller = caller_of(policy)
        try:
            if backend.fair_share is not None:
                backend.fair_share.check(caller)
        except Throttled as throttled:
            self._send_throttled(throttled)
            return
        event = events.proxy_event(request, request_id, authorizer=_authorizer_context(policy))
        if parameters is not None:
            event["resource"], event["pathParameters"] = resource, parameters
        event_bytes = len(json.dumps(event))
        if event_bytes > LAMBDA_EVENT_LIMIT_BYTES:
            self._send_error_json(
                413, "too_large",
                f"The request would make a {event_bytes:,}-byte Lambda event (the body "
                f"base64-encoded); the limit is {LAMBDA_EVENT_LIMIT_BYTES:,} bytes. Send "
                "pictures under about 4.5 MB.",
            )
            return
        try:
            response = backend.call_predict(event, caller)
        except Throttled as throttled:
            self._send_throttled(throttled)
            return
        self._write_proxy_response(response)

    def _send_throttled(self, throttled: Throttled) -> None:
        # As API Gateway's usage-plan throttling answers: 429 with when to come back.
        self._send(429, json.dumps({"error": "too_many_requests",
                                    "message": str(throttled)}).encode(), {
            "Content-Type": "application/json", "Cache-Control": "no-store",
            "Retry-After": str(throttled.retry_after_s), **self._cors_headers()})

    def _write_proxy_response(self, response: Any) -> None:
        if not isinstance(response, dict) or not isinstance(response.get("statusCode"), int):
            log.error("handler returned a malformed proxy response: %r", response)
            self._send_error_json(502, "bad_gateway", "The handler returned a malformed response.")
            return
        body = response.get("body") or ""
        if response.get("isBase64Encoded"):
            payload = base64.b64decode(body)
        else:
            payload = body.encode() if isinstance(body, str) else bytes(body)
        status = response["statusCode"]
        if status not in HTTPStatus._value2member_map_:
            status = 502
        self._send(status, payload, response.get("headers") or {},
                   response.get("multiValueHeaders") or {})
