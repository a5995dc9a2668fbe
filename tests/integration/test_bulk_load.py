"""Bulk loading (artlens.index.bulk) against the real embedded PostgreSQL + pgvector: rows by
binary COPY with the version's HNSW index dropped, the index rebuilt afterwards with its
maintenance_work_mem, reruns that skip what is already there, and the halfvec option."""

from __future__ import annotations

import hashlib

import numpy as np
import psycopg2
import pytest

from artlens.errors import NotFound
from artlens.index.bulk import (
    build_halfvec_index,
    bulk_load,
    halfvec_index_name,
    halfvec_nearest_sql,
)
from artlens.index.embeddings import EmbeddingStore, ImageRow, version_index_name
from artlens.models.versions import versions_of

DIM = 256  # model v2's embedding size
ROWS = 5_000
VERSION = "bulk-v2"
LABELS = ("drawings", "engraving", "iconography", "painting", "sculpture")
# With a few thousand rows the planner could sort exactly; these leave the HNSW scan as the
# only way to produce the order, so a result proves the rebuilt index answers.
INDEX_ONLY = "-c enable_seqscan=off -c enable_bitmapscan=off -c enable_sort=off"


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(
        np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def rows_of(vectors: np.ndarray, start: int = 0, version: str = VERSION) -> list[ImageRow]:
    return [
        ImageRow(
            key=f"gallery/{i}.jpg", sha256=hashlib.sha256(f"{i}".encode()).hexdigest(),
            label=LABELS[i % len(LABELS)], probability=0.9, embedding=vector,
            model_version=version, width=640, height=480, size_bytes=1000 + i,
            probabilities=[0.9, 0.025, 0.025, 0.025, 0.025],
        )
        for i, vector in enumerate(vectors, start=start)
    ]


@pytest.fixture
def building(store) -> EmbeddingStore:
    """A registered version that is not current: what a bulk load fills."""
    versions_of(store).register(VERSION, DIM)
    return store


def index_exists(dsn: str, name: str) -> bool:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
        return bool(cur.fetchone()[0])


def test_bulk_load_copies_rows_then_builds_the_index(building, pg_dsn):
    vectors = clustered(ROWS)
    report = bulk_load(building, VERSION, rows_of(vectors), chunk_rows=1_500,
                       maintenance_work_mem="96MB", m=12, ef_construction=48)
    assert (report.rows, report.inserted, report.skipped) == (ROWS, ROWS, 0)
    assert report.build_s > 0 and report.load_s > 0
    assert report.index_bytes > ROWS * DIM * 4 / 2  # the graph holds every vector
    assert building.count(VERSION) == ROWS
    assert building.index_parameters(VERSION) == {"m": 12, "ef_construction": 48}

    # Every column arrived as written (binary COPY of text, real, vector, integers).
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT key, sha256, label, probability, embedding::text, width, height,"
                    " size_bytes FROM images WHERE key = 'gallery/1234.jpg'")
        key, sha, label, probability, embedding, width, height, size = cur.fetchone()
        cur.execute("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE"
                    " table_name = 'images' AND column_name = 'probabilities')")
        if cur.fetchone()[0]:  # the review queue's column (a later migration)
            cur.execute("SELECT probabilities FROM images WHERE key = 'gallery/1234.jpg'")
            np.testing.assert_allclose(cur.fetchone()[0], [0.9, 0.025, 0.025, 0.025, 0.025])
    # The store's session is back at the server's setting: the build set it for itself only.
    def setting(cur):
        cur.execute("SHOW maintenance_work_mem")
        return cur.fetchone()[0]

    assert building.database.read(setting) != "96MB"
    assert (key, sha, label, width, height, size) == (
        "gallery/1234.jpg", hashlib.sha256(b"1234").hexdigest(), LABELS[1234 % 5], 640, 480,
        2234)
    assert probability == pytest.approx(0.9)
    stored = np.array([float(v) for v in embedding.strip("[]").split(",")], dtype=np.float32)
    np.testing.assert_allclose(stored, vectors[1234], rtol=1e-6)

    # The rebuilt index answers k-NN (index scans only), close to exact.
    indexed = EmbeddingStore(lambda: psycopg2.connect(pg_dsn, options=INDEX_ONLY),
                             ef_search=200)
    try:
        rng = np.random.default_rng(7)
        queries = vectors[rng.integers(0, ROWS, 20)] + 0.02 * rng.standard_normal(
            (20, DIM)).astype(np.float32)
        truth = np.argsort(-(vectors @ queries.T), axis=0)[:5].T
        recall = np.mean([
            len({n.key for n in indexed.nearest(q, k=5, model_version=VERSION)}
                & {f"gallery/{i}.jpg" for i in truth[j]}) / 5
            for j, q in enumerate(queries)
        ])
        assert recall >= 0.9
    finally:
        indexed.close()


def test_a_rerun_skips_what_is_indexed_and_loads_the_rest(building):
    vectors = clustered(ROWS)
    bulk_load(building, VERSION, rows_of(vectors[:3_000]))
    # Interrupted after 3,000: the rerun offers everything again plus 100 new pictures.
    more = clustered(100, seed=3)
    report = bulk_load(building, VERSION, rows_of(vectors) + rows_of(more, start=ROWS))
    assert (report.rows, report.inserted, report.skipped) == (ROWS + 100, 2_100, 3_000)
    assert building.count(VERSION) == ROWS + 100


def test_bad_input_is_refused_before_the_index_is_dropped(building, pg_dsn):
    bulk_load(building, VERSION, rows_of(clustered(50)))
    name = version_index_name(VERSION)
    assert index_exists(pg_dsn, name)
    with pytest.raises(ValueError, match="maintenance_work_mem"):
        bulk_load(building, VERSION, rows_of(clustered(50)), maintenance_work_mem="lots")
    with pytest.raises(NotFound):
        bulk_load(building, "never-registered", rows_of(clustered(50), version="x"))
    assert index_exists(pg_dsn, name)
    # A row of another version in the stream: its chunk is refused, nothing of it is written.
    mixed = rows_of(clustered(10), start=100) + rows_of(clustered(1), start=200, version="x")
    with pytest.raises(ValueError, match="not 'bulk-v2'"):
        bulk_load(building, VERSION, mixed)
    assert building.count(VERSION) == 50


def test_the_halfvec_index_is_smaller_and_answers(building, pg_dsn):
    vectors = clustered(2_000)
    report = bulk_load(building, VERSION, rows_of(vectors))
    build_s, size = build_halfvec_index(building, VERSION)
    assert build_s > 0 and 0 < size < report.index_bytes
    assert index_exists(pg_dsn, halfvec_index_name(VERSION))
    query = vectors[42]
    with psycopg2.connect(pg_dsn, options=INDEX_ONLY) as conn, conn.cursor() as cur:
        statement = halfvec_nearest_sql(DIM)
        params = {"version": VERSION, "query": "[" + ",".join(map(str, query)) + "]", "k": 5}
        cur.execute(b"EXPLAIN " + statement.as_string(cur).encode(), params)
        plan = "\n".join(row[0] for row in cur.fetchall())
        assert halfvec_index_name(VERSION) in plan
        cur.execute(statement, params)
        keys = [key for (key,) in cur.fetchall()]
    assert keys[0] == "gallery/42.jpg"  # the row itself, at half precision
