"""Authentication: bearer JWTs (HS256 with exp), the signing key's source, and the policy a
REQUEST authorizer returns.

`authenticate(event, key_source)` dispatches on the scheme of the Authorization header through
`AUTH_SCHEMES`; a second scheme (HMAC request signing, artlens.signing) plugs in with
`register_scheme("<scheme>", verifier)` without touching the authorizer handler.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artlens.errors import Unauthorized
from artlens.http import header

ALGORITHM = "HS256"
MAX_TOKEN_LENGTH = 4096  # our tokens are ~200 bytes; anything huge is an attack on the parser
MIN_KEY_BYTES = 32  # RFC 7518: an HS256 key at least as long as the hash
DEFAULT_KEY_TTL_S = 300.0

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- tokens


def mint_token(key: str | bytes, sub: str, ttl_s: int, *, now: float | None = None) -> str:
    """A signed HS256 JWT for `sub` that expires after `ttl_s` seconds."""
    if not sub:
        raise ValueError("sub must not be empty")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    issued = int(time.time() if now is None else now)
    claims = {"sub": sub, "iat": issued, "exp": issued + int(ttl_s)}
    import jwt  # lazily: PyJWT pulls in `cryptography`, which the predict cold start never needs

    return jwt.encode(claims, _key_bytes(key), algorithm=ALGORITHM)


def verify_token(key: str | bytes, token: str) -> dict[str, Any]:
    """Claims of a valid token. Expired, forged, other-alg or exp-less tokens: Unauthorized."""
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
    return claims


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
    def from_settings(cls, settings: Any, *, secrets_client: Any = None) -> TokenKeySource:
        """Build from artlens.settings.Settings (a Secrets Manager client is made only on AWS)."""
        if settings.token_secret_arn:
            if secrets_client is None:
                import boto3
                from botocore.config import Config

                # Short timeouts: the authorizer must answer (deny) long before API Gateway's
                # own timeout if Secrets Manager is unreachable.
                secrets_client = boto3.client(
                    "secretsmanager",
                    config=Config(connect_timeout=2, read_timeout=2, retries={"max_attempts": 2}),
                )
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


# --------------------------------------------------------------------------- authenticate


@dataclass(frozen=True)
class Principal:
    sub: str
    scheme: str

    def context(self) -> dict[str, str]:
        return {"sub": self.sub, "scheme": self.scheme}


# verifier(credentials after the scheme word, the authorizer event, key source) -> Principal
Verifier = Callable[[str, Mapping[str, Any], TokenKeySource], Principal]
AUTH_SCHEMES: dict[str, Verifier] = {}


def register_scheme(scheme: str, verifier: Verifier) -> None:
    AUTH_SCHEMES[scheme.lower()] = verifier


def _verify_bearer(credentials: str, event: Mapping[str, Any], keys: TokenKeySource) -> Principal:
    claims = verify_token(keys.key(), credentials)
    return Principal(sub=claims["sub"], scheme="bearer")


register_scheme("bearer", _verify_bearer)


def authenticate(event: Mapping[str, Any], keys: TokenKeySource) -> Principal:
    """Who sent this request (REQUEST authorizer or proxy event)? Raises Unauthorized."""
    authorization = header(event, "authorization")
    if not authorization:
        raise Unauthorized("The Authorization header is missing.")
    scheme, _, credentials = authorization.strip().partition(" ")
    verifier = AUTH_SCHEMES.get(scheme.lower())
    if verifier is None or not credentials.strip():
        raise Unauthorized("The Authorization scheme is not supported.")
    return verifier(credentials.strip(), event, keys)


# --------------------------------------------------------------------------- policy

_METHOD_ARN = re.compile(
    r"^(?P<prefix>arn:[\w-]+:execute-api:[\w-]+:\d{12}:[A-Za-z0-9]+)/(?P<stage>[^/]+)/.+$"
)


def api_wildcard_resource(method_arn: str) -> str:
    """`arn:aws:execute-api:r:acct:api/stage/POST/predict` -> `arn:...:api/stage/*/*`.

    The authorizer's answer is cached per token, so it must allow every route of the API or a
    cached policy from POST /predict would 403 the same user's GET /map.
    """
    match = _METHOD_ARN.match(method_arn or "")
    if match is None:
        raise Unauthorized("The request's method ARN is not recognised.")
    return f"{match['prefix']}/{match['stage']}/*/*"


def allow_policy(
    principal_id: str, method_arn: str, context: Mapping[str, str | int | bool] | None = None
) -> dict[str, Any]:
    """The Lambda authorizer answer that allows the whole API for this principal."""
    return {
        "principalId": principal_id,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Action": "execute-api:Invoke",
                    "Effect": "Allow",
                    "Resource": api_wildcard_resource(method_arn),
                }
            ],
        },
        "context": dict(context or {}),
    }
