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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
        # One connection serves one transaction at a time; the local stack calls from threads.
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = None
            conn = self._connect_fn()
            conn.autocommit = False
            self._conn = conn
            self._register_vector_if_present()
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


# Waits before each new try when the server refuses the credentials: the secret's password can
# rotate between reading it and connecting (rotation runs while a deploy's migrate connects), so
# the secret is read again before every try. 1 + 3 tries over 7 s, well inside a Lambda's time.
AUTH_RETRY_DELAYS_S = (1.0, 2.0, 4.0)
Credentials = Callable[[], Mapping[str, Any]]


def is_authentication_failure(exc: BaseException) -> bool:
    """The server refused the user or password (SQLSTATE 28P01 / 28000). psycopg2 gives no
    SQLSTATE for errors raised while connecting, so the server's message is matched too."""
    if getattr(exc, "pgcode", None) in ("28P01", "28000"):
        return True
    text = str(exc).lower()
    return "authentication failed" in text or "password authentication" in text


def credentials_connection_factory(
    credentials: Credentials, *, host: str, port: int, dbname: str, sslmode: str = "require",
    retry_delays_s: Sequence[float] = AUTH_RETRY_DELAYS_S,
    sleep: Callable[[float], None] = time.sleep,
) -> ConnectionFactory:
    """Connections authenticated with `credentials()` ({"username", "password"}), read again
    before every try; a refused password is retried after each of `retry_delays_s`.

    When every try is refused, `Unavailable` is raised (not an OperationalError), so the
    Database does not start the whole series again."""

    def connect() -> Connection:
        for attempt in range(len(retry_delays_s) + 1):
            try:
                secret = credentials()
                user, password = str(secret["username"]), str(secret["password"])
            except Exception as exc:
                raise Unavailable("The database credentials could not be read.") from exc
            try:
                return psycopg2.connect(
                    host=host,
                    port=port,
                    dbname=dbname,
                    user=user,
                    password=password,
                    sslmode=sslmode,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    application_name=APPLICATION_NAME,
                )
            except psycopg2.OperationalError as exc:
                if not is_authentication_failure(exc):
                    raise
                if attempt == len(retry_delays_s):
                    logger.warning("database refused the credentials %d times", attempt + 1)
                    raise Unavailable(
                        "The image index refused its credentials; please retry."
                    ) from exc
                # The message names the user, never the password; it is not logged anyway.
                logger.info("database refused the credentials; reading the secret again")
                sleep(retry_delays_s[attempt])
        raise AssertionError("unreachable")

    return connect


def secret_connection_factory(
    secrets_client: Any, secret_arn: str, *, host: str, port: int, dbname: str,
    retry_delays_s: Sequence[float] = AUTH_RETRY_DELAYS_S,
    sleep: Callable[[float], None] = time.sleep,
) -> ConnectionFactory:
    """Connections authenticated with an RDS-style secret ({"username", "password"}).

    The secret is read on every (re)connect try, which happens once per container plus after
    a failure, so a rotated password is picked up without a redeploy. It is never logged.
    """

    def read_secret() -> Mapping[str, Any]:
        response = secrets_client.get_secret_value(SecretId=secret_arn)
        secret: Mapping[str, Any] = json.loads(response["SecretString"])
        return secret

    return credentials_connection_factory(
        read_secret, host=host, port=port, dbname=dbname, retry_delays_s=retry_delays_s,
        sleep=sleep,
    )


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
