"""Embeddings and k-NN: the `images` table of the index database (pgvector, HNSW, cosine).

Each model version keeps its embeddings at its own dimension D (`model_versions.embedding_dim`):
the column is an untyped `vector`, and each version has its own partial HNSW index over
`embedding::vector(D)` WHERE model_version = that version (`version_index_sql`, created when
the version is registered). A k-NN query names the version and casts the same way, so the
planner can prove the index applies and scans it.

Every value reaches SQL as a query parameter; identifiers, literals in DDL and type modifiers
are composed with `psycopg2.sql`, never by string formatting. Which model version a query
searches defaults to the current one (the `model_versions` table, artlens.models.versions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg2 import sql
from psycopg2.extras import execute_values

from artlens.errors import NotFound
from artlens.index.database import ConnectionFactory, Cursor, Database, fetch_value
from artlens.index.migrations import migrate, schema_lock
from artlens.index.works import NO_FIELDS, WORK_COLUMNS, WorkFields, work_fields

EMBEDDING_DIM = 128  # the first models' dimension; each version records its own
MAX_EMBEDDING_DIM = 2000  # pgvector's HNSW limit for `vector`
# Re-tuned for model v2's 256-d embeddings (make bench, 100,000 rows): its sweep chose m 16,
# ef_construction 128 (recall@5 0.995 at ef_search 10, p50 1.6 ms, build 26 s); with
# ef_construction 64 an earlier run measured recall@5 0.985 at ef_search 10.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 128
# Candidates kept per HNSW search: 40, above the 10 the bench needed on its synthetic queries,
# as headroom for real ones. With iterative scans on, a selective label filter makes the index
# keep scanning in rounds of this size until k rows pass the filter.
DEFAULT_EF_SEARCH = 40
ITERATIVE_SCAN = "relaxed_order"
# Rows of one model version: the one named by the parameter, or the current one when it is NULL.
OF_VERSION = sql.SQL(
    "model_version = COALESCE(%s::text, (SELECT version FROM model_versions WHERE is_current))"
)


@dataclass(frozen=True)
class ImageRow:
    key: str
    sha256: str
    label: str
    probability: float
    embedding: np.ndarray  # float32 [D], D = the version's embedding_dim
    model_version: str
    width: int
    height: int
    size_bytes: int
    # Every class's probability in the model's order (the review queue reads p(catalogued)).
    probabilities: Sequence[float] | None = None


@dataclass(frozen=True)
class Neighbor:
    key: str
    label: str
    similarity: float  # 1 - cosine distance
    sha256: str
    work: WorkFields = NO_FIELDS  # the work's record (artlens.index.works), joined
    phash: int | None = None  # the work's perceptual hash (artlens.duplicates), joined


@dataclass(frozen=True)
class IndexedImage:
    key: str
    label: str
    probability: float


@dataclass(frozen=True)
class EmbeddingSample:
    key: str
    label: str
    embedding: np.ndarray
    sha256: str
    work: WorkFields = NO_FIELDS


def version_index_name(version: str) -> str:
    """The partial HNSW index of one version (a hash: version names may hold any character)."""
    return "images_hnsw_" + hashlib.md5(version.encode(), usedforsecurity=False).hexdigest()[:16]


def version_index_sql(
    version: str, dim: int, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION
) -> sql.Composed:
    """DDL of the partial HNSW index over one version's rows at its dimension."""
    return sql.SQL(
        "CREATE INDEX IF NOT EXISTS {name} ON images USING hnsw"
        " ((embedding::vector({dim})) vector_cosine_ops)"
        " WITH (m = {m}, ef_construction = {ef}) WHERE model_version = {version}"
    ).format(
        name=sql.Identifier(version_index_name(version)), dim=sql.Literal(checked_dimension(dim)),
        m=sql.Literal(int(m)), ef=sql.Literal(int(ef_construction)),
        version=sql.Literal(version),
    )


def checked_dimension(dim: int) -> int:
    if not 1 <= int(dim) <= MAX_EMBEDDING_DIM:
        raise ValueError(f"embedding dimension must be 1..{MAX_EMBEDDING_DIM}, got {dim}")
    return int(dim)


WORKS_SELECT = sql.SQL(", ").join(
    sql.SQL("w.{}").format(sql.Identifier(column)) for column in WORK_COLUMNS
)


