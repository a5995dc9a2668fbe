"""Bearer tokens: HS256 JWTs with `exp` and `scope`, and where their signing key comes from
(Secrets Manager on AWS, a literal or a file locally).

`scope` is written OAuth 2 style (RFC 6749 section 3.3, RFC 9068): one string of space-separated
names, each one of artlens.names.SCOPES. A token without it (minted before scopes existed)
grants `predict` only; a `scope` that is not a string or names an unknown scope is refused
rather than read generously."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from artlens.auth.keys import DEFAULT_SCOPES, validate_scopes
from artlens.auth.keys import secrets_client as make_secrets_client
from artlens.errors import Unauthorized
from artlens.names import SCOPES
from artlens.settings import Settings

ALGORITHM = "HS256"
MAX_TOKEN_LENGTH = 4096  # our tokens are ~200 bytes; anything huge is an attack on the parser
MIN_KEY_BYTES = 32  # RFC 7518: an HS256 key at least as long as the hash
DEFAULT_KEY_TTL_S = 300.0
# No token lives longer than this (from now, and from its iat): a leaked long-lived token is
# refused however it was minted. Settings.token_max_lifetime_s (TOKEN_MAX_LIFETIME_S) lowers it.
MAX_LIFETIME_S = 30 * 24 * 3600

_log = logging.getLogger(__name__)


def mint_token(
    key: str | bytes, sub: str, ttl_s: int, *, scopes: Iterable[str] = DEFAULT_SCOPES,
    now: float | None = None,
) -> str:
    """A signed HS256 JWT for `sub` granting `scopes` that expires after `ttl_s` seconds.
    ValueError for an empty sub, a lifetime out of bounds, or no / an unknown scope."""
    if not sub:
        raise ValueError("sub must not be empty")
    if ttl_s <= 0 or ttl_s > MAX_LIFETIME_S:
        raise ValueError(f"ttl_s must be between 1 and {MAX_LIFETIME_S} seconds")
    granted = validate_scopes(scopes)
    issued = int(time.time() if now is None else now)
    claims = {"sub": sub, "iat": issued, "exp": issued + int(ttl_s), "scope": " ".join(granted)}
    import jwt  # lazily: PyJWT pulls in `cryptography`, which the predict cold start never needs

    return jwt.encode(claims, _key_bytes(key), algorithm=ALGORITHM)


def verify_token(
    key: str | bytes, token: str, *, max_lifetime_s: int = MAX_LIFETIME_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Claims of a valid token. Expired, forged, other-alg or exp-less tokens, an `exp`/`iat`
    that is not an integer (PyJWT would read "9999999999" as a number), a token that would
    live longer than `max_lifetime_s`, and a malformed `scope` (see token_scopes):
    Unauthorized."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("The token is missing or too long.")
    import jwt  # lazily, as in mint_token

    try:
        claims = jwt.decode(
            token,
            _key_bytes(key),
            algorithms=[ALGORITHM],  # pinned: "none" and asymmetric algs are refused
            options={"require": ["exp", "sub"], "verify_exp": True, "verify_signature": True},
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"The token is not valid ({type(exc).__name__}).") from None
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise Unauthorized("The token has no subject.")
    exp, iat = claims.get("exp"), claims.get("iat")
    if type(exp) is not int or (iat is not None and type(iat) is not int):
        raise Unauthorized("The token's exp and iat must be integers.")
    current = time.time() if now is None else now
    if exp - current > max_lifetime_s or (iat is not None and exp - iat > max_lifetime_s):
        raise Unauthorized("The token lives longer than the allowed maximum.")
    token_scopes(claims)  # a malformed scope refuses the token here, not at the route
    return claims


def token_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes a token grants: its space-separated `scope` claim; `predict` alone when it
    has none. Not a string, empty, or an unknown name: Unauthorized."""
    if "scope" not in claims:
        return frozenset(DEFAULT_SCOPES)
    value = claims["scope"]
    if not isinstance(value, str):
        raise Unauthorized("The token's scope claim must be one string of space-separated "
                           "scope names.")
    names = value.split()
    if not names:
        raise Unauthorized("The token's scope claim names no scope.")
    unknown = sorted({name for name in names if name not in SCOPES})
    if unknown:
        # Names are cut short: the message must not echo a long attacker-chosen string.
        shown = ", ".join(repr(name[:32]) for name in unknown[:3])
        raise Unauthorized(f"The token names an unknown scope ({shown}); known scopes: "
                           f"{', '.join(SCOPES)}.")
    return frozenset(names)


