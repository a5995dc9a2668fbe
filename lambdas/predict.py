"""POST /predict and GET /map behind API Gateway (REST, Lambda proxy integration).

Cold start: nothing is read from the environment at import, so tests and the local stack can
import this module first and set the environment later. The first invocation of a container
(its cold start) builds `Settings.from_env(os.environ)` once and caches it, together with the
model registry, the store (database connection) and the lake; a ConfigError fails that
invocation loudly and is retried on the next one.

Which model answers is the database's current version (`artlens.service.CurrentModel`, re-read
every CURRENT_VERSION_TTL_S), not the model baked into the image: a completed reindex or a
rollback switches every warm container without a redeploy.

Routing is a two-entry table rather than Powertools' APIGatewayRestResolver: every answer,
including 404/405 and errors, must go through `artlens.http` so it carries our JSON error shape
and the CORS headers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths

from artlens.errors import ArtLensError, NotFound
from artlens.http import (
    cors_headers,
    extract_image,
    json_response,
    parse_map_query,
    parse_predict_query,
    response_for_exception,
)
from artlens.lake import lake_from_settings
from artlens.logs import route_library_logs
from artlens.model import Classifier, ModelRegistry, registry_from_settings
from artlens.nonces import PostgresNonces
from artlens.service import CURRENT_VERSION_TTL_S, CurrentModel, collection_map, predict_image
from artlens.settings import Settings
from artlens.signing import verify_signed_body
from artlens.store import EmbeddingStore, store_from_settings

logger = Logger(service="artlens-predict")
route_library_logs(logger)


@functools.cache
def settings() -> Settings:
    built = Settings.from_env(os.environ)
    logger.setLevel(built.log_level)
    return built


@functools.cache
def registry() -> ModelRegistry:
    return registry_from_settings(settings())


@functools.cache
def store() -> EmbeddingStore:
    return store_from_settings(settings())


@functools.cache
def lake() -> Any:
    return lake_from_settings(settings())


@functools.cache
def nonces() -> PostgresNonces:
    """The replay ledger for signed requests (same database as the index)."""
    return PostgresNonces(store())


@functools.cache
def current_model() -> CurrentModel:
    return CurrentModel(
        registry(), store(), threads=settings().ort_threads, ttl_s=CURRENT_VERSION_TTL_S
    )


def classifier() -> Classifier:
    """The classifier of the current model version (see the module docstring)."""
    return current_model().classifier()


def reset() -> None:
    """Forget the cached settings and clients (tests that change the environment)."""
    for cached in (settings, registry, store, lake, nonces, current_model):
        cached.cache_clear()


def predict_route(event: Mapping[str, Any]) -> dict[str, Any]:
    query = parse_predict_query(event)
    image = extract_image(event)
    return predict_image(image, classifier(), store(), lake(), query.neighbors, query.scope)


def map_route(event: Mapping[str, Any]) -> dict[str, Any]:
    limit = parse_map_query(event)
    model = classifier()
    return collection_map(store(), lake(), model.version, limit, classes=model.classes)


ROUTES: dict[tuple[str, str], Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    ("POST", "/predict"): predict_route,
    ("GET", "/map"): map_route,
}


def _route(event: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    method = str(event.get("httpMethod", "")).upper()
    paths = [event.get("resource"), event.get("path")]
    for path in paths:
        if (method, path) in ROUTES:
            return ROUTES[(method, path)]
    if any((other, path) in ROUTES for (other, _) in ROUTES for path in paths):
        raise ArtLensError(
            f"{method} is not allowed here.", code="method_not_allowed", status=405
        )
    raise NotFound("No such route.")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        cors_origin = settings().cors_origin
    except Exception:
        logger.exception("configuration is invalid")
        raise
    if str(event.get("httpMethod", "")).upper() == "OPTIONS":
        return {"statusCode": 204, "headers": cors_headers(cors_origin), "body": ""}
    try:
        route = _route(event)
        verify_signed_body(event, nonces())  # signed requests: body hash, then replay check
        body = route(event)
        response = json_response(200, body, cors_origin)
    except Exception as exc:  # the one place errors become responses
        response = response_for_exception(exc, cors_origin, logger)
    logger.info(
        "request served",
        extra={
            "route": f"{event.get('httpMethod')} {event.get('resource') or event.get('path')}",
            "status": response["statusCode"],
        },
    )
    return response
