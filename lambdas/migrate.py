"""CloudFormation custom resource (Provider framework onEvent): apply the index migrations.

Create and Update apply pending migrations (idempotent: a re-run is a no-op); Delete keeps the
data, since dropping a collection's index with a stack update would be irreversible.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger

from artlens.settings import Settings
from artlens.store import migration_files, store_from_settings

settings = Settings.from_env(os.environ, needs=("database",))
logger = Logger(service="artlens-migrate", level=settings.log_level)
store = store_from_settings(settings)
PHYSICAL_RESOURCE_ID = "artlens-index-schema"


@logger.inject_lambda_context
def handler(event, context):
    request_type = event.get("RequestType")
    physical_id = event.get("PhysicalResourceId") or PHYSICAL_RESOURCE_ID
    if request_type in ("Create", "Update"):
        applied = store.migrate()
        logger.info("migrations applied", extra={"applied": applied})
        return {
            "PhysicalResourceId": physical_id,
            "Data": {
                "Applied": ",".join(applied),
                "SchemaVersion": migration_files()[-1].name,
            },
        }
    if request_type == "Delete":
        return {"PhysicalResourceId": physical_id}
    raise ValueError(f"unknown RequestType {request_type!r}")
