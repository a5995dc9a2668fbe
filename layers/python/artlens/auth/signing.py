"""HMAC-SHA256 request signing for programmatic clients (the scheme is specified in
docs/signing.md; this module is its reference implementation, shared by the authorizer, the
predict handler and the Python client).

A request carries:
    Authorization: ArtLens-HMAC-SHA256 <signature: 64 lowercase hex>
    X-ArtLens-Key-Id, X-ArtLens-Timestamp (unix seconds), X-ArtLens-Nonce,
    X-ArtLens-Content-SHA256 (lowercase hex SHA-256 of the exact body bytes),
    X-ArtLens-Signed-Headers (`content-type;host`: the other headers the signature covers)

Where it is checked: EVERY signed request is verified in full by the predict handler
(`verify_signed_body`, which sees every request): the headers' form, the time window, the key
(re-read every API_KEYS_TTL_S, so a revoked key stops within that bound), the signature over
the canonical request (method, path, query, signed headers, timestamp, nonce, key id, body
hash), the body against its hash, and the nonce (recorded once, artlens.auth.replay). API
Gateway may answer a repeated Authorization header from its policy cache without calling the
authorizer, so nothing the authorizer decided is trusted there. The authorizer runs the same
checks but the body and the nonce (it sees neither the body nor the database) to turn
unsigned traffic away before it costs a predict invocation.

The principal of a signed request carries its key's scopes as read by that full verification:
routes get it through `verified_event` (artlens.auth.policy.require_scope reads it there).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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
from artlens.auth.policy import (
    SIGNED_PRINCIPAL_SCHEME,
    Principal,
    is_signed_request,
    with_verified_principal,
)
from artlens.auth.replay import NonceLedger
from artlens.digests import hmac_sha256_hex, sha256_hex
from artlens.errors import Unauthorized
from artlens.names import (
    CONTENT_SHA256_HEADER,
    KEY_ID_HEADER,
    NONCE_HEADER,
    SIGNED_HEADERS_HEADER,
    SIGNING_SCHEME,
    TIMESTAMP_HEADER,
)
from artlens.settings import SigningSettings

SCHEME = SIGNING_SCHEME
PRINCIPAL_SCHEME = SIGNED_PRINCIPAL_SCHEME  # the `scheme` the authorizer puts in its context
WINDOW_S = 300
CONTENT_HEADER = CONTENT_SHA256_HEADER
# Always signed; content-type too whenever the request has one.
REQUIRED_SIGNED_HEADERS = ("host",)
MAX_SIGNED_HEADERS = 16

_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
# Canonical hex only: lowercase, exactly 64 digits. "ABC..." or a 63-digit value is refused,
# never normalised, so one request has exactly one accepted spelling.
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_SIGNED_HEADERS = re.compile(r"^[a-z0-9-]{1,64}(;[a-z0-9-]{1,64})*$")
_SPACES = re.compile(r"\s+")
_RFC3986_UNRESERVED = "-_.~"

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- canonical form


def _encode(text: str) -> str:
    return quote(text, safe=_RFC3986_UNRESERVED)


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Decoded (name, value) pairs -> `n=v&n=v`, each side RFC 3986-encoded, sorted."""
    encoded = sorted((_encode(name), _encode(value)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_header_value(value: str) -> str:
    """Trimmed, runs of whitespace made one space (proxies may refold a header)."""
    return _SPACES.sub(" ", value.strip())


def canonical_request(
    method: str, path: str, query: Iterable[tuple[str, str]],
    headers: Sequence[tuple[str, str]], timestamp: str | int, nonce: str, key_id: str,
    content_sha256: str,
) -> str:
    """The string that is signed. `headers`: the signed headers as (lowercase name, value),
    sorted by name; their names joined with `;` are the X-ArtLens-Signed-Headers value."""
    return "\n".join([
        SCHEME, method.upper(), path or "/", canonical_query(query),
        *(f"{name}:{canonical_header_value(value)}" for name, value in headers),
        ";".join(name for name, _ in headers),
        str(timestamp), nonce, key_id, content_sha256,
    ])


def signature(secret: str, canonical: str) -> str:
    return hmac_sha256_hex(secret, canonical)


def sign_request(
    key_id: str, secret: str, method: str, path: str, query: Iterable[tuple[str, str]],
    body: bytes, *, host: str, content_type: str | None = None, now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign one request (the client side of the scheme), Host and
    Content-Type included: send them exactly as returned."""
    if not host:
        raise ValueError("the Host the request is sent to is signed: give host")
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_urlsafe(18)
    content = sha256_hex(body)
    signed = {"host": host}
    if content_type is not None:
        signed["content-type"] = content_type
    headers = sorted(signed.items())
    canonical = canonical_request(
        method, path, list(query), headers, timestamp, nonce, key_id, content
    )
    sent = {
        "Authorization": f"{SCHEME} {signature(secret, canonical)}",
        KEY_ID_HEADER: key_id,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        CONTENT_HEADER: content,
        SIGNED_HEADERS_HEADER: ";".join(name for name, _ in headers),
        "Host": host,
    }
    if content_type is not None:
        sent["Content-Type"] = content_type
    return sent


# --------------------------------------------------------------------------- verification


def _signed_paths(event: Mapping[str, Any]) -> list[str]:
    """The path a client may have signed: `/predict`, or `/<stage>/predict` when it called the
    execute-api URL (API Gateway reports the first in `path`, the second in requestContext)."""
    paths = [event.get("path"), (event.get("requestContext") or {}).get("path")]
    return list(dict.fromkeys(p for p in paths if isinstance(p, str) and p))


def _malformed() -> Unauthorized:
    return Unauthorized("The request signature headers are missing or malformed.",
                        code="bad_signature")


def _one_header(event: Mapping[str, Any], name: str) -> str | None:
    """A header that must appear at most once: two different values of a signed header would
    let the signer and the server read different requests."""
    wanted = name.lower()
    values = {
        str(value) for key, many in (event.get("multiValueHeaders") or {}).items()
        if key.lower() == wanted for value in (many or []) if value is not None
    }
    if len(values) > 1:
        raise _malformed()
    return header(event, name)


@dataclass(frozen=True)
class SignedParts:
    """The signing headers of one request, checked for form only."""

    claimed: str
    key_id: str
    timestamp: str
    nonce: str
    content: str
    headers: tuple[tuple[str, str], ...]


def signed_parts(event: Mapping[str, Any]) -> SignedParts:
    """Parse (strictly) the Authorization value and the signing headers; Unauthorized else."""
    authorization = _one_header(event, "authorization") or ""
    scheme, _, claimed = authorization.partition(" ")
    values = {
        name: _one_header(event, name) or ""
        for name in (KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, CONTENT_HEADER,
                     SIGNED_HEADERS_HEADER)
    }
    names = values[SIGNED_HEADERS_HEADER]
    if not (
        scheme.lower() == SCHEME.lower() and _HEX64.match(claimed)
        and KEY_ID_PATTERN.match(values[KEY_ID_HEADER])
        and _TIMESTAMP.match(values[TIMESTAMP_HEADER]) and _NONCE.match(values[NONCE_HEADER])
        and _HEX64.match(values[CONTENT_HEADER]) and _SIGNED_HEADERS.match(names)
    ):
        raise _malformed()
    listed = names.split(";")
    if (
        listed != sorted(set(listed)) or len(listed) > MAX_SIGNED_HEADERS
        or not set(REQUIRED_SIGNED_HEADERS) <= set(listed)
        or (_one_header(event, "content-type") is not None and "content-type" not in listed)
    ):
        raise Unauthorized("Host and Content-Type must be among the signed headers.",
                           code="bad_signature")
    headers = []
    for name in listed:
        value = _one_header(event, name)
        if value is None:
            raise _malformed()
        headers.append((name, value))
    return SignedParts(claimed, values[KEY_ID_HEADER], values[TIMESTAMP_HEADER],
                       values[NONCE_HEADER], values[CONTENT_HEADER], tuple(headers))


def is_signed(event: Mapping[str, Any]) -> bool:
    """Does this request claim the signing scheme, by its header or by the authorizer's
    (possibly cached) context? Either way it is verified in full."""
    return is_signed_request(event)


class HmacVerifier:
    """Verifies signed requests against the API keys. `__call__` is the authorizer side (no
    body, no nonce); `verify_request` is the predict side: everything."""

    def __init__(
        self, keys: ApiKeySource, *, window_s: int = WINDOW_S,
        clock: Callable[[], float] = time.time,
    ):
        self._keys = keys
        self._window_s = int(window_s)
        self._clock = clock

    @property
    def window_s(self) -> int:
        return self._window_s

    def __call__(self, credentials: str, event: Mapping[str, Any]) -> Principal:
        principal, parts = self.verify_signature(event)
        if credentials != parts.claimed:  # both come from this request's Authorization
            raise _malformed()
        return principal

    def verify_signature(self, event: Mapping[str, Any]) -> tuple[Principal, SignedParts]:
        """Form, time window, key, signature (constant time)."""
        parts = signed_parts(event)
        if abs(self._clock() - int(parts.timestamp)) > self._window_s:
            raise Unauthorized("The request timestamp is outside the allowed window of "
                               f"{self._window_s} s; check the clock.", code="stale_request")
        key = self._keys.get(parts.key_id)
        if key is None or not key.active:
            raise Unauthorized("The API key is unknown or revoked.", code="bad_key")
        method = str(event.get("httpMethod") or "")
        pairs = query_pairs(event)
        matched = False
        for path in _signed_paths(event):
            canonical = canonical_request(method, path, pairs, parts.headers, parts.timestamp,
                                          parts.nonce, parts.key_id, parts.content)
            # compare_digest on every candidate: the time taken does not depend on the secret.
            matched |= hmac.compare_digest(signature(key.secret, canonical), parts.claimed)
        if not matched:
            raise Unauthorized("The request signature does not match.", code="bad_signature")
        # The key's scopes as read now: a scope taken away stops with the next key read.
        principal = Principal(sub=parts.key_id, scheme=PRINCIPAL_SCHEME,
                              scopes=frozenset(key.scopes))
        return principal, parts

    def verify_request(self, event: Mapping[str, Any], nonces: NonceLedger) -> Principal:
        """All of it, as the predict handler must: signature, then body, then the nonce."""
        principal, parts = self.verify_signature(event)
        actual = sha256_hex(body_bytes(event))
        if not hmac.compare_digest(parts.content.encode(), actual.encode()):
            raise Unauthorized(
                "The body does not match X-ArtLens-Content-SHA256.", code="body_hash_mismatch"
            )
        # The ledger being down propagates as Unavailable (503): refused, never let through.
        if not nonces.remember(parts.key_id, parts.nonce, int(parts.timestamp) + self._window_s):
            raise Unauthorized("This signed request was already used.", code="replayed_request")
        return principal


class SignedRequests:
    """The predict handler's view of signed requests: the nonce ledger plus the verifier, built
    on the first signed request (a function that only sees bearer tokens never reads the API
    keys; a configuration error refuses signed requests, logged, and is retried).

    It is also a NonceLedger (remember delegates), so it can stand wherever the ledger was
    handed in: `PredictApi(..., nonces=SignedRequests(PostgresNonces(db), build), ...)`.
    """

    def __init__(self, nonces: NonceLedger, build: Callable[[], HmacVerifier]):
        self.nonces = nonces
        self._verifier = LazyVerifier(build)

    @classmethod
    def from_env(cls, nonces: NonceLedger, environ: Mapping[str, str]) -> SignedRequests:
        """For a handler: the keys the environment names (API_KEYS_*), read lazily."""
        snapshot = dict(environ)
        return cls(nonces, lambda: verifier_from_settings(SigningSettings.from_env(snapshot)))

    def remember(self, key_id: str, nonce: str, expires_at: float) -> bool:
        return self.nonces.remember(key_id, nonce, expires_at)

    def verifier(self) -> HmacVerifier:
        return self._verifier.get()

    def verify(self, event: Mapping[str, Any]) -> Principal:
        return self.verifier().verify_request(event, self.nonces)


def verify_signed_body(event: Mapping[str, Any], nonces: NonceLedger) -> Principal | None:
    """In the predict handler, on every request: a request that claims the signing scheme (by
    its Authorization header or by the authorizer's context) is verified in full - whatever
    API Gateway cached - and its principal (the key's id and its scopes now) returned; None
    for a request that is not signed. `nonces` must be a SignedRequests (it holds the keys); a
    bare ledger cannot check a signature, so signed requests are then refused (fail closed)."""
    if not is_signed(event):
        return None
    if not isinstance(nonces, SignedRequests):
        _log.error("signed request refused: the predict handler was given no API keys")
        raise Unauthorized("Signed requests are not available.")
    return nonces.verify(event)


def verified_event(event: Mapping[str, Any], nonces: NonceLedger) -> Mapping[str, Any]:
    """verify_signed_body, then the event the routes should see: for a signed request a copy
    whose authorizer context is the verified principal's (its key's scopes now, not the cached
    ones); any other event unchanged. Routes then call artlens.auth.policy.require_scope."""
    principal = verify_signed_body(event, nonces)
    return event if principal is None else with_verified_principal(event, principal)


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

    def get(self) -> HmacVerifier:
        with self._lock:
            if self._verifier is None:
                try:
                    self._verifier = self._build()
                except Exception as exc:
                    _log.error("request signing is not configured: %s: %s",
                               type(exc).__name__, exc)
                    raise Unauthorized("Signed requests are not available.") from None
            return self._verifier

    def __call__(self, credentials: str, event: Mapping[str, Any]) -> Principal:
        return self.get()(credentials, event)
