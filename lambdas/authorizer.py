"""API Gateway REQUEST authorizer: Bearer JWT (HS256, exp) -> Allow policy for the whole API.

Anything that is not a valid credential -- a missing header, a bad token, an unreadable
signing key, even a configuration error -- raises Exception("Unauthorized"), the exact message
API Gateway turns into a 401; the authorizer fails closed and never answers 500.

Cold start: settings (only the token part: TOKEN_SECRET_ARN or ARTLENS_TOKEN_KEY[_FILE]) and the
key source are built on the first invocation of a container and cached; the key itself is
cached inside TokenKeySource with a TTL so rotations propagate.

A second scheme (HMAC request signing) registers itself in artlens.auth.AUTH_SCHEMES; this
handler does not change.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths

from artlens.auth import TokenKeySource, allow_policy, authenticate
from artlens.errors import ArtLensError
from artlens.logs import route_library_logs
from artlens.settings import Settings
from artlens.signing import register_from_env

logger = Logger(service="artlens-authorizer")
route_library_logs(logger)
hmac_scheme = register_from_env(os.environ)  # built on the first signed request


@functools.cache
def settings() -> Settings:
    built = Settings.from_env(os.environ, needs=("token",))
    logger.setLevel(built.log_level)
    return built


@functools.cache
def key_source() -> TokenKeySource:
    return TokenKeySource.from_settings(settings())


def reset() -> None:
    """Forget cached settings and key (tests that change the environment)."""
    settings.cache_clear()
    key_source.cache_clear()
    hmac_scheme.reset()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        principal = authenticate(event, key_source())
        return allow_policy(principal.sub, event.get("methodArn", ""), principal.context())
    except ArtLensError as exc:
        # The reason is logged, never the credential itself.
        logger.info("request denied", extra={"reason": exc.code, "detail": exc.message})
    except Exception:
        logger.exception("authorizer failed; denying")
    raise Exception("Unauthorized")  # noqa: TRY002 - the exact contract with API Gateway
