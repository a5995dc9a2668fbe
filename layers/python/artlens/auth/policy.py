"""Who sent a request, and the answer a REQUEST authorizer gives.

`Authenticator` maps the scheme word of the Authorization header to a verifier. The handler
builds it with every scheme it accepts, explicitly (no scheme registers itself on import):

    Authenticator({"bearer": BearerVerifier(token_keys), SIGNING_SCHEME: hmac_verifier})
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from artlens.api.events import header
from artlens.auth.tokens import MAX_LIFETIME_S, TokenKeySource, verify_token
from artlens.errors import Unauthorized

BEARER_SCHEME = "Bearer"


@dataclass(frozen=True)
class Principal:
    sub: str
    scheme: str
    expires_at: int | None = None  # a token's `exp`, so GET /whoami can say when it ends

    def context(self) -> dict[str, str | int]:
        context: dict[str, str | int] = {"sub": self.sub, "scheme": self.scheme}
        if self.expires_at is not None:
            context["exp"] = self.expires_at
        return context


# verifier(credentials after the scheme word, the authorizer event) -> Principal
Verifier = Callable[[str, Mapping[str, Any]], Principal]


class BearerVerifier:
    """`Authorization: Bearer <JWT>` signed with the token key, living at most
    `max_lifetime_s`."""

    def __init__(self, keys: TokenKeySource, max_lifetime_s: int = MAX_LIFETIME_S):
        self._keys = keys
        self._max_lifetime_s = max_lifetime_s

    def __call__(self, credentials: str, event: Mapping[str, Any]) -> Principal:
        claims = verify_token(self._keys.key(), credentials, max_lifetime_s=self._max_lifetime_s)
        return Principal(sub=claims["sub"], scheme="bearer", expires_at=int(claims["exp"]))


class Authenticator:
    """Who sent this request (REQUEST authorizer or proxy event)? Raises Unauthorized."""

    def __init__(self, schemes: Mapping[str, Verifier]):
        self._schemes = {scheme.lower(): verifier for scheme, verifier in schemes.items()}

    @property
    def schemes(self) -> tuple[str, ...]:
        return tuple(self._schemes)

    def authenticate(self, event: Mapping[str, Any]) -> Principal:
        authorization = header(event, "authorization")
        if not authorization:
            raise Unauthorized("The Authorization header is missing.")
        scheme, _, credentials = authorization.strip().partition(" ")
        verifier = self._schemes.get(scheme.lower())
        if verifier is None or not credentials.strip():
            raise Unauthorized("The Authorization scheme is not supported.")
        return verifier(credentials.strip(), event)


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


def deny_policy(method_arn: str, error: str, message: str) -> dict[str, Any]:
    """An explicit Deny of this one method, carrying the documented error code: API Gateway
    answers it with its ACCESS_DENIED gateway response, whose template (infra) writes
    `{"error": "$context.authorizer.error", ...}` with status 401; the local gateway does the
    same. Used only for reasons a client must be told (a stale signed request: fix the clock)."""
    return {
        "principalId": "denied",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": method_arn or "*"}
            ],
        },
        "context": {"error": error, "message": message},
    }
