"""POST /predict, GET /map, POST /preview and GET /whoami behind API Gateway (REST, Lambda proxy
integration).

Start-up (artlens.wiring): the first invocation of a container builds the dependencies once --
settings, the model registry, the index (database connection), the lake, the replay ledger and
the API -- and later invocations reuse them; a ConfigError fails that invocation loudly and is
retried on the next one.

Which model answers is the database's current version (artlens.models.versions.CurrentModel,
re-read every CURRENT_VERSION_TTL_S), not the model baked into the image: a completed reindex or
a rollback switches every warm container without a redeploy. The routes are artlens.api.routes.

Each answered POST /predict publishes PredictLatency (ms, the handler's own time) and
Predictions by predicted type (artlens.metrics, embedded metric format on stdout).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.logging import correlation_paths

from artlens.api.routes import PredictApi
from artlens.auth.replay import PostgresNonces
from artlens.auth.signing import SignedRequests
from artlens.logs import handler_logger
from artlens.metrics import flush, handler_metrics, publish_prediction
from artlens.models.versions import CURRENT_VERSION_TTL_S, CurrentModel
from artlens.serving import Serving
from artlens.wiring import Lazy

logger = handler_logger("artlens-predict")
metrics = handler_metrics()


@dataclass(frozen=True)
class Deps:
    serving: Serving
    model: CurrentModel
    api: PredictApi


def build() -> Deps:
    serving = Serving.from_env(os.environ, needs=("model", "database", "lake", "cors"))
    settings, store = serving.settings, serving.store
    logger.setLevel(settings.log_level)
    model = CurrentModel(serving.registry, store, threads=settings.ort_threads,
                         ttl_s=CURRENT_VERSION_TTL_S)
    # The replay ledger of signed requests lives in the same database as the index; the API
    # keys that verify them are read on the first signed request (API_KEYS_*).
    nonces = SignedRequests.from_env(PostgresNonces(store.database), os.environ)
    api = PredictApi(model, store, serving.lake, nonces, settings.cors_origin, logger,
                     renditions_base_url=settings.renditions_base_url)
    return Deps(serving, model, api)


deps = Lazy(build)
reset = deps.reset  # tests that change the environment


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        api = deps().api
    except Exception:
        logger.exception("configuration is invalid")
        raise
    response = api.handle(event)
    _publish(event, response, (time.perf_counter() - started) * 1000.0)
    logger.info(
        "request served",
        extra={
            "route": f"{event.get('httpMethod')} {event.get('resource') or event.get('path')}",
            "status": response["statusCode"],
        },
    )
    return response


def _publish(event: dict[str, Any], response: dict[str, Any], latency_ms: float) -> None:
    """Metrics of an answered prediction; a metrics problem never fails the request."""
    path = event.get("resource") or event.get("path") or ""
    if event.get("httpMethod") != "POST" or not path.endswith("/predict"):
        return
    if response.get("statusCode") != 200:
        return
    try:
        body = {} if response.get("isBase64Encoded") else json.loads(response.get("body") or "{}")
        label = body.get("label")
        publish_prediction(metrics, latency_ms, label if isinstance(label, str) else None)
        flush(metrics)
    except Exception as exc:  # never the request's failure
        logger.warning("metrics not published: %s", type(exc).__name__)
