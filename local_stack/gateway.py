"""One HTTP server standing in for API Gateway, S3 presigned URLs and the static site.

Routes:
  GET  /health              stack status (local only)
  POST /predict, GET /map, GET /whoami, POST /preview, POST /uploads, GET /works/<key>
                            REQUEST authorizer, then the predict handler, as API Gateway would
  OPTIONS on those routes   CORS preflight, answered by the "gateway" like API Gateway's CORS
  GET  /lake/<key>?exp&sig  lake objects behind an HMAC-signed URL (the local presigned GET)
  PUT  /lake/uploads/<sha256>?m=PUT&exp&sig
                            one picture, as S3 takes a presigned PUT from POST /uploads: the
                            signed type, length and x-amz-checksum-sha256, at most
                            artlens.image.MAX_BYTES, the bytes checked against the checksum
  GET  /config.json         generated page configuration
  GET  /…                   frontend_static/
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import re
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
# Query parameters whose values may appear in the access log; every other value (tokens passed
# as ?access_token=, the lake's ?sig=) is written as "***".
LOGGED_QUERY_PARAMETERS = frozenset({"neighbors", "scope", "limit", "exp", "m"})
_QUERY_IN_TEXT = re.compile(r"\?([^\s\"]*)")
API_ROUTES = {
    "/predict": ("POST",), "/map": ("GET",), "/whoami": ("GET",), "/preview": ("POST",),
    "/uploads": ("POST",), "/works/{key}": ("GET",),
}
# Routes with a path parameter: path prefix -> (API Gateway resource, parameter name).
PARAMETER_ROUTES = {"/works/": ("/works/{key}", "key")}

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


@dataclass
class GatewayConfig:
    static_dir: Path
    cors_origin: str
    api_base_url: str = ""


@dataclass
class Backend:
    """What the gateway calls. Handlers run one at a time per function, like one warm container."""

    authorizer: Handler
    predict: Handler
    health: Callable[[], dict]
    lake_object: Callable[[str, str, str], tuple[bytes, str] | None]
    """(key, exp, sig) -> (bytes, content type), or None when the signature is not valid."""
    lake: LocalLake | None = None
    """The lake that takes presigned PUTs (POST /uploads); None: the gateway refuses them."""

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

    def call_predict(self, event: dict) -> dict:
        with self._predict_lock:
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


def content_type_for(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


class GatewayServer(ThreadingHTTPServer):
    # Python's default listen backlog (5) resets connections when 32 clients connect at once.
    request_queue_size = 128
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], config: GatewayConfig, backend: Backend | None,
        *, read_timeout_s: float = READ_TIMEOUT_S,
    ):
        super().__init__(address, GatewayRequestHandler)
        self.config = config
        self.backend = backend
        self.read_timeout_s = read_timeout_s

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


class GatewayRequestHandler(BaseHTTPRequestHandler):
    server: GatewayServer
    server_version = "ArtLensLocal/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # -- plumbing -------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        # Every read of the request line, the headers and the body gives up after this long
        # without a byte (StreamRequestHandler's class-wide `timeout`, but per server).
        self.connection.settimeout(self.server.read_timeout_s)

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
                f"The body did not arrive within {self.server.read_timeout_s:g} s.",
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

    def _drain(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)

    def _dispatch(self) -> None:
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
        self._send(
            200, data,
            {"Content-Type": content_type, "Cache-Control": "private, max-age=300",
             **self._cors_headers()},
        )

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
        self._write_proxy_response(backend.call_predict(event))

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
