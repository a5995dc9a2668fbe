"""The index database: one PostgreSQL connection, reused, and transactions with one retry.

One connection is kept per `Database` and reused across calls, because a Lambda container serves
many invocations and a fresh TLS + auth handshake per request would dominate the latency. If the
connection has died (idle timeout, failover), the work is retried once on a new connection; if
that fails too the database is considered down and `Unavailable` is raised (the api layer
answers 503, the authorizer denies).

Every user of the database (embeddings, model version states, the replay ledger) runs its SQL
through `transaction` or `read`; none opens connections of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from pgvector.psycopg2 import register_vector

from artlens.errors import Unavailable
from artlens.settings import Settings

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
APPLICATION_NAME = "artlens"
_TRANSIENT = (psycopg2.OperationalError, psycopg2.InterfaceError)

Connection = psycopg2.extensions.connection
Cursor = psycopg2.extensions.cursor
ConnectionFactory = Callable[[], Connection]
T = TypeVar("T")


class Database:
    def __init__(self, dsn: str | ConnectionFactory):
        if callable(dsn):
            self._connect_fn: ConnectionFactory = dsn
        else:
            dsn_text = str(dsn)
            self._connect_fn = lambda: psycopg2.connect(
                dsn_text, connect_timeout=CONNECT_TIMEOUT_S, application_name=APPLICATION_NAME
            )
        self._conn: Connection | None = None
        self._vector_registered = False
        self._wanted_session: dict[str, str] = {}
        self._applied_session: dict[str, str] = {}  # what the open connection's session has
        # One connection serves one transaction at a time; the local stack calls from threads.
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------------------------

    def set_session(self, name: str, value: str) -> None:
        """A session setting every connection gets (applied before the next statement)."""
        with self._lock:
            self._wanted_session[name] = str(value)

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = None
            conn = self._connect_fn()
            conn.autocommit = False
            self._conn = conn
            self._applied_session = {}
            self._register_vector_if_present()
        if self._applied_session != self._wanted_session:
            self._apply_session()
        return self._conn

    @contextlib.contextmanager
    def _autocommit(self) -> Iterator[Connection]:
        """One lone statement outside a transaction: no BEGIN / ROLLBACK round trips."""
        conn = self._conn
        assert conn is not None
        conn.autocommit = True
        try:
            yield conn
        finally:
            if not conn.closed:
                conn.autocommit = False

    def _register_vector_if_present(self) -> None:
        """Teach this connection the `vector` type; before the first migration it is absent."""
        with self._autocommit() as conn:
            try:
                register_vector(conn)
                self._vector_registered = True
            except psycopg2.ProgrammingError:
                self._vector_registered = False

    def _apply_session(self) -> None:
        """Session-level (is_local = false) and outside any transaction, so no later rollback
        undoes them; a new connection gets them again. Settings of an extension that is not
        loaded yet are kept as placeholders and take effect when it loads."""
        wanted = dict(self._wanted_session)
        with self._autocommit() as conn, conn.cursor() as cur:
            for name, value in wanted.items():
                cur.execute("SELECT set_config(%s, %s, false)", (name, value))
        self._applied_session = wanted

    def refresh_types(self) -> None:
        """After a migration created the `vector` type, teach the open connection about it."""
        with self._lock:
            if not self._vector_registered and self._conn is not None and not self._conn.closed:
                self._register_vector_if_present()

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken; closing is best effort
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._discard_connection()

    # -- work ----------------------------------------------------------------------------

    def transaction(self, work: Callable[[Cursor], T]) -> T:
        """Run `work(cursor)` in one transaction (commit, or rollback on error); retry once on
        a fresh connection when the connection was lost."""
        with self._lock:
            return self._run(work, single_statement=False)

    def read(self, work: Callable[[Cursor], T]) -> T:
        """Run a single read-only statement in `work(cursor)`: one round trip, no BEGIN/COMMIT.

        The statement runs in autocommit mode, i.e. in its own implicit transaction, which
        gives a single statement the same snapshot guarantees as an explicit one.
        """
        with self._lock:
            return self._run(work, single_statement=True)

    def _run(self, work: Callable[[Cursor], T], *, single_statement: bool) -> T:
        for attempt in (1, 2):
            try:
                conn = self._connection()
                if single_statement:
                    with self._autocommit(), conn.cursor() as cur:
                        return work(cur)
                with conn, conn.cursor() as cur:  # commits, or rolls back on error
                    return work(cur)
            except _TRANSIENT as exc:
                self._discard_connection()
                if attempt == 2:
                    # The driver's message may contain the host name but never the password.
                    logger.warning("database unavailable: %s", type(exc).__name__)
                    raise Unavailable(
                        "The image index is temporarily unavailable; please retry."
                    ) from exc
                logger.info("database connection lost (%s); reconnecting", type(exc).__name__)
        raise AssertionError("unreachable")


def fetch_value(cur: Cursor) -> Any:
    """The first column of the one row the last statement returned."""
    row = cur.fetchone()
    if row is None:
        raise RuntimeError("the statement returned no row")
    return row[0]


def secret_connection_factory(
    secrets_client: Any, secret_arn: str, *, host: str, port: int, dbname: str
) -> ConnectionFactory:
    """Connections authenticated with an RDS-style secret ({"username", "password"}).

    The secret is read on every (re)connect, which happens once per container plus after a
    failure, so a rotated password is picked up without a redeploy. It is never logged.
    """

    def connect() -> Connection:
        try:
            response = secrets_client.get_secret_value(SecretId=secret_arn)
            secret = json.loads(response["SecretString"])
        except Exception as exc:
            raise Unavailable("The database credentials could not be read.") from exc
        return psycopg2.connect(
            host=host,
            port=port,
            dbname=dbname,
            user=secret["username"],
            password=secret["password"],
            sslmode="require",
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name=APPLICATION_NAME,
        )

    return connect


def database_from_settings(settings: Settings, *, secrets_client: Any = None) -> Database:
    """The database a handler uses: DATABASE_URL locally, Secrets Manager credentials on AWS.

    Connects lazily, on first use."""
    if settings.database_url:
        return Database(settings.database_url)
    if not (settings.db_secret_arn and settings.db_host and settings.db_name):
        raise ValueError("settings name no database")
    if secrets_client is None:
        import boto3

        secrets_client = boto3.client("secretsmanager")
    return Database(
        secret_connection_factory(
            secrets_client,
            settings.db_secret_arn,
            host=settings.db_host,
            port=settings.db_port,
            dbname=settings.db_name,
        )
    )
