"""API Gateway REQUEST authorizer: a bearer JWT (HS256, exp) or a signed request -> an Allow
policy for the whole API.

Anything that is not a valid credential -- a missing header, a bad token, an unreadable
signing key, even a configuration error -- raises Exception("Unauthorized"), the exact message
API Gateway turns into a 401; the authorizer fails closed and never answers 500. The one refusal
a client is told the reason of is a signed request outside the time window (`stale_request`,
docs/signing.md): an explicit Deny carrying that code, which the ACCESS_DENIED gateway response
turns into 401 {"error": "stale_request"}.

Its Allow carries the principal's context (artlens.auth.policy.Principal.context): sub, scheme,
a token's exp, and `scopes` ("predict review": what the token or key grants), which routes read
through artlens.auth.policy.require_scope. It is cached by API Gateway on the Authorization
header; nothing relies on that cache being short: a token's scopes are sealed in the token, and
the predict handler verifies every signed request in full again, taking the key's scopes from
that verification (artlens.auth.signing.verified_event).

Start-up (artlens.wiring): settings (only the token part: TOKEN_SECRET_ARN or
ARTLENS_TOKEN_KEY[_FILE]) and the authenticator are built on the first invocation of a container
and cached; the token key is cached inside TokenKeySource with a TTL so rotations propagate,
and the signed-request verifier is built on the first signed request. The import closure holds
neither numpy nor psycopg2 (tests/unit/test_authorizer.py), to keep the cold start small.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.logging import correlation_paths

from artlens.auth.policy import (
    BEARER_SCHEME,
    Authenticator,
    BearerVerifier,
    allow_policy,
    deny_policy,
)
from artlens.auth.signing import LazyVerifier, verifier_from_settings
from artlens.auth.tokens import TokenKeySource
from artlens.errors import ArtLensError
from artlens.logs import handler_logger
from artlens.names import SIGNING_SCHEME
from artlens.settings import Settings, SigningSettings
from artlens.wiring import Lazy

logger = handler_logger("artlens-authorizer")
# Refusals whose code the client sees (documented in docs/signing.md); every other one is a
# bare 401, so that the answer says nothing about which keys exist.
TOLD_REASONS = frozenset({"stale_request"})


@dataclass(frozen=True)
class Deps:
    token_keys: TokenKeySource  # cached key, re-read after its TTL (rotation)
    authenticator: Authenticator


def build() -> Deps:
    settings = Settings.from_env(os.environ, needs=("token",))
    logger.setLevel(settings.log_level)
    token_keys = TokenKeySource.from_settings(settings)
    # Built on the first signed request: a bearer-only container never reads the API keys.
    signed = LazyVerifier(lambda: verifier_from_settings(SigningSettings.from_env(os.environ)))
    authenticator = Authenticator({
        BEARER_SCHEME: BearerVerifier(token_keys, settings.token_max_lifetime_s),
        SIGNING_SCHEME: signed,
    })
    return Deps(token_keys=token_keys, authenticator=authenticator)


deps = Lazy(build)
reset = deps.reset  # tests that change the environment


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        principal = deps().authenticator.authenticate(event)
        return allow_policy(principal.sub, event.get("methodArn", ""), principal.context())
    except ArtLensError as exc:
        # The reason is logged, never the credential itself.
        logger.info("request denied", extra={"reason": exc.code, "detail": exc.message})
        if exc.code in TOLD_REASONS:
            return deny_policy(event.get("methodArn", ""), exc.code, exc.message)
    except Exception:
        logger.exception("authorizer failed; denying")
    raise Exception("Unauthorized")  # noqa: TRY002 - the exact contract with API Gateway
