"""Re-embed gallery pictures, or switch back to the previous model version.

Events:
  {}                                   reindex the whole gallery with the deployed model
  {"keys": [...]}                      only these gallery keys (one worker of a fan-out)
  {"version": "<v>"}                   with that registered model instead of the deployed one
  {"rollback": true}                   make the previously active version current again

The switch to the new model version happens inside `reindex` only once the whole gallery has
rows for it; a re-invocation resumes where an interrupted one stopped. Models come from the
registry (MODEL_REGISTRY_DIR, default the image's models/): a version, or a rollback target,
whose files are not in the image cannot be used (see artlens.model.ModelRegistry).
"""

from __future__ import annotations

import dataclasses
import os

from aws_lambda_powertools import Logger

from artlens.errors import BadRequest
from artlens.ingest import reindex
from artlens.lake import lake_from_settings
from artlens.model import registry_from_settings
from artlens.service import switch_back
from artlens.settings import Settings
from artlens.store import store_from_settings

settings = Settings.from_env(os.environ, needs=("model", "database", "lake"))
logger = Logger(service="artlens-reindex", level=settings.log_level)
registry = registry_from_settings(settings)
lake = lake_from_settings(settings)
store = store_from_settings(settings)


def _keys_from(event) -> list[str] | None:
    keys = event.get("keys")
    if keys is None:
        return None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise BadRequest('"keys" must be a list of gallery object keys')
    return keys


def _version_from(event) -> str | None:
    version = event.get("version")
    if version is not None and not (isinstance(version, str) and version):
        raise BadRequest('"version" must be a model version name')
    return version


@logger.inject_lambda_context
def handler(event, context):
    event = event or {}
    if event.get("rollback"):
        old, new = switch_back(store, registry)
        logger.info("rolled back", extra={"from": old, "to": new})
        return {"previous_version": old, "model_version": new}
    version = _version_from(event)
    classifier = (
        registry.classifier_for(version, settings.ort_threads)
        if version is not None
        else registry.default_classifier(settings.ort_threads)
    )
    report = reindex(store, lake, classifier, keys=_keys_from(event))
    logger.info("reindex finished", extra={"report": dataclasses.asdict(report)})
    return dataclasses.asdict(report)