def nearest_sql(dim: int, groups: int = 1, excluded_row: bool = False) -> sql.Composed:
    """The k-NN statement over one version's rows at dimension `dim`, for `groups` searches at
    once (each with its own `label_<g>` filter and `k_<g>` limit; one round trip for all).
    `excluded_row`: also the `exclude` picture's own row of the version, if indexed, as group
    number `groups` (distance 0), so "is it already in the collection?" costs no round trip.

    `model_version = <the version>` and `embedding::vector(dim)` are exactly the partial
    index's predicate and expression, so the planner scans that version's HNSW index, once per
    group. With `relaxed_order` the scan may return candidates slightly out of order: each group
    is limited inside its parentheses and the outer ORDER BY re-sorts.
    """
    cast = sql.SQL("vector({})").format(sql.Literal(checked_dimension(dim)))
    searches = [
        sql.SQL(
            "(SELECT {g}::int AS grp, key, label, sha256,"
            " embedding::{cast} <=> %(query)s::{cast} AS distance"
            " FROM images"
            " WHERE model_version = %(version)s"
            "   AND ({label}::text IS NULL OR label = {label}::text)"
            "   AND (%(exclude)s::text IS NULL OR sha256 <> %(exclude)s::text)"
            " ORDER BY embedding::{cast} <=> %(query)s::{cast}"
            " LIMIT {k})"
        ).format(
            g=sql.Literal(g), cast=cast, label=sql.Placeholder(f"label_{g}"),
            k=sql.Placeholder(f"k_{g}"),
        )
        for g in range(int(groups))
    ]
    if excluded_row:
        searches.append(sql.SQL(
            "(SELECT {g}::int AS grp, key, label, sha256, 0::float8 AS distance FROM images"
            " WHERE model_version = %(version)s AND sha256 = %(exclude)s::text LIMIT 1)"
        ).format(g=sql.Literal(int(groups))))
    # The records are joined to the few rows found, outside the index scans, so each scan
    # stays exactly the partial index's shape: one statement, no query per neighbour.
    return sql.SQL(
        "SELECT found.grp, found.key, found.label, found.sha256, found.distance, w.phash,"
        " {works}"
        " FROM ({searches}) AS found LEFT JOIN works w ON w.sha256 = found.sha256"
        " ORDER BY found.grp, found.distance, found.key"
    ).format(works=WORKS_SELECT, searches=sql.SQL(" UNION ALL ").join(searches))


# The search settings, local to the search's own transaction (is_local = true): a session-level
# setting would pin the connection to its client behind RDS Proxy (no multiplexing), and would
# leak into whatever runs next on a pooled connection.
SEARCH_SETTINGS = sql.SQL(
    "SELECT set_config('hnsw.ef_search', %(ef_search)s, true),"
    " set_config('hnsw.iterative_scan', %(iterative_scan)s, true)"
)