def _key_bytes(key: str | bytes) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        raise ValueError(f"the token signing key must be at least {MIN_KEY_BYTES} bytes")
    return raw


# --------------------------------------------------------------------------- signing key


class TokenKeySource:
    """Where the HS256 key comes from: Secrets Manager (AWS) or a literal / file (local).

    The Secrets Manager value is cached per container for `ttl_s` so a rotation reaches every
    container within that time without a call per request. If the secret cannot be read the
    request is refused (Unauthorized): failing closed, never a 500 and never an allow.
    """

    def __init__(
        self,
        *,
        secret_arn: str | None = None,
        secrets_client: Any = None,
        literal: str | bytes | None = None,
        file: str | Path | None = None,
        ttl_s: float = DEFAULT_KEY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        if sum(x is not None for x in (secret_arn, literal, file)) != 1:
            raise ValueError("give exactly one of secret_arn, literal, file")
        if secret_arn is not None and secrets_client is None:
            raise ValueError("secret_arn needs a secrets_client")
        self._secret_arn = secret_arn
        self._client = secrets_client
        self._literal = literal
        self._file = Path(file) if file is not None else None
        self._ttl_s = ttl_s
        self._clock = clock
        self._cached: bytes | None = None
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, secrets_client: Any = None
    ) -> TokenKeySource:
        """Build from artlens.settings.Settings (a Secrets Manager client is made only on AWS)."""
        if settings.token_secret_arn:
            if secrets_client is None:
                secrets_client = make_secrets_client()
            return cls(secret_arn=settings.token_secret_arn, secrets_client=secrets_client)
        if settings.token_key:
            return cls(literal=settings.token_key)
        return cls(file=settings.token_key_file)

    def key(self) -> bytes:
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._fetched_at < self._ttl_s:
                return self._cached
            key = self._load()
            if len(key) < MIN_KEY_BYTES:
                _log.error("token signing key is shorter than %d bytes; refusing", MIN_KEY_BYTES)
                raise Unauthorized("Authentication is not available.")
            self._cached, self._fetched_at = key, now
            return key

    def _load(self) -> bytes:
        if self._literal is not None:
            return _key_bytes_unchecked(self._literal)
        if self._file is not None:
            try:
                return self._file.read_bytes().strip()
            except OSError as exc:
                _log.error("cannot read token key file: %s", type(exc).__name__)
                raise Unauthorized("Authentication is not available.") from None
        try:
            answer = self._client.get_secret_value(SecretId=self._secret_arn)
        except Exception as exc:  # boto raises many kinds: endpoint, throttling, access denied
            _log.error("cannot read the token signing secret: %s", type(exc).__name__)
            raise Unauthorized("Authentication is not available.") from None
        return _key_bytes_unchecked(_secret_value(answer))


def _secret_value(answer: Mapping[str, Any]) -> str | bytes:
    """A secret holds the key as plain text, or as JSON {"key": ...}, or as binary."""
    text = answer.get("SecretString")
    if text is None:
        return answer.get("SecretBinary") or b""
    try:
        document = json.loads(text)
    except ValueError:
        return text
    if isinstance(document, dict) and isinstance(document.get("key"), str):
        return document["key"]
    return text


def _key_bytes_unchecked(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)
