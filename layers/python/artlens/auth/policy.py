"""Who sent a request, and the answer a REQUEST authorizer gives.

`Authenticator` maps the scheme word of the Authorization header to a verifier. The handler
builds it with every scheme it accepts, explicitly (no scheme registers itself on import):

    Authenticator({"bearer": BearerVerifier(token_keys), SIGNING_SCHEME: hmac_verifier})

Scopes: a Principal carries what its token or key grants (artlens.names.SCOPES); the authorizer
hands them to the API as `requestContext.authorizer.scopes`, one space-separated string. Routes
that write ask `require_scope(event, SCOPE_REVIEW)`. A bearer token's scopes are fixed inside the
signed token, so the (cached) authorizer context is trusted for them; a signed request's scopes
are the key's at the moment the predict function verified it (artlens.auth.signing.verified_event
puts that verification's principal into the event), never the cached context's: a scope taken
away from a key stops at once, like a revocation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from artlens.api.events import header
from artlens.auth.keys import DEFAULT_SCOPES
from artlens.auth.tokens import MAX_LIFETIME_S, TokenKeySource, token_scopes, verify_token
from artlens.errors import Forbidden, Unauthorized
from artlens.names import SCOPES, SIGNING_SCHEME

BEARER_SCHEME = "Bearer"
SIGNED_PRINCIPAL_SCHEME = "hmac"  # the `scheme` of a signed request's principal
# Set (as a bool: API Gateway's own context values are strings) only by with_verified_principal,
# in the predict function, after a signed request was verified in full.
VERIFIED_FLAG = "verified"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    sub: str
    scheme: str
    expires_at: int | None = None  # a token's `exp`, so GET /whoami can say when it ends
    scopes: frozenset[str] = frozenset(DEFAULT_SCOPES)

    def context(self) -> dict[str, str | int]:
        """The authorizer context: str/int values only (API Gateway's rule); the scopes as
        one space-separated, sorted string."""
        context: dict[str, str | int] = {
            "sub": self.sub, "scheme": self.scheme, "scopes": " ".join(sorted(self.scopes)),
        }
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
        return Principal(sub=claims["sub"], scheme="bearer", expires_at=int(claims["exp"]),
                         scopes=token_scopes(claims))


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


# --------------------------------------------------------------------------- scopes in routes


def _authorizer_context(event: Mapping[str, Any]) -> Mapping[str, Any]:
    request_context = event.get("requestContext")
    context = request_context.get("authorizer") if isinstance(request_context, Mapping) else None
    return context if isinstance(context, Mapping) else {}


def is_signed_request(event: Mapping[str, Any]) -> bool:
    """Does this request claim the signing scheme, by its Authorization header or by the
    authorizer's (possibly cached) context?"""
    authorization = (header(event, "authorization") or "").strip()
    if authorization.partition(" ")[0].lower() == SIGNING_SCHEME.lower():
        return True
    return _authorizer_context(event).get("scheme") == SIGNED_PRINCIPAL_SCHEME


def with_verified_principal(event: Mapping[str, Any], principal: Principal) -> dict[str, Any]:
    """A copy of `event` whose requestContext.authorizer is `principal`'s context, marked as
    verified here: what routes read for a signed request once the predict function verified
    it (artlens.auth.signing.verified_event). The event itself is not changed."""
    request_context = dict(event.get("requestContext") or {})
    request_context["authorizer"] = {
        **principal.context(), "principalId": principal.sub, VERIFIED_FLAG: True,
    }
    return {**event, "requestContext": request_context}


def _trusted_context(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """The authorizer context, unless the request is signed and was not verified in this
    invocation: its cached context may be a captured header's, so it is refused (fail
    closed; a route reached without verification is a wiring error, logged)."""
    context = _authorizer_context(event)
    if is_signed_request(event) and context.get(VERIFIED_FLAG) is not True:
        _log.error("a signed request's principal was read before it was verified; refusing")
        raise Unauthorized("The signed request was not verified.")
    return context


def scopes_of(event: Mapping[str, Any]) -> frozenset[str]:
    """The scopes the caller holds. No `scopes` in the context (an authorizer from before
    scopes, or none at all): `predict` only. Names that are not scopes are ignored."""
    value = _trusted_context(event).get("scopes")
    if not isinstance(value, str) or not value.strip():
        return frozenset(DEFAULT_SCOPES)
    return frozenset(name for name in value.split() if name in SCOPES)


def principal_sub(event: Mapping[str, Any]) -> str | None:
    """Who sent the request (a token's `sub`, a key's id), or None when nobody authenticated
    it (no authorizer context)."""
    context = _trusted_context(event)
    for name in ("sub", "principalId"):
        value = context.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def require_scope(event: Mapping[str, Any], scope: str) -> str:
    """The caller's sub when it holds `scope`; Unauthorized (401) when nobody is known,
    Forbidden (403, insufficient_scope) when the caller lacks the scope."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")  # a programming error, not a request's
    sub = principal_sub(event)
    if sub is None:
        raise Unauthorized("This needs a token or key; the request carries none.")
    if scope not in scopes_of(event):
        raise Forbidden(f"This needs the '{scope}' scope; ask for a key or token with it.")
    return sub
