"""The embedding index: PostgreSQL + pgvector behind `EmbeddingStore`.

This module and `artlens.lake` are the only adapters that touch drivers. One connection is kept
per store and reused across calls, because a Lambda container serves many invocations and a
fresh TLS + auth handshake per request would dominate the latency. If the connection has died
(idle timeout, failover), the call is retried once on a new connection; if that fails too the
database is considered down and `Unavailable` (503) is raised.

Every value reaches SQL as a query parameter; identifiers and DDL options are composed with
`psycopg2.sql`, never by string formatting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psycopg2
import psycopg2.extensions
from pgvector.psycopg2 import register_vector
from psycopg2 import sql
from psycopg2.extras import execute_values

from artlens.errors import ArtLensError, NotFound, Unavailable

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 128
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
# Candidates kept per HNSW search. With iterative scans on, a selective label filter makes the
# index keep scanning in rounds of this size until k rows pass the filter.
DEFAULT_EF_SEARCH = 40
ITERATIVE_SCAN = "relaxed_order"
CONNECT_TIMEOUT_S = 5

MIGRATIONS_DIR = Path(__file__).with_name("sql")
_MIGRATION_NAME = re.compile(r"^\d{3}_[A-Za-z0-9_]+\.sql$")
# Arbitrary but fixed: every migrator in every process takes the same transaction-level lock.
MIGRATION_LOCK_ID = 0x4152544C454E53  # "ARTLENS"
ACTIVATION_LOCK_ID = MIGRATION_LOCK_ID + 1

_TRANSIENT = (psycopg2.OperationalError, psycopg2.InterfaceError)

ConnectionFactory = Callable[[], psycopg2.extensions.connection]
T = TypeVar("T")


class VersionNotReady(ArtLensError):
    """Only a completely embedded ('ready') model version may serve queries."""

    status = 409
    code = "version_not_ready"


@dataclass(frozen=True)
class ImageRow:
    key: str
    sha256: str
    label: str
    probability: float
    embedding: np.ndarray  # float32 [EMBEDDING_DIM]
    model_version: str
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True)
class Neighbor:
    key: str
    label: str
    similarity: float  # 1 - cosine distance
    sha256: str


@dataclass(frozen=True)
class EmbeddingSample:
    key: str
    label: str
    embedding: np.ndarray


@dataclass(frozen=True)
class ModelVersion:
    version: str
    state: str
    is_current: bool


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """The migration scripts in the order they are applied (by their numeric prefix)."""
    return sorted(p for p in directory.iterdir() if _MIGRATION_NAME.match(p.name))


class EmbeddingStore:
    def __init__(
        self,
        dsn: str | ConnectionFactory,
        *,
        ef_search: int = DEFAULT_EF_SEARCH,
        migrations_dir: Path = MIGRATIONS_DIR,
    ):
        if callable(dsn):
            self._connect_fn: ConnectionFactory = dsn
        else:
            dsn_text = str(dsn)
            self._connect_fn = lambda: psycopg2.connect(
                dsn_text, connect_timeout=CONNECT_TIMEOUT_S, application_name="artlens"
            )
        self.ef_search = ef_search
        self.migrations_dir = migrations_dir
        self._conn: psycopg2.extensions.connection | None = None
        self._vector_registered = False
        self._session_ef_search: int | None = None  # what the open connection's session has
        # One connection serves one transaction at a time; the local stack calls from threads.
        self._lock = threading.Lock()

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if not 1 <= int(value) <= 1000:  # pgvector's accepted range
            raise ValueError("ef_search must be between 1 and 1000")
        # An open connection picks the new value up before its next statement (_connection).
        self._ef_search = int(value)

    # -- connection handling -------------------------------------------------------------

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = None
            conn = self._connect_fn()
            conn.autocommit = False
            self._conn = conn
            self._vector_registered = False
            self._session_ef_search = None
            self._register_vector_if_present()
        if self._session_ef_search != self._ef_search:
            self._apply_search_settings()
        return self._conn

    def _register_vector_if_present(self) -> None:
        """Teach this connection the `vector` type; before the first migration it is absent."""
        conn = self._conn
        assert conn is not None
        conn.autocommit = True  # a lone catalog lookup: no BEGIN / ROLLBACK round trips
        try:
            register_vector(conn)
            self._vector_registered = True
        except psycopg2.ProgrammingError:
            self._vector_registered = False
        finally:
            if not conn.closed:
                conn.autocommit = False

    def _apply_search_settings(self) -> None:
        """Set the HNSW search options once per session instead of once per query.

        Session-level (is_local = false) and outside any transaction, so no later rollback
        undoes them; a new connection gets them again from `_connection`. Before the vector
        library is loaded they are kept as placeholders and take effect when it loads.
        """
        conn = self._conn
        assert conn is not None
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT set_config('hnsw.iterative_scan', %s, false),"
                    " set_config('hnsw.ef_search', %s, false)",
                    (ITERATIVE_SCAN, str(self._ef_search)),
                )
            self._session_ef_search = self._ef_search
        finally:
            if not conn.closed:
                conn.autocommit = False

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken; closing is best effort
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._discard_connection()

    def _transaction(self, work: Callable[[Any], T]) -> T:
        """Run `work(cursor)` in one transaction; retry once on a fresh connection."""
        with self._lock:
            return self._transaction_locked(work)

    def _read(self, work: Callable[[Any], T]) -> T:
        """Run a single read-only statement in `work(cursor)`: one round trip, no BEGIN/COMMIT.

        The statement runs in autocommit mode, i.e. in its own implicit transaction, which
        gives a single statement the same snapshot guarantees as an explicit one.
        """
        with self._lock:
            return self._transaction_locked(work, single_statement=True)

    def _transaction_locked(
        self, work: Callable[[Any], T], *, single_statement: bool = False
    ) -> T:
        for attempt in (1, 2):
            try:
                conn = self._connection()
                if single_statement:
                    conn.autocommit = True
                    try:
                        with conn.cursor() as cur:
                            return work(cur)
                    finally:
                        if not conn.closed:
                            conn.autocommit = False
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

    # -- schema --------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns the names applied (empty when current).

        A transaction-level advisory lock serialises concurrent migrators (two Lambdas, a
        deploy and `make run`): the second waits, then sees everything applied and does nothing.
        """
        files = migration_files(self.migrations_dir)

        def work(cur) -> list[str]:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
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

        applied = self._transaction(work)
        if applied:
            logger.info("applied migrations %s", applied)
        with self._lock:
            if not self._vector_registered and self._conn is not None:
                self._register_vector_if_present()
        return applied

    def index_parameters(self) -> dict[str, int]:
        """The HNSW index's build options as stored by PostgreSQL."""

        def work(cur) -> dict[str, int]:
            cur.execute(
                "SELECT c.reloptions FROM pg_class c WHERE c.relname = %s",
                ("images_embedding_hnsw",),
            )
            row = cur.fetchone()
            if row is None:
                raise NotFound("The HNSW index does not exist; run the migrations.")
            options = dict(opt.split("=", 1) for opt in (row[0] or []))
            return {name: int(value) for name, value in options.items()}

        return self._transaction(work)

    def rebuild_index(
        self, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION
    ) -> None:
        """Re-create the HNSW index with other build options (used by the benchmark)."""
        m, ef_construction = int(m), int(ef_construction)
        if not 2 <= m <= 100 or not 4 <= ef_construction <= 1000 or ef_construction < 2 * m:
            raise ValueError("need 2 <= m <= 100 and 2*m <= ef_construction <= 1000")

        def work(cur) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
            cur.execute("DROP INDEX IF EXISTS images_embedding_hnsw")
            cur.execute(
                sql.SQL(
                    "CREATE INDEX images_embedding_hnsw ON images USING hnsw"
                    " (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})"
                ).format(sql.Literal(m), sql.Literal(ef_construction))
            )

        self._transaction(work)

    # -- model versions --------------------------------------------------------------------

    def register_version(self, version: str) -> bool:
        """Record a model version as 'building'; True if new, False if it was known."""

        def work(cur) -> bool:
            cur.execute(
                "INSERT INTO model_versions (version, state) VALUES (%s, 'building')"
                " ON CONFLICT (version) DO NOTHING RETURNING version",
                (version,),
            )
            return cur.fetchone() is not None

        return self._transaction(work)

    def mark_ready(self, version: str) -> None:
        def work(cur) -> None:
            cur.execute(
                "UPDATE model_versions SET state = 'ready' WHERE version = %s", (version,)
            )
            if cur.rowcount == 0:
                raise NotFound(f"Model version {version!r} is not registered.")

        self._transaction(work)

    def activate(self, version: str) -> None:
        """Make `version` the one queries use. Refuses a version that is not 'ready'."""

        def work(cur) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ACTIVATION_LOCK_ID,))
            cur.execute("SELECT state FROM model_versions WHERE version = %s", (version,))
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"Model version {version!r} is not registered.")
            if row[0] != "ready":
                raise VersionNotReady(
                    f"Model version {version!r} is {row[0]!r}; only a ready version can be"
                    " activated."
                )
            cur.execute(
                "UPDATE model_versions SET is_current = false"
                " WHERE is_current AND version <> %s",
                (version,),
            )
            cur.execute(
                "UPDATE model_versions SET is_current = true, activated_at = now()"
                " WHERE version = %s AND NOT is_current",
                (version,),
            )

        self._transaction(work)

    def current_version(self) -> str | None:
        def work(cur) -> str | None:
            cur.execute("SELECT version FROM model_versions WHERE is_current")
            row = cur.fetchone()
            return row[0] if row else None

        return self._transaction(work)

    def previous_version(self) -> str | None:
        """The most recently active ready version other than the current one (rollback)."""

        def work(cur) -> str | None:
            cur.execute(
                "SELECT version FROM model_versions"
                " WHERE state = 'ready' AND NOT is_current AND activated_at IS NOT NULL"
                " ORDER BY activated_at DESC LIMIT 1"
            )
            row = cur.fetchone()
            return row[0] if row else None

        return self._transaction(work)

    def versions(self) -> list[ModelVersion]:
        def work(cur) -> list[ModelVersion]:
            cur.execute(
                "SELECT version, state, is_current FROM model_versions ORDER BY created_at"
            )
            return [ModelVersion(*row) for row in cur.fetchall()]

        return self._transaction(work)

    # -- rows ------------------------------------------------------------------------------

    def upsert(self, row: ImageRow) -> bool:
        """Insert the row; False when this picture (SHA-256) is already indexed for the version."""
        return self.upsert_many([row])[0]

    def upsert_many(self, rows: Sequence[ImageRow]) -> list[bool]:
        """Insert the rows in one transaction (all or none); per row, True if it was inserted.

        False for a row whose picture (SHA-256) was already indexed for its version, including
        by an earlier row of the same call (the first of equal rows wins).
        """
        values = [
            (
                row.key, row.sha256, row.label, float(row.probability),
                _as_embedding(row.embedding), row.model_version, int(row.width),
                int(row.height), int(row.size_bytes),
            )
            for row in rows
        ]
        if not values:
            return []

        def work(cur) -> set[tuple[str, str]]:
            returned = execute_values(
                cur,
                "INSERT INTO images (key, sha256, label, probability, embedding, model_version,"
                " width, height, size_bytes) VALUES %s"
                " ON CONFLICT (sha256, model_version) DO NOTHING"
                " RETURNING sha256, model_version",
                values,
                page_size=max(len(values), 1),  # one statement for the whole batch
                fetch=True,
            )
            return {(sha, version) for sha, version in returned}

        inserted = self._transaction(work)
        results = []
        for row in rows:
            identity = (row.sha256, row.model_version)
            results.append(identity in inserted)
            inserted.discard(identity)  # later equal rows in this call were the conflicts
        return results

    def nearest(
        self,
        embedding: np.ndarray | Sequence[float],
        k: int = 5,
        label: str | None = None,
        exclude_sha256: str | None = None,
        model_version: str | None = None,
    ) -> list[Neighbor]:
        """The k rows most similar (cosine) to `embedding` within one model version.

        Iterative index scans let the HNSW scan continue past its first `ef_search` candidates
        until k rows survive the label / SHA filters, so a rare class still yields k neighbours.
        `relaxed_order` may return candidates slightly out of order; the outer query re-sorts.
        """
        k = int(k)
        if k <= 0:
            return []
        query = _as_embedding(embedding)

        def work(cur) -> list[Neighbor]:
            # hnsw.ef_search / hnsw.iterative_scan are session settings of this connection.
            cur.execute(
                "WITH candidates AS MATERIALIZED ("
                "  SELECT key, label, sha256, embedding <=> %(query)s AS distance"
                "  FROM images"
                "  WHERE model_version = COALESCE(%(version)s::text,"
                "        (SELECT version FROM model_versions WHERE is_current))"
                "    AND (%(label)s::text IS NULL OR label = %(label)s::text)"
                "    AND (%(exclude)s::text IS NULL OR sha256 <> %(exclude)s::text)"
                "  ORDER BY embedding <=> %(query)s"
                "  LIMIT %(k)s"
                ") SELECT key, label, sha256, distance FROM candidates"
                " ORDER BY distance, key",
                {
                    "query": query, "version": model_version, "label": label,
                    "exclude": exclude_sha256, "k": k,
                },
            )
            return [
                Neighbor(key=key, label=lab, similarity=1.0 - float(distance), sha256=sha)
                for key, lab, sha, distance in cur.fetchall()
            ]

        return self._read(work)

    def count(self, model_version: str | None = None) -> int:
        """Rows of `model_version` (default: the current version; 0 when there is none)."""

        def work(cur) -> int:
            cur.execute(
                "SELECT count(*) FROM images WHERE model_version = COALESCE(%s::text,"
                " (SELECT version FROM model_versions WHERE is_current))",
                (model_version,),
            )
            return int(cur.fetchone()[0])

        return self._transaction(work)

    def has_sha256(self, sha256: str, model_version: str | None = None) -> bool:
        def work(cur) -> bool:
            cur.execute(
                "SELECT EXISTS (SELECT 1 FROM images WHERE sha256 = %s AND model_version ="
                " COALESCE(%s::text, (SELECT version FROM model_versions WHERE is_current)))",
                (sha256, model_version),
            )
            return bool(cur.fetchone()[0])

        return self._read(work)

    def existing_sha256(
        self, sha256s: Sequence[str], model_version: str | None = None
    ) -> set[str]:
        """Which of these pictures already have a row for `model_version` (default: current)."""
        wanted = list(dict.fromkeys(sha256s))
        if not wanted:
            return set()

        def work(cur) -> set[str]:
            cur.execute(
                "SELECT sha256 FROM images WHERE sha256 = ANY(%s) AND model_version ="
                " COALESCE(%s::text, (SELECT version FROM model_versions WHERE is_current))",
                (wanted, model_version),
            )
            return {sha for (sha,) in cur.fetchall()}

        return self._read(work)

    def keys(self, model_version: str | None = None) -> list[str]:
        def work(cur) -> list[str]:
            cur.execute(
                "SELECT key FROM images WHERE model_version = COALESCE(%s::text,"
                " (SELECT version FROM model_versions WHERE is_current)) ORDER BY key",
                (model_version,),
            )
            return [key for (key,) in cur.fetchall()]

        return self._transaction(work)

    def sample_embeddings(
        self, model_version: str | None = None, limit: int = 1000
    ) -> list[EmbeddingSample]:
        """Up to `limit` rows spread over the collection (stable order: by md5 of the SHA)."""

        def work(cur) -> list[EmbeddingSample]:
            cur.execute(
                "SELECT key, label, embedding FROM images WHERE model_version = COALESCE("
                " %s::text, (SELECT version FROM model_versions WHERE is_current))"
                " ORDER BY md5(sha256) LIMIT %s",
                (model_version, max(0, int(limit))),
            )
            return [
                EmbeddingSample(key=key, label=label, embedding=_to_numpy(emb))
                for key, label, emb in cur.fetchall()
            ]

        return self._transaction(work)


