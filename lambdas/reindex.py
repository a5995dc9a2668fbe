"""Re-embed gallery pictures with the deployed model: {} for all, {"keys": [...]} for some.

The switch to the new model version happens inside `reindex` only once the whole gallery has
rows for it; a re-invocation resumes where an interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import os

from aws_lambda_powertools import Logger

from artlens.errors import BadRequest
from artlens.ingest import reindex
from artlens.lake import lake_from_settings
from artlens.model import get_classifier
from artlens.settings import Settings
from artlens.store import store_from_settings

settings = Settings.from_env(os.environ, needs=("model", "database", "lake"))
logger = Logger(service="artlens-reindex", level=settings.log_level)
classifier = get_classifier(settings.model_card_path, threads=settings.ort_threads)
lake = lake_from_settings(settings)
store = store_from_settings(settings)


def _keys_from(event) -> list[str] | None:
    keys = (event or {}).get("keys")
    if keys is None:
        return None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise BadRequest('"keys" must be a list of gallery object keys')
    return keys


@logger.inject_lambda_context
def handler(event, context):
    report = reindex(store, lake, classifier, keys=_keys_from(event))
    logger.info("reindex finished", extra={"report": dataclasses.asdict(report)})
    return dataclasses.asdict(report)
