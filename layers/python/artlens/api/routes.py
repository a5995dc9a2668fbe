"""The predict function's API: POST /predict and GET /map, answered over its dependencies.

Routing is a two-entry table rather than Powertools' APIGatewayRestResolver: every answer,
including 404/405 and errors, goes through artlens.api.responses so it carries our JSON error
shape and the CORS headers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from artlens.api.answers import MapAnswer, PredictAnswer, collection_map, predict_image
from artlens.api.events import extract_image, parse_map_query, parse_predict_query
from artlens.api.responses import cors_headers, json_response, response_for_exception
from artlens.auth.replay import NonceLedger
from artlens.auth.signing import verify_signed_body
from artlens.errors import ArtLensError, NotFound
from artlens.index.embeddings import EmbeddingStore
from artlens.lake import ObjectLake
from artlens.models.classifier import Classifier

Event = Mapping[str, Any]
Route = Callable[[Event], Mapping[str, Any]]


class ServingModel(Protocol):
    """artlens.models.versions.CurrentModel: the classifier of the current model version."""

    def classifier(self) -> Classifier: ...


def method_and_paths(event: Event) -> tuple[str, list[Any]]:
    return str(event.get("httpMethod", "")).upper(), [event.get("resource"), event.get("path")]


def find_route(event: Event, routes: Mapping[tuple[str, str], Route]) -> Route:
    """The route for the event's method and resource (or path); 404 / 405 otherwise."""
    method, paths = method_and_paths(event)
    for path in paths:
        if (method, path) in routes:
            return routes[(method, path)]
    if any((other, path) in routes for (other, _) in routes for path in paths):
        raise ArtLensError(
            f"{method} is not allowed here.", code="method_not_allowed", status=405
        )
    raise NotFound("No such route.")


class PredictApi:
    def __init__(
        self,
        model: ServingModel,
        store: EmbeddingStore,
        lake: ObjectLake,
        nonces: NonceLedger,
        cors_origin: str,
        logger: logging.Logger | Any = None,
    ):
        self.model = model
        self.store = store
        self.lake = lake
        self.nonces = nonces
        self.cors_origin = cors_origin
        self.logger = logger
        self.routes: dict[tuple[str, str], Route] = {
            ("POST", "/predict"): self.predict,
            ("GET", "/map"): self.collection_map,
        }

    def predict(self, event: Event) -> PredictAnswer:
        query = parse_predict_query(event)
        image = extract_image(event)
        return predict_image(
            image, self.model.classifier(), self.store, self.lake, query.neighbors, query.scope
        )

    def collection_map(self, event: Event) -> MapAnswer:
        limit = parse_map_query(event)
        model = self.model.classifier()
        return collection_map(self.store, self.lake, model.version, limit, classes=model.classes)

    def handle(self, event: Event) -> dict[str, Any]:
        """One proxy event -> one proxy response; never raises."""
        method, _ = method_and_paths(event)
        if method == "OPTIONS":
            return {"statusCode": 204, "headers": cors_headers(self.cors_origin), "body": ""}
        try:
            route = find_route(event, self.routes)
            verify_signed_body(event, self.nonces)  # signed requests: body hash, then replay
            return json_response(200, route(event), self.cors_origin)
        except Exception as exc:  # the one place errors become responses
            return response_for_exception(exc, self.cors_origin, self.logger)
