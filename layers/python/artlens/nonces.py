"""Replay protection for signed requests: a nonce may be used once while its request is valid.

The authorizer runs in many containers at once, so a per-container memory of used nonces would
let a replay through any other container. The ledger of record is therefore a PostgreSQL table
with a unique constraint: the INSERT that wins is the only request allowed, in whichever
container it lands. Rows carry their expiry (the end of the request's time window); expired rows
are purged now and then, and an old request is refused by its timestamp before its nonce is
ever looked at.

Tradeoff: signed requests now depend on the database being reachable from the authorizer (its
VPC, a connection per container, ~1 ms per request). If it is down, signed requests are
refused (fail closed) while bearer tokens keep working. A DynamoDB conditional put with TTL
would avoid the VPC dependency at the price of another data store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from artlens.store import MIGRATION_LOCK_ID, EmbeddingStore

# Expired rows are deleted on one insert out of this many (per container).
PURGE_EVERY = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS request_nonces (
    key_id     text NOT NULL,
    nonce      text NOT NULL,
    expires_at timestamptz NOT NULL,
    CONSTRAINT request_nonces_unique UNIQUE (key_id, nonce)
);
CREATE INDEX IF NOT EXISTS request_nonces_expiry ON request_nonces (expires_at);
"""


class NonceLedger(Protocol):
    def remember(self, key_id: str, nonce: str, expires_at: float) -> bool:
        """True the first time (key_id, nonce) is seen; False for a replay."""


class MemoryNonces:
    """One process's ledger: enough for a single server (and unit tests), not for Lambda."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._seen: dict[tuple[str, str], float] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def remember(self, key_id: str, nonce: str, expires_at: float) -> bool:
        with self._lock:
            now = self._clock()
            self._seen = {k: exp for k, exp in self._seen.items() if exp >= now}
            if (key_id, nonce) in self._seen:
                return False
            self._seen[(key_id, nonce)] = expires_at
            return True


class PostgresNonces:
    """The shared ledger: table `request_nonces` in the index database.

    Uses the store's connection handling (reuse, one reconnect, `Unavailable` when down). The
    table is created on first use, so the authorizer needs no migration step of its own.
    """

    def __init__(self, store: EmbeddingStore):
        self._store = store
        self._ready = False
        self._calls = 0

    def _run(self, work: Callable[[Any], Any]) -> Any:
        # The store's transaction runner: commit, rollback, reconnect and 503 in one place.
        return self._store._transaction(work)

    def ensure_schema(self) -> None:
        def work(cur) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            cur.execute(SCHEMA)

        self._run(work)
        self._ready = True

    def remember(self, key_id: str, nonce: str, expires_at: float) -> bool:
        if not self._ready:
            self.ensure_schema()
        self._calls += 1
        purge = self._calls % PURGE_EVERY == 1

        def work(cur) -> bool:
            if purge:
                cur.execute("DELETE FROM request_nonces WHERE expires_at < now()")
            cur.execute(
                "INSERT INTO request_nonces (key_id, nonce, expires_at)"
                " VALUES (%s, %s, to_timestamp(%s))"
                " ON CONFLICT ON CONSTRAINT request_nonces_unique DO NOTHING RETURNING 1",
                (key_id, nonce, float(expires_at)),
            )
            return cur.fetchone() is not None

        return self._run(work)

    def count(self) -> int:
        def work(cur) -> int:
            cur.execute("SELECT count(*) FROM request_nonces")
            return int(cur.fetchone()[0])

        return self._run(work)
