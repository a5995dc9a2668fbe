"""CloudFormation custom resource (Provider framework onEvent): apply the index migrations.

Create and Update apply pending migrations (idempotent: a re-run is a no-op); Delete keeps the
data, since dropping a collection's index with a stack update would be irreversible.

The credentials come from the database secret, read again before every connection try: when
rotation changes the password between the read and the connect, the refused login is retried
after 1, 2 and 4 s (artlens.index.database.AUTH_RETRY_DELAYS_S) instead of failing the deploy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from artlens.index.database import Database, database_from_settings
from artlens.index.migrations import migrate, migration_files
from artlens.logs import handler_logger
from artlens.settings import Settings
from artlens.wiring import Lazy

logger = handler_logger("artlens-migrate")
PHYSICAL_RESOURCE_ID = "artlens-index-schema"


@dataclass(frozen=True)
class Deps:
    settings: Settings
    database: Database


def build() -> Deps:
    settings = Settings.from_env(os.environ, needs=("database",))
    logger.setLevel(settings.log_level)
    return Deps(settings, database_from_settings(settings))


deps = Lazy(build)
reset = deps.reset  # tests that change the environment


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request_type = event.get("RequestType")
    physical_id = event.get("PhysicalResourceId") or PHYSICAL_RESOURCE_ID
    if request_type in ("Create", "Update"):
        applied = migrate(deps().database)
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