def _to_numpy(value: Any) -> np.ndarray:
    # pgvector >= 0.3 returns a Vector object; older adapters returned arrays.
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    return np.asarray(value, dtype=np.float32)


def _as_embedding(values: np.ndarray | Sequence[float]) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32).reshape(-1)
    if vector.shape != (EMBEDDING_DIM,):
        raise ValueError(f"embedding must have {EMBEDDING_DIM} values, got {vector.shape[0]}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("embedding contains NaN or infinity")
    return vector


def secret_connection_factory(
    secrets_client: Any, secret_arn: str, *, host: str, port: int, dbname: str
) -> ConnectionFactory:
    """Connections authenticated with an RDS-style secret ({"username", "password"}).

    The secret is read on every (re)connect, which happens once per container plus after a
    failure, so a rotated password is picked up without a redeploy. It is never logged.
    """

    def connect() -> psycopg2.extensions.connection:
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
            application_name="artlens",
        )

    return connect


def store_from_settings(settings: Any, *, secrets_client: Any = None) -> EmbeddingStore:
    """The store a handler uses: DATABASE_URL locally, Secrets Manager credentials on AWS."""
    if settings.database_url:
        return EmbeddingStore(settings.database_url)
    if not (settings.db_secret_arn and settings.db_host and settings.db_name):
        raise ValueError("settings name no database")
    if secrets_client is None:
        import boto3

        secrets_client = boto3.client("secretsmanager")
    return EmbeddingStore(
        secret_connection_factory(
            secrets_client,
            settings.db_secret_arn,
            host=settings.db_host,
            port=settings.db_port,
            dbname=settings.db_name,
        )
    )