class EmbeddingStore:
    """Rows of the `images` table: one per (picture, model version), with its embedding."""

    def __init__(self, database: Database | str | ConnectionFactory, *,
                 ef_search: int = DEFAULT_EF_SEARCH):
        self.database = database if isinstance(database, Database) else Database(database)
        self.ef_search = ef_search  # set per search, in its transaction (SEARCH_SETTINGS)
        self._dims: dict[str, int] = {}  # a version's dimension never changes

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if not 1 <= int(value) <= 1000:  # pgvector's accepted range
            raise ValueError("ef_search must be between 1 and 1000")
        self._ef_search = int(value)

    def migrate(self) -> list[str]:
        """Apply pending schema migrations (artlens.index.migrations)."""
        return migrate(self.database)

    def close(self) -> None:
        self.database.close()

    # -- HNSW administration ---------------------------------------------------------------

    def index_parameters(self, model_version: str | None = None) -> dict[str, int]:
        """The build options of a version's HNSW index (default: the current version's)."""
        version, _ = self.version_and_dimension(model_version)

        def work(cur: Cursor) -> dict[str, int]:
            cur.execute(
                "SELECT c.reloptions FROM pg_class c WHERE c.relname = %s",
                (version_index_name(version),),
            )
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"Model version {version!r} has no HNSW index.")
            options = dict(opt.split("=", 1) for opt in (row[0] or []))
            return {name: int(value) for name, value in options.items()}

        return self.database.read(work)

    def rebuild_index(
        self, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION
    ) -> None:
        """Re-create every version's HNSW index with other build options (the benchmark)."""
        m, ef_construction = int(m), int(ef_construction)
        if not 2 <= m <= 100 or not 4 <= ef_construction <= 1000 or ef_construction < 2 * m:
            raise ValueError("need 2 <= m <= 100 and 2*m <= ef_construction <= 1000")

        def work(cur: Cursor) -> None:
            schema_lock(cur)
            cur.execute("SELECT version, embedding_dim FROM model_versions")
            for version, dim in cur.fetchall():
                cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
                    sql.Identifier(version_index_name(version))
                ))
                cur.execute(version_index_sql(version, dim, m, ef_construction))

        self.database.transaction(work)

    # -- dimensions ------------------------------------------------------------------------

    def version_and_dimension(self, model_version: str | None = None) -> tuple[str, int]:
        """The version (default: the current one) and its embedding dimension; NotFound when
        the version is not registered (or none is current)."""
        if model_version is not None and model_version in self._dims:
            return model_version, self._dims[model_version]

        def work(cur: Cursor) -> tuple[str, int] | None:
            cur.execute(
                "SELECT version, embedding_dim FROM model_versions WHERE version = COALESCE("
                "%s::text, (SELECT version FROM model_versions WHERE is_current))",
                (model_version,),
            )
            row = cur.fetchone()
            return (str(row[0]), int(row[1])) if row else None

        found = self.database.read(work)
        if found is None:
            raise NotFound(
                f"Model version {model_version!r} is not registered."
                if model_version is not None else "No model version is current yet."
            )
        self._dims[found[0]] = found[1]
        return found

    # -- rows ------------------------------------------------------------------------------

    def upsert(self, row: ImageRow) -> bool:
        """Insert the row; False when this picture (SHA-256) is already indexed for the version."""
        return self.upsert_many([row])[0]

    def upsert_many(self, rows: Sequence[ImageRow]) -> list[bool]:
        """Insert the rows in one transaction (all or none); per row, True if it was inserted.

        False for a row whose picture (SHA-256) was already indexed for its version, including
        by an earlier row of the same call (the first of equal rows wins).
        """
        dims = {v: self.version_and_dimension(v)[1] for v in {r.model_version for r in rows}}
        values = [
            (
                row.key, row.sha256, row.label, float(row.probability),
                _as_embedding(row.embedding, dims[row.model_version]), row.model_version,
                int(row.width), int(row.height), int(row.size_bytes),
                None if row.probabilities is None
                else [float(p) for p in row.probabilities],
            )
            for row in rows
        ]
        if not values:
            return []

        def work(cur: Cursor) -> set[tuple[str, str]]:
            returned = execute_values(
                cur,
                "INSERT INTO images (key, sha256, label, probability, embedding, model_version,"
                " width, height, size_bytes, probabilities) VALUES %s"
                " ON CONFLICT (sha256, model_version) DO NOTHING"
                " RETURNING sha256, model_version",
                values,
                page_size=max(len(values), 1),  # one statement for the whole batch
                fetch=True,
            )
            return {(sha, version) for sha, version in returned}

        inserted = self.database.transaction(work)
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
        """
        return self.nearest_groups(embedding, [(label, k)], exclude_sha256, model_version)[0]

    def nearest_groups(
        self,
        embedding: np.ndarray | Sequence[float],
        groups: Sequence[tuple[str | None, int]],
        exclude_sha256: str | None = None,
        model_version: str | None = None,
        with_excluded: bool = False,
    ) -> list[list[Neighbor]]:
        """Several k-NN searches of one embedding in one round trip: per (label or None for
        every label, k) group, its neighbours, nearest first (`nearest` is one group).
        `with_excluded`: one more list at the end, the `exclude_sha256` picture's own row of the
        version (similarity 1) when it is indexed, else empty."""
        own = with_excluded and exclude_sha256 is not None
        results: list[list[Neighbor]] = [[] for _ in range(len(groups) + with_excluded)]
        live = [(i, label, int(k)) for i, (label, k) in enumerate(groups) if int(k) > 0]
        if own:
            live.append((len(groups), None, 1))
        if not live:
            return results
        try:
            version, dim = self.version_and_dimension(model_version)
        except NotFound:
            return results  # no such version (or none current yet): nothing to search
        params: dict[str, Any] = {
            "query": _as_embedding(embedding, dim), "version": version,
            "exclude": exclude_sha256, "ef_search": str(self.ef_search),
            "iterative_scan": ITERATIVE_SCAN,
        }
        searches = live[:-1] if own else live
        for g, (_, label, k) in enumerate(searches):
            params[f"label_{g}"], params[f"k_{g}"] = label, k
        # One simple-query string: PostgreSQL runs its statements as one implicit transaction,
        # so the local settings hold for the search and are gone after it, in one round trip.
        statement = sql.SQL("{}; {}").format(
            SEARCH_SETTINGS, nearest_sql(dim, len(searches), excluded_row=own))

        def work(cur: Cursor) -> list[tuple[Any, ...]]:
            cur.execute(statement, params)
            return cur.fetchall()

        for g, key, lab, sha, distance, phash, *record in self.database.read(work):
            results[live[g][0]].append(
                Neighbor(key=key, label=lab, similarity=1.0 - float(distance), sha256=sha,
                         work=work_fields(record), phash=phash)
            )
        return results

    def nearest_of_indexed(
        self, sha256s: Sequence[str], k: int, model_version: str
    ) -> dict[str, list[Neighbor]]:
        """The k nearest other works of each of these indexed works (their own stored
        embeddings), in one round trip: one index scan per work, as `nearest` does."""
        wanted = list(dict.fromkeys(sha256s))
        if not wanted or k < 1:
            return {sha: [] for sha in wanted}
        version, dim = self.version_and_dimension(model_version)
        cast = sql.SQL("vector({})").format(sql.Literal(checked_dimension(dim)))
        statement = sql.SQL(
            "{settings}; SELECT q.sha256, n.key, n.label, n.sha256, n.distance, w.phash, {works}"
            " FROM images q CROSS JOIN LATERAL ("
            "   SELECT o.key, o.label, o.sha256,"
            "          o.embedding::{cast} <=> q.embedding::{cast} AS distance"
            "   FROM images o WHERE o.model_version = %(version)s AND o.sha256 <> q.sha256"
            "   ORDER BY o.embedding::{cast} <=> q.embedding::{cast} LIMIT %(k)s) AS n"
            " LEFT JOIN works w ON w.sha256 = n.sha256"
            " WHERE q.model_version = %(version)s AND q.sha256 = ANY(%(wanted)s)"
            " ORDER BY q.sha256, n.distance"
        ).format(settings=SEARCH_SETTINGS, works=WORKS_SELECT, cast=cast)
        params = {"version": version, "k": int(k), "wanted": wanted,
                  "ef_search": str(self.ef_search), "iterative_scan": ITERATIVE_SCAN}

        def work(cur: Cursor) -> list[tuple[Any, ...]]:
            cur.execute(statement, params)
            return cur.fetchall()

        found: dict[str, list[Neighbor]] = {sha: [] for sha in wanted}
        for sha, key, label, other, distance, phash, *record in self.database.read(work):
            found[sha].append(Neighbor(key=key, label=label, similarity=1.0 - float(distance),
                                       sha256=other, work=work_fields(record), phash=phash))
        return found

    def key_of(self, sha256: str, model_version: str | None = None) -> str | None:
        """The gallery key of a picture, by the SHA-256 of its bytes: its row of
        `model_version` (default: current) first, else of any version (the object is the same)."""

        def work(cur: Cursor) -> str | None:
            cur.execute(
                sql.SQL(
                    "SELECT key FROM images WHERE sha256 = %s"
                    " ORDER BY ({}) DESC, created_at DESC LIMIT 1"
                ).format(OF_VERSION),
                (sha256, model_version),
            )
            row = cur.fetchone()
            return str(row[0]) if row else None

        return self.database.read(work)

    def image_of(self, sha256: str, model_version: str | None = None) -> IndexedImage | None:
        """A picture's row of `model_version` (default: current): key, label, probability."""

        def work(cur: Cursor) -> IndexedImage | None:
            cur.execute(
                sql.SQL("SELECT key, label, probability FROM images WHERE sha256 = %s AND {}")
                .format(OF_VERSION),
                (sha256, model_version),
            )
            row = cur.fetchone()
            return IndexedImage(str(row[0]), str(row[1]), float(row[2])) if row else None

        return self.database.read(work)

    def count(self, model_version: str | None = None) -> int:
        """Rows of `model_version` (default: the current version; 0 when there is none)."""

        def work(cur: Cursor) -> int:
            cur.execute(
                sql.SQL("SELECT count(*) FROM images WHERE {}").format(OF_VERSION),
                (model_version,),
            )
            return int(fetch_value(cur))

        return self.database.transaction(work)

    def has_sha256(self, sha256: str, model_version: str | None = None) -> bool:
        def work(cur: Cursor) -> bool:
            cur.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM images WHERE sha256 = %s AND {})").format(
                    OF_VERSION
                ),
                (sha256, model_version),
            )
            return bool(fetch_value(cur))

        return self.database.read(work)

    def existing_sha256(
        self, sha256s: Sequence[str], model_version: str | None = None
    ) -> set[str]:
        """Which of these pictures already have a row for `model_version` (default: current)."""
        wanted = list(dict.fromkeys(sha256s))
        if not wanted:
            return set()

        def work(cur: Cursor) -> set[str]:
            cur.execute(
                sql.SQL("SELECT sha256 FROM images WHERE sha256 = ANY(%s) AND {}").format(
                    OF_VERSION
                ),
                (wanted, model_version),
            )
            return {sha for (sha,) in cur.fetchall()}

        return self.database.read(work)

    def keys_missing_from(
        self, model_version: str, reference_version: str, limit: int = 100_000
    ) -> list[str]:
        """Keys of `reference_version`'s rows whose picture has no `model_version` row yet:
        one anti-join on the (sha256, model_version) unique index, no listing of the lake, so a
        switch over millions of rows costs one index pass, not thousands of LIST calls."""

        def work(cur: Cursor) -> list[str]:
            cur.execute(
                "SELECT o.key FROM images o WHERE o.model_version = %s AND NOT EXISTS"
                " (SELECT 1 FROM images n WHERE n.sha256 = o.sha256 AND n.model_version = %s)"
                " ORDER BY o.key LIMIT %s",
                (reference_version, model_version, max(0, int(limit))),
            )
            return [key for (key,) in cur.fetchall()]

        return self.database.read(work)

    def keys(self, model_version: str | None = None) -> list[str]:
        def work(cur: Cursor) -> list[str]:
            cur.execute(
                sql.SQL("SELECT key FROM images WHERE {} ORDER BY key").format(OF_VERSION),
                (model_version,),
            )
            return [key for (key,) in cur.fetchall()]

        return self.database.transaction(work)

    def sample_embeddings(
        self, model_version: str | None = None, limit: int = 1000
    ) -> list[EmbeddingSample]:
        """Up to `limit` rows spread over the collection (stable order: by md5 of the SHA)."""

        def work(cur: Cursor) -> list[EmbeddingSample]:
            cur.execute(
                sql.SQL(
                    "SELECT i.key, i.label, i.embedding, i.sha256, {works} FROM images i"
                    " LEFT JOIN works w ON w.sha256 = i.sha256 WHERE i.{of_version}"
                    " ORDER BY md5(i.sha256) LIMIT %s"
                ).format(works=WORKS_SELECT, of_version=OF_VERSION),
                (model_version, max(0, int(limit))),
            )
            return [
                EmbeddingSample(key=key, label=label, embedding=_to_numpy(emb), sha256=sha,
                                work=work_fields(record))
                for key, label, emb, sha, *record in cur.fetchall()
            ]

        return self.database.transaction(work)


def _to_numpy(value: Any) -> np.ndarray:
    # pgvector >= 0.3 returns a Vector object; older adapters returned arrays.
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    return np.asarray(value, dtype=np.float32)


def _as_embedding(values: np.ndarray | Sequence[float], dim: int) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32).reshape(-1)
    if vector.shape != (dim,):
        raise ValueError(f"embedding must have {dim} values, got {vector.shape[0]}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("embedding contains NaN or infinity")
    return vector
