"""API Gateway REST proxy events in: headers, the body (raw, base64, multipart or JSON) and the
query string, validated. Standard library only: the authorizer imports this module.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any
from urllib.parse import unquote

import pybase64

from artlens.errors import BadRequest, ImageRejected

MAX_NEIGHBORS = 20
DEFAULT_NEIGHBORS = 5
SCOPES = ("class", "all")
MULTIPART_FIELD = "file"

# The largest request body (after API Gateway's base64 is undone) that fits one Lambda event.
# A synchronous invocation carries at most 6,291,456 bytes of event JSON; API Gateway
# base64-encodes binary bodies (4 characters per 3 bytes) and adds headers (twice: headers and
# multiValueHeaders, 10 KiB at most each), the request context and the authorizer's context. 64
# KiB of headroom covers those, so (6,291,456 - 65,536) * 3 / 4 = 4,669,440 bytes. A bigger body
# would never reach the function: Lambda refuses the event and the gateway answers a bare 5xx.
LAMBDA_EVENT_LIMIT = 6 * 1024 * 1024
EVENT_HEADROOM = 64 * 1024
MAX_BODY_BYTES = (LAMBDA_EVENT_LIMIT - EVENT_HEADROOM) * 3 // 4
# Predict and preview by reference: {"key": "gallery/<sha256>.<ext>"}, {"key":
# "uploads/<sha256>"} (a picture sent before, or PUT by a POST /uploads URL) or {"sha256": "<hex>"}.
GALLERY_KEY = re.compile(r"^gallery/[0-9a-f]{64}\.[a-z0-9]{2,5}$")
UPLOAD_KEY = re.compile(r"^uploads/[0-9a-f]{64}$")
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
# What a POST /uploads URL may be PUT with: the picture's own type, or none in particular.
UPLOAD_CONTENT_TYPE = re.compile(r"^(image/[a-z0-9][a-z0-9.+-]{0,63}|application/octet-stream)$")
DEFAULT_UPLOAD_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class Reference:
    """A picture the service already holds: a gallery key, or the SHA-256 of its bytes."""

    key: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class UploadRequest:
    """POST /uploads: the picture a program is about to PUT, described by its bytes."""

    sha256: str  # lower-case hex
    size: int
    content_type: str


def too_large(size: int) -> ImageRejected:
    """413 naming the limit, and what to do instead."""
    return ImageRejected(
        "too_large",
        f"The request body is {size:,} bytes; the API takes at most {MAX_BODY_BYTES:,} bytes "
        f"({MAX_BODY_BYTES / 2**20:.2f} MiB) per picture, because API Gateway base64-encodes "
        "it into a 6 MB Lambda event. Downscale large pictures before sending (long side "
        "2,048 px or less, as the page does), or upload them to the collection instead.",
    )


# --------------------------------------------------------------------------- event reading


def header(event: Mapping[str, Any], name: str) -> str | None:
    """A request header by case-insensitive name (API Gateway keeps the client's casing)."""
    wanted = name.lower()
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == wanted and value is not None:
            return str(value)
    for key, values in (event.get("multiValueHeaders") or {}).items():
        if key.lower() == wanted and values:
            return str(values[0])
    return None


def body_bytes(event: Mapping[str, Any]) -> bytes:
    """The request body as bytes; API Gateway base64-encodes binary media types."""
    body = event.get("body")
    if body is None:
        return b""
    if event.get("isBase64Encoded"):
        # Refuse by the encoded length first, so an oversized body is never decoded.
        if len(body) > (MAX_BODY_BYTES + 2) // 3 * 4 + 4096:  # + room for line breaks
            raise too_large(len(body) * 3 // 4)
        data = _b64decode(body, "The request body is not valid base64.")
    else:
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if len(data) > MAX_BODY_BYTES:
        raise too_large(len(data))
    return data


def request_id(event: Mapping[str, Any]) -> str | None:
    return (event.get("requestContext") or {}).get("requestId")


def media_type(content_type: str | None) -> str:
    """`Multipart/Form-Data; boundary=x` -> `multipart/form-data`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def extract_image(event: Mapping[str, Any]) -> bytes:
    """The image bytes of a request that must carry a picture (no reference form)."""
    found = extract_picture(event)
    if isinstance(found, Reference):
        raise BadRequest('This route takes the picture itself, not a "key" or "sha256".',
                         code="missing_file")
    return found


def extract_picture(event: Mapping[str, Any]) -> bytes | Reference:
    """The picture of a POST /predict or /preview request, from any of the accepted body forms.

    - multipart/form-data: the field named `file`
    - application/json: {"image_base64": "..."} (a `data:...;base64,` prefix is allowed), or a
      reference to a picture the service holds: {"key": "gallery/<sha256>.<ext>"} or
      {"sha256": "<64 hex digits>"}
    - anything else: the body itself is the image
    """
    content_type = header(event, "content-type")
    kind = media_type(content_type)
    body = body_bytes(event)
    if kind == "multipart/form-data":
        fields = parse_multipart(body, content_type or "")
        if MULTIPART_FIELD not in fields:
            raise BadRequest(
                f"The multipart form has no field named '{MULTIPART_FIELD}'.", code="missing_file"
            )
        return fields[MULTIPART_FIELD]
    if kind == "application/json" or kind.endswith("+json"):
        return _picture_from_json(body)
    return body


def parse_json(body: bytes) -> Any:
    """A JSON document; anything unreadable, nested too deep included, is a 400 `bad_json`."""
    try:
        return json.loads(body)
    except RecursionError:
        # The stdlib parser recurses per nesting level: "[[[[..." 100,000 deep would be a 500.
        raise BadRequest("The JSON body is nested too deeply.", code="bad_json") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.", code="bad_json") from None


def _picture_from_json(body: bytes) -> bytes | Reference:
    document = parse_json(body)
    if not isinstance(document, dict):
        document = {}
    given = [name for name in ("image_base64", "key", "sha256") if name in document]
    if len(given) != 1:
        raise BadRequest(
            'The JSON body needs exactly one of the fields "image_base64" (the picture), '
            '"key" (a gallery key) or "sha256" (a picture analysed before).',
            code="missing_file",
        )
    value = document[given[0]]
    if given[0] == "key":
        if not isinstance(value, str) or not (GALLERY_KEY.match(value) or UPLOAD_KEY.match(value)):
            raise BadRequest(
                '"key" must be a gallery key (gallery/<sha256>.<extension>) or an upload key '
                "(uploads/<sha256>).", code="bad_key",
            )
        return Reference(key=value)
    if given[0] == "sha256":
        if not isinstance(value, str) or not SHA256_HEX.match(value):
            raise BadRequest('"sha256" must be 64 hexadecimal digits.', code="bad_sha256")
        return Reference(sha256=value.lower())
    if not isinstance(value, str):
        raise BadRequest('The field "image_base64" must be a string.', code="missing_file")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    return _b64decode(value, 'The field "image_base64" is not valid base64.')


def parse_upload_request(event: Mapping[str, Any], max_bytes: int) -> UploadRequest:
    """POST /uploads {"sha256": "<hex>", "size": <bytes>, "content_type": "image/jpeg"}: the
    digest and size are required, because the URL binds them (what lands under the key is
    exactly that picture); content_type defaults to application/octet-stream."""
    query_parameters(event, ())
    document = parse_json(body_bytes(event))
    if not isinstance(document, dict):
        raise BadRequest('The JSON body must be an object {"sha256", "size", "content_type"}.',
                         code="bad_upload")
    digest = document.get("sha256")
    if not isinstance(digest, str) or not SHA256_HEX.match(digest):
        raise BadRequest('"sha256" must be the SHA-256 of the picture, 64 hexadecimal digits.',
                         code="bad_sha256")
    size = document.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise BadRequest('"size" must be the picture\'s length in bytes (a positive integer).',
                         code="bad_upload")
    if size > max_bytes:
        raise ImageRejected(
            "too_large",
            f"The picture is {size:,} bytes; the service takes pictures of at most "
            f"{max_bytes:,} bytes. Downscale it (long side 2,048 px or less) first.",
        )
    content_type = document.get("content_type", DEFAULT_UPLOAD_CONTENT_TYPE)
    if not isinstance(content_type, str) or not UPLOAD_CONTENT_TYPE.match(content_type):
        raise BadRequest('"content_type" must be an image type (image/jpeg, image/png, ...) '
                         "or application/octet-stream.", code="bad_upload")
    return UploadRequest(sha256=digest.lower(), size=size, content_type=content_type)


def _b64decode(text: str | bytes, message: str) -> bytes:
    # pybase64 (SIMD): a 6 MP photo's 2.8 MB body in ~0.1 ms, where binascii takes 5-7 ms.
    # validate=True refuses anything outside the alphabet and bad padding. Gateway bodies and
    # browser data URLs are one unbroken line, so the first try almost always succeeds; only a
    # failure pays for copying the text without whitespace (MIME-style line breaks), which is
    # then validated just as strictly.
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        compact = "".join(text.split()) if isinstance(text, str) else b"".join(text.split())
        return pybase64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(message, code="invalid_base64") from None


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """Fields of a multipart/form-data body (RFC 7578), name -> raw bytes; first value wins.

    A small binary-safe parser: the stdlib email parser normalises line endings in parts, which
    would corrupt image bytes.
    """
    params = Message()
    params["content-type"] = content_type
    boundary = params.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise BadRequest(
            "The multipart Content-Type has no valid boundary.", code="bad_multipart"
        )
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    # chunks[0] is the preamble; the last chunk follows the close delimiter "--boundary--".
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise BadRequest(
            "The multipart body does not match its boundary (missing or unclosed).",
            code="bad_multipart",
        )
    fields: dict[str, bytes] = {}
    for chunk in chunks[1:-1]:
        line_end = chunk.find(b"\r\n")
        head_end = chunk.find(b"\r\n\r\n", line_end)
        if line_end < 0 or chunk[:line_end].strip(b" \t") or head_end < 0:
            raise BadRequest("A multipart part is malformed.", code="bad_multipart")
        headers = BytesHeaderParser().parsebytes(chunk[line_end + 2 : head_end + 2])
        name = headers.get_param("name", header="content-disposition")
        if isinstance(name, str) and name not in fields:
            fields[name] = chunk[head_end + 4 :]
    return fields


# --------------------------------------------------------------------------- query strings


def query_pairs(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every (name, value) of the request's query, as API Gateway decoded it."""
    multi = event.get("multiValueQueryStringParameters") or {}
    if multi:
        return [(name, str(v)) for name, values in multi.items() for v in (values or [])]
    return [(name, str(v)) for name, v in (event.get("queryStringParameters") or {}).items()]


@dataclass(frozen=True)
class PredictQuery:
    neighbors: int = DEFAULT_NEIGHBORS
    scope: str = "class"


def query_parameters(event: Mapping[str, Any], allowed: tuple[str, ...]) -> dict[str, str]:
    """Single-valued query parameters; unknown or repeated names are a 400 `bad_query`."""
    single = dict(event.get("queryStringParameters") or {})
    multi = event.get("multiValueQueryStringParameters") or {}
    for name in sorted(set(single) | set(multi)):
        if name not in allowed:
            expected = ", ".join(allowed) if allowed else "none"
            raise BadRequest(
                f"Unknown query parameter '{name}' (accepted: {expected}).", code="bad_query"
            )
        if len(multi.get(name) or ()) > 1:
            raise BadRequest(f"Query parameter '{name}' is given more than once.", code="bad_query")
    names = set(single) | set(multi)
    return {name: str(single.get(name, (multi.get(name) or [""])[0])) for name in names}


def int_parameter(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise BadRequest(
            f"Query parameter '{name}' must be an integer from {low} to {high}.", code="bad_query"
        )
    return int(text)


def parse_predict_query(event: Mapping[str, Any]) -> PredictQuery:
    params = query_parameters(event, ("neighbors", "scope"))
    neighbors = int_parameter(params, "neighbors", DEFAULT_NEIGHBORS, 0, MAX_NEIGHBORS)
    scope = params.get("scope", "class").strip().lower()
    if scope not in SCOPES:
        raise BadRequest("Query parameter 'scope' must be 'class' or 'all'.", code="bad_query")
    return PredictQuery(neighbors=neighbors, scope=scope)


WORKS_PREFIX = "/works/"


def _path_parameter(event: Mapping[str, Any], name: str, prefix: str) -> str:
    """A `{name}` path parameter: API Gateway's pathParameters, else the path after `prefix`
    (the local gateway routes by resource template too, but a test event may carry a path)."""
    given = (event.get("pathParameters") or {}).get(name)
    if given is None:
        path = str(event.get("path") or "")
        given = path[len(prefix):] if path.startswith(prefix) else ""
    return str(given)


def parse_work_key(event: Mapping[str, Any], prefix: str = WORKS_PREFIX) -> str:
    """GET /works/{key}: the work's SHA-256 (lower-case hex) from `gallery/<sha256>.<ext>`
    (URL-encoded or not: API Gateway may pass `%2F` through undecoded) or the SHA-256 itself;
    anything else is a 400 `bad_key`."""
    query_parameters(event, ())
    given = _path_parameter(event, "key", prefix)
    key = unquote(str(given)).strip()
    if SHA256_HEX.match(key):
        return key.lower()
    if GALLERY_KEY.match(key):
        return key.removeprefix("gallery/").split(".", 1)[0]
    raise BadRequest(
        "The work is named by its gallery key (gallery/<sha256>.<extension>, URL-encoded) or "
        "by the SHA-256 of its picture (64 hexadecimal digits).", code="bad_key",
    )


def parse_map_query(event: Mapping[str, Any], default: int = 500, maximum: int = 5000) -> int:
    """GET /map?limit= -> how many points to project."""
    return int_parameter(query_parameters(event, ("limit",)), "limit", default, 1, maximum)


def parse_limit(event: Mapping[str, Any], default: int, maximum: int) -> int:
    """?limit= of a list route (GET /review, /reports)."""
    return int_parameter(query_parameters(event, ("limit",)), "limit", default, 1, maximum)


REVIEW_PREFIX = "/review/"
REPORTS_PATH_PREFIX = "/reports/"
# artlens.triage.BATCH_NAME (this module is standard library only: the authorizer imports it)
BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REVIEW_FIELDS = ("decision", "type", "note")
MAX_NOTE_CHARS = 1000


@dataclass(frozen=True)
class ReviewRequest:
    sha256: str
    decision: str  # confirm | correct
    label: str | None  # `type`: the corrected type
    note: str | None


def parse_review(event: Mapping[str, Any]) -> ReviewRequest:
    """POST /review/{key} {"decision": "confirm" | "correct", "type": ..., "note": ...}."""
    sha256 = parse_work_key(event, REVIEW_PREFIX)
    document = parse_json(body_bytes(event))
    if not isinstance(document, dict):
        raise BadRequest("The body must be a JSON object.", code="bad_review")
    unknown = sorted(set(document) - set(REVIEW_FIELDS))
    if unknown:
        raise BadRequest(f"Unknown field(s) {', '.join(unknown)} (accepted: "
                         f"{', '.join(REVIEW_FIELDS)}).", code="bad_review")
    decision, label, note = (document.get(name) for name in REVIEW_FIELDS)
    if decision not in ("confirm", "correct"):
        raise BadRequest("'decision' must be 'confirm' or 'correct'.", code="bad_review")
    if decision == "correct" and not isinstance(label, str):
        raise BadRequest("A correction needs 'type', the right type.", code="bad_review")
    if decision == "confirm" and label is not None:
        raise BadRequest("'confirm' keeps the catalogued type; send no 'type'.",
                         code="bad_review")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_CHARS):
        raise BadRequest(f"'note' must be text of at most {MAX_NOTE_CHARS} characters.",
                         code="bad_review")
    return ReviewRequest(sha256, decision, label, note or None)


def parse_batch(event: Mapping[str, Any]) -> str:
    """GET /reports/{batch}: a batch name as artlens.triage makes them, else 400."""
    query_parameters(event, ())
    batch = unquote(_path_parameter(event, "batch", REPORTS_PATH_PREFIX)).strip()
    if not BATCH_NAME.match(batch):
        raise BadRequest("The report is named by its batch, as GET /reports lists them.",
                         code="bad_batch")
    return batch
