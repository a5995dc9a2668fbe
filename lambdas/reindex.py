"""Re-embed gallery pictures, or switch back to the previous model version.

Events:
  {}                                   reindex the whole gallery with the deployed model
  {"keys": [...]}                      only these gallery keys (one worker of a fan-out)
  {"version": "<v>"}                   with that registered model instead of the deployed one
  {"rollback": true}                   make the previously active version current again

The switch to the new model version happens inside `reindex` only once the whole gallery has
rows for it; a re-invocation resumes where an interrupted one stopped. Models come from the
registry (artlens.models.registry): on AWS `models/<version>/` of the artifacts bucket
(ARTIFACTS_BUCKET, fetched once into /tmp and checked against the card's SHA-256), besides the
image's own model; a version, or a rollback target, found in neither is refused.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from artlens.errors import BadRequest
from artlens.logs import handler_logger
from artlens.models.versions import reindex, switch_back
from artlens.serving import Serving
from artlens.wiring import Lazy

logger = handler_logger("artlens-reindex")


def build() -> Serving:
    """Its dependencies are exactly the serving ones: settings, registry, index, lake."""
    built = Serving.from_env(os.environ)
    logger.setLevel(built.settings.log_level)
    return built


deps = Lazy(build)
reset = deps.reset  # tests that change the environment


def _keys_from(event: dict[str, Any]) -> list[str] | None:
    keys = event.get("keys")
    if keys is None:
        return None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise BadRequest('"keys" must be a list of gallery object keys')
    return keys


def _version_from(event: dict[str, Any]) -> str | None:
    version = event.get("version")
    if version is not None and not (isinstance(version, str) and version):
        raise BadRequest('"version" must be a model version name')
    return version


@logger.inject_lambda_context
def handler(event: dict[str, Any] | None, context: Any) -> dict[str, Any]:
    event = event or {}
    built = deps()
    if event.get("rollback"):
        old, new = switch_back(built.store, built.registry)
        logger.info("rolled back", extra={"from": old, "to": new})
        return {"previous_version": old, "model_version": new}
    version = _version_from(event)
    threads = built.settings.ort_threads
    classifier = (
        built.registry.classifier_for(version, threads)
        if version is not None
        else built.registry.default_classifier(threads)
    )
    report = reindex(built.store, built.lake, classifier, keys=_keys_from(event))
    logger.info("reindex finished", extra={"report": dataclasses.asdict(report)})
    return dataclasses.asdict(report)
