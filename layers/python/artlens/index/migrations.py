"""Schema migrations: every table of the index database is created by a script in `sql/`.

`NNN_name.sql` files are applied in order, each once, recorded in `schema_migrations`. A
transaction-level advisory lock serialises concurrent migrators (two Lambdas, a deploy and
`make run`): the second waits, then sees everything applied and does nothing.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from artlens.index.database import Cursor, Database

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "sql"
_MIGRATION_NAME = re.compile(r"^\d{3}_[A-Za-z0-9_]+\.sql$")
# Arbitrary but fixed: every schema change in every process takes the same transaction lock.
MIGRATION_LOCK_ID = 0x4152544C454E53  # "ARTLENS"


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The migration scripts in the order they are applied (by their numeric prefix)."""
    return sorted(p for p in directory.iterdir() if _MIGRATION_NAME.match(p.name))


def schema_lock(cur: Cursor) -> None:
    """Hold the schema lock until the end of the current transaction."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))


def migrate(database: Database, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations in order; returns the names applied (empty when current)."""
    files = migration_files(directory)

    def work(cur: Cursor) -> list[str]:
        schema_lock(cur)
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT name FROM schema_migrations")
        done = {name for (name,) in cur.fetchall()}
        applied = []
        for path in files:
            if path.name in done:
                continue
            cur.execute(path.read_text())
            cur.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
            applied.append(path.name)
        return applied

    applied = database.transaction(work)
    if applied:
        logger.info("applied migrations %s", applied)
    database.refresh_types()
    return applied
