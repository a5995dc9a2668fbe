"""Model versions with different embedding dimensions side by side in one index (real PostgreSQL
+ pgvector): each version's rows at its own dimension, its own partial HNSW index used by its
k-NN queries, switch and rollback; and the migration that moved the first, 128-d-only schema."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import psycopg2
import pytest

from artlens.index.database import Database
from artlens.index.embeddings import EmbeddingStore, ImageRow, version_index_name
from artlens.index.migrations import MIGRATIONS_DIR, migrate, migration_files
from artlens.models.card import ModelIntegrityError
from artlens.models.versions import rollback, versions_of

DIMS = {"v1": 128, "v2": 320}
ROWS = 300


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def rows_for(version: str, vectors: np.ndarray) -> list[ImageRow]:
    def sha(i: int) -> str:
        return hashlib.sha256(f"{version}:{i}".encode()).hexdigest()

    return [
        ImageRow(key=f"gallery/{sha(i)}.jpg", sha256=sha(i), label=("painting", "sculpture")[i % 2],
                 probability=0.9, embedding=v, model_version=version, width=1, height=1,
                 size_bytes=1)
        for i, v in enumerate(vectors)
    ]


def exact(rows: list[ImageRow], query: np.ndarray, k: int) -> list[str]:
    matrix = np.stack([r.embedding for r in rows]).astype(np.float64)
    sims = matrix @ query / np.linalg.norm(matrix, axis=1) / np.linalg.norm(query)
    return [rows[i].key for i in np.argsort(-sims, kind="stable")[:k]]


def plan(dsn: str, version: str, dim: int, query: np.ndarray, groups: int = 1) -> str:
    """EXPLAIN of the store's own k-NN statement for `version`. With other plans off,
    the plan names the version's index only if the planner can prove it applies (a few hundred
    rows would otherwise be sorted exactly, and the test would prove nothing)."""
    from pgvector.psycopg2 import register_vector

    from artlens.index.embeddings import nearest_sql

    conn = psycopg2.connect(dsn)
    try:
        register_vector(conn)
        with conn.cursor() as cur:
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                cur.execute(f"SET {setting} = off")
            statement = nearest_sql(dim, groups).as_string(cur)
            params = {"query": query, "version": version, "exclude": None}
            for g in range(groups):  # every label, then one label per further group
                params[f"label_{g}"], params[f"k_{g}"] = (None, 5) if g == 0 else ("painting", 1)
            cur.execute("EXPLAIN " + statement, params)
            return "\n".join(line for (line,) in cur.fetchall())
    finally:
        conn.close()


@pytest.fixture
def two_versions(store):
    rng = np.random.default_rng(3)
    states = versions_of(store)
    made = {}
    for version, dim in DIMS.items():
        assert states.register(version, dim) is True
        made[version] = rows_for(version, unit(rng, ROWS, dim))
        assert all(store.upsert_many(made[version]))
        states.mark_ready(version)
    states.activate("v1")
    return store, made, rng


def test_each_version_keeps_its_dimension_and_is_searched_through_its_own_index(
    pg_dsn, two_versions
):
    store, made, rng = two_versions
    conn = psycopg2.connect(pg_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("ANALYZE images")
        cur.execute("SELECT model_version, vector_dims(embedding), count(*) FROM images"
                    " GROUP BY 1, 2 ORDER BY 1")
        assert cur.fetchall() == [("v1", 128, ROWS), ("v2", 320, ROWS)]
        cur.execute("SELECT version, embedding_dim FROM model_versions ORDER BY version")
        assert cur.fetchall() == [("v1", 128), ("v2", 320)]
    conn.close()

    for version, dim in DIMS.items():
        query = unit(rng, 1, dim)[0]
        explained = plan(pg_dsn, version, dim, query)
        assert f"Index Scan using {version_index_name(version)}" in explained, explained
        # Predict's searches in one statement (neighbours, nearest of each candidate type):
        # each group scans the index.
        grouped = plan(pg_dsn, version, dim, query, groups=3)
        assert grouped.count(f"Index Scan using {version_index_name(version)}") == 3, grouped
        got = [n.key for n in store.nearest(query, k=5, model_version=version)]
        assert len(set(got) & set(exact(made[version], query, 5))) >= 4
        assert all(key in {r.key for r in made[version]} for key in got)  # never the other's

    # A query of the wrong dimension for a version is refused, not silently mis-searched.
    with pytest.raises(ValueError):
        store.nearest(unit(rng, 1, 128)[0], model_version="v2")


def test_switch_and_rollback_between_dimensions(two_versions):
    store, made, rng = two_versions
    states = versions_of(store)
    q128, q320 = unit(rng, 1, 128)[0], unit(rng, 1, 320)[0]
    assert states.current() == "v1"
    assert len(store.nearest(q128, k=5)) == 5  # the current version, at its dimension
    assert store.count() == ROWS

    states.activate("v2")
    assert [n.key for n in store.nearest(q320, k=3)] == exact(made["v2"], q320, 3)
    with pytest.raises(ValueError):
        store.nearest(q128, k=3)  # the current version now takes 320-d queries

    assert rollback(store) == "v1"
    assert [n.key for n in store.nearest(q128, k=3)] == exact(made["v1"], q128, 3)
    assert states.previous() == "v2"


def test_a_version_keeps_the_dimension_it_was_registered_with(store):
    states = versions_of(store)
    assert states.register("v1", 256) is True
    assert states.register("v1", 256) is False
    with pytest.raises(ModelIntegrityError):
        states.register("v1", 128)
    with pytest.raises(ValueError):
        states.register("huge", 4000)  # beyond pgvector's HNSW limit
    assert [v.version for v in states.versions()] == ["v1"]


def test_the_migration_moves_a_first_schema_index_with_its_rows(pg_dsn, tmp_path):
    """A database set up by the first two migrations (one 128-d column, one global HNSW
    index) keeps its rows and versions, and each version gets its own index."""
    first = tmp_path / "sql"
    first.mkdir()
    for path in migration_files()[:2]:
        shutil.copy(path, first / path.name)
    database = Database(pg_dsn)
    assert migrate(database, first) == ["001_init.sql", "002_request_nonces.sql"]
    rng = np.random.default_rng(5)
    vectors = unit(rng, 40, 128)

    def legacy(cur) -> None:
        cur.execute("INSERT INTO model_versions (version, state, is_current, activated_at)"
                    " VALUES ('old', 'ready', true, now()), ('empty', 'building', false, NULL)")
        for i, vector in enumerate(vectors):
            cur.execute(
                "INSERT INTO images (key, sha256, label, probability, embedding, model_version,"
                " width, height, size_bytes) VALUES (%s, %s, 'painting', 0.9, %s, 'old', 1, 1, 1)",
                (f"gallery/{i}.jpg", f"{i:064x}", "[" + ",".join(map(str, vector)) + "]"),
            )

    database.transaction(legacy)
    rest = [p.name for p in migration_files()[2:]]
    assert migrate(database, MIGRATIONS_DIR) == rest and "003_per_version_dimension.sql" in rest
    store = EmbeddingStore(database)
    assert store.count("old") == 40
    assert store.version_and_dimension("old") == ("old", 128)
    assert store.version_and_dimension("empty") == ("empty", 128)
    assert store.index_parameters("old") == {"m": 16, "ef_construction": 64}
    query = vectors[7]
    assert store.nearest(query, k=1)[0].key == "gallery/7.jpg"
    store.close()
