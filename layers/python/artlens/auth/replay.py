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
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the ledger's database is handed in; psycopg2 is not imported here
    from artlens.index.database import Cursor, Database

# Expired rows are deleted on one insert out of this many (per container).
PURGE_EVERY = 64


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
    """The shared ledger: table `request_nonces` (migration sql/002_request_nonces.sql) in the
    index database, through its connection handling (reuse, one reconnect, `Unavailable` when
    down)."""

    def __init__(self, database: Database):
        self._database = database
        self._calls = 0

    def remember(self, key_id: str, nonce: str, expires_at: float) -> bool:
        self._calls += 1
        purge = self._calls % PURGE_EVERY == 1

        def work(cur: Cursor) -> bool:
            if purge:
                cur.execute("DELETE FROM request_nonces WHERE expires_at < now()")
            cur.execute(
                "INSERT INTO request_nonces (key_id, nonce, expires_at)"
                " VALUES (%s, %s, to_timestamp(%s))"
                " ON CONFLICT ON CONSTRAINT request_nonces_unique DO NOTHING RETURNING 1",
                (key_id, nonce, float(expires_at)),
            )
            return cur.fetchone() is not None

        return self._database.transaction(work)

    def count(self) -> int:
        def work(cur: Cursor) -> int:
            cur.execute("SELECT count(*) FROM request_nonces")
            row = cur.fetchone()
            assert row is not None  # count(*) always answers one row
            return int(row[0])

        return self._database.read(work)
