"""HMAC-SHA256 request signing for programmatic clients (the scheme is specified in
docs/signing.md; this module is its reference implementation, shared by the authorizer and the
Python client).

A request carries:
    Authorization: ArtLens-HMAC-SHA256 <signature: 64 lowercase hex>
    X-ArtLens-Key-Id, X-ArtLens-Timestamp (unix seconds), X-ArtLens-Nonce,
    X-ArtLens-Content-SHA256 (hex SHA-256 of the exact body bytes)
X-ArtLens-Signature is not used: the signature travels in Authorization, so that no two signed
requests ever share an authorizer cache entry keyed on that header.

The authorizer checks the window, the key and the signature (constant time). It never sees the
body, and API Gateway may answer a repeated Authorization header from its policy cache without
calling it at all, so the predict handler - which sees every request - calls
`verify_signed_body`: the body must match X-ArtLens-Content-SHA256, and the nonce is recorded
(artlens.auth.replay) so a replay is refused. The authorizer therefore needs no database access.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from artlens.api.events import body_bytes, header, query_pairs
from artlens.auth.keys import (
    KEY_ID_PATTERN,
    ApiKeySource,
    FileKeys,
    KeyBackend,
    SecretsManagerKeys,
    secrets_client,
)
from artlens.auth.policy import Principal
from artlens.auth.replay import NonceLedger
from artlens.digests import hmac_sha256_hex, sha256_hex
from artlens.errors import Unauthorized
from artlens.names import (
    CONTENT_SHA256_HEADER,
    KEY_ID_HEADER,
    NONCE_HEADER,
    SIGNING_SCHEME,
    TIMESTAMP_HEADER,
)
from artlens.settings import SigningSettings

SCHEME = SIGNING_SCHEME
PRINCIPAL_SCHEME = "hmac"  # the `scheme` the authorizer puts in its context
WINDOW_S = 300
CONTENT_HEADER = CONTENT_SHA256_HEADER

_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_RFC3986_UNRESERVED = "-_.~"

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- canonical form


def _encode(text: str) -> str:
    return quote(text, safe=_RFC3986_UNRESERVED)


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Decoded (name, value) pairs -> `n=v&n=v`, each side RFC 3986-encoded, sorted."""
    encoded = sorted((_encode(name), _encode(value)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_request(
    method: str, path: str, query: Iterable[tuple[str, str]], timestamp: str | int,
    nonce: str, key_id: str, content_sha256: str,
) -> str:
    return "\n".join([
        SCHEME, method.upper(), path or "/", canonical_query(query), str(timestamp), nonce,
        key_id, content_sha256.lower(),
    ])


def signature(secret: str, canonical: str) -> str:
    return hmac_sha256_hex(secret, canonical)


def sign_request(
    key_id: str, secret: str, method: str, path: str, query: Iterable[tuple[str, str]],
    body: bytes, *, now: float | None = None, nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign one request (the client side of the scheme)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_urlsafe(18)
    content = sha256_hex(body)
    canonical = canonical_request(method, path, query, timestamp, nonce, key_id, content)
    return {
        "Authorization": f"{SCHEME} {signature(secret, canonical)}",
        KEY_ID_HEADER: key_id,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        CONTENT_HEADER: content,
    }


# --------------------------------------------------------------------------- verification


def _signed_paths(event: Mapping[str, Any]) -> list[str]:
    """The path a client may have signed: `/predict`, or `/<stage>/predict` when it called the
    execute-api URL (API Gateway reports the first in `path`, the second in requestContext)."""
    paths = [event.get("path"), (event.get("requestContext") or {}).get("path")]
    return list(dict.fromkeys(p for p in paths if isinstance(p, str) and p))


class HmacVerifier:
    """The authorizer side: `(credentials, event, token keys) -> Principal` or Unauthorized."""

    def __init__(
        self, keys: ApiKeySource, *, window_s: int = WINDOW_S,
        clock: Callable[[], float] = time.time,
    ):
        self._keys = keys
        self._window_s = int(window_s)
        self._clock = clock

    def __call__(self, credentials: str, event: Mapping[str, Any]) -> Principal:
        claimed = credentials.strip().lower()
        key_id = header(event, KEY_ID_HEADER) or ""
        timestamp = header(event, TIMESTAMP_HEADER) or ""
        nonce = header(event, NONCE_HEADER) or ""
        content = (header(event, CONTENT_HEADER) or "").lower()
        if not (
            _HEX64.match(claimed) and KEY_ID_PATTERN.match(key_id) and _TIMESTAMP.match(timestamp)
            and _NONCE.match(nonce) and _HEX64.match(content)
        ):
            raise Unauthorized("The request signature headers are missing or malformed.",
                               code="bad_signature")
        if abs(self._clock() - int(timestamp)) > self._window_s:
            raise Unauthorized("The request timestamp is outside the allowed window.",
                               code="stale_request")
        key = self._keys.get(key_id)
        if key is None or not key.active:
            raise Unauthorized("The API key is unknown or revoked.", code="bad_key")
        method = str(event.get("httpMethod") or "")
        pairs = query_pairs(event)
        matched = False
        for path in _signed_paths(event):
            canonical = canonical_request(method, path, pairs, timestamp, nonce, key_id, content)
            # compare_digest on every candidate: the time taken does not depend on the secret.
            matched |= hmac.compare_digest(signature(key.secret, canonical), claimed)
        if not matched:
            raise Unauthorized("The request signature does not match.", code="bad_signature")
        return Principal(sub=key_id, scheme=PRINCIPAL_SCHEME)


def verify_signed_body(
    event: Mapping[str, Any], nonces: NonceLedger, *, window_s: int = WINDOW_S
) -> None:
    """In the predict handler, for signed requests: the body must be the one the signature
    covers, and the request must not have been seen before (its nonce is recorded)."""
    context = (event.get("requestContext") or {}).get("authorizer") or {}
    if context.get("scheme") != PRINCIPAL_SCHEME:
        return
    claimed = (header(event, CONTENT_HEADER) or "").lower().encode()
    actual = sha256_hex(body_bytes(event)).encode()
    if not hmac.compare_digest(claimed, actual):
        raise Unauthorized(
            "The body does not match X-ArtLens-Content-SHA256.", code="body_hash_mismatch"
        )
    key_id = header(event, KEY_ID_HEADER) or ""
    nonce = header(event, NONCE_HEADER) or ""
    timestamp = header(event, TIMESTAMP_HEADER) or ""
    if not (_NONCE.match(nonce) and _TIMESTAMP.match(timestamp)):
        raise Unauthorized("The request signature headers are missing or malformed.",
                           code="bad_signature")
    # The ledger being down propagates as Unavailable (503): refused, never let through.
    if not nonces.remember(key_id, nonce, int(timestamp) + window_s):
        raise Unauthorized("This signed request was already used.", code="replayed_request")


# --------------------------------------------------------------------------- wiring


def verifier_from_settings(signing: SigningSettings) -> HmacVerifier:
    """The verifier over the API keys the settings name (Secrets Manager or a local file)."""
    backend: KeyBackend
    if signing.api_keys_secret_arn:
        backend = SecretsManagerKeys(secrets_client(), signing.api_keys_secret_arn)
    else:
        assert signing.api_keys_file is not None  # SigningSettings guarantees exactly one
        backend = FileKeys(signing.api_keys_file)
    return HmacVerifier(ApiKeySource(backend, signing.api_keys_ttl_s))


class LazyVerifier:
    """Builds the verifier on the first signed request, so a container that only ever sees
    bearer tokens never reads the key secret, and a configuration error
    denies (and is logged) instead of failing the authorizer's cold start."""

    def __init__(self, build: Callable[[], HmacVerifier]):
        self._build = build
        self._verifier: HmacVerifier | None = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._verifier = None

    def __call__(self, credentials: str, event: Mapping[str, Any]) -> Principal:
        with self._lock:
            if self._verifier is None:
                try:
                    self._verifier = self._build()
                except Exception as exc:
                    _log.error("request signing is not configured: %s: %s",
                               type(exc).__name__, exc)
                    raise Unauthorized("Signed requests are not available.") from None
            verifier = self._verifier
        return verifier(credentials, event)
