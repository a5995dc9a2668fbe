"""Proxy responses out: JSON bodies with CORS headers, and `response_for_exception`, the ONE
place an error becomes a response (typed errors keep their status, anything else is a 500)."""

from __future__ import annotations

import json
import logging
from typing import Any

from artlens.errors import ArtLensError
from artlens.names import ALLOWED_HEADERS, ALLOWED_METHODS

_log = logging.getLogger(__name__)


def cors_headers(cors_origin: str) -> dict[str, str]:
    headers = {
        "Access-Control-Allow-Origin": cors_origin,
        "Access-Control-Allow-Headers": ",".join(ALLOWED_HEADERS),
        "Access-Control-Allow-Methods": ",".join(ALLOWED_METHODS),
        "Access-Control-Max-Age": "600",
    }
    if cors_origin != "*":
        headers["Vary"] = "Origin"
    return headers


def json_response(status: int, body: Any, cors_origin: str) -> dict[str, Any]:
    """An API Gateway proxy response: JSON body, CORS, and never cached (answers are personal)."""
    return {
        "statusCode": int(status),
        "headers": {
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
            **cors_headers(cors_origin),
        },
        "body": json.dumps(body, separators=(",", ":"), allow_nan=False),
        "isBase64Encoded": False,
    }


def error_response(error: ArtLensError, cors_origin: str) -> dict[str, Any]:
    return json_response(error.status, error.to_body(), cors_origin)


def response_for_exception(
    exc: BaseException, cors_origin: str, logger: logging.Logger | Any | None = None
) -> dict[str, Any]:
    """Map any exception to a response: typed errors keep their status; the rest are 500s.

    Unexpected errors are logged with their traceback but the client sees a generic message;
    request bodies never reach the log (exceptions here never carry them).
    """
    log = logger or _log
    if isinstance(exc, ArtLensError):
        if exc.status >= 500:
            log.warning("request failed: %s %s", exc.code, exc.message)
        return error_response(exc, cors_origin)
    log.exception("unexpected error: %s", type(exc).__name__)
    return error_response(
        ArtLensError("Something went wrong on our side; please try again later."), cors_origin
    )
