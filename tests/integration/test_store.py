"""The index (artlens.index) and the version states against a real PostgreSQL + pgvector
(embedded server, fresh database each)."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import psycopg2
import pytest

from artlens.errors import NotFound, Unavailable, VersionNotReady
from artlens.index.embeddings import HNSW_EF_CONSTRUCTION, HNSW_M, EmbeddingStore, ImageRow
from artlens.index.migrations import migration_files
from artlens.models.versions import versions_of

LABELS = ("drawings", "engraving", "iconography", "painting", "sculpture")
ROWS = 400
RARE = "sculpture"  # 5 % of the rows
# Planner settings that leave the HNSW index scan as the only way to produce the order (with
# a few hundred rows PostgreSQL would otherwise sort exactly, and the test would prove nothing).
INDEX_ONLY = "-c enable_seqscan=off -c enable_bitmapscan=off -c enable_sort=off"


def _sha(i: int, version: str = "") -> str:
    return hashlib.sha256(f"{version}:{i}".encode()).hexdigest()


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, 128)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _label_for(i: int) -> str:
    return RARE if i % 20 == 0 else LABELS[i % 4]


def _fill(store: EmbeddingStore, version: str, vectors: np.ndarray) -> list[ImageRow]:
    rows = [
        ImageRow(
            key=f"gallery/{_sha(i, version)}.jpg", sha256=_sha(i, version), label=_label_for(i),
            probability=0.9, embedding=vector, model_version=version,
            width=10, height=20, size_bytes=300,
        )
        for i, vector in enumerate(vectors)
    ]
    for row in rows:
        assert store.upsert(row) is True
    return rows


def _ready(store: EmbeddingStore, version: str, *, activate: bool = True) -> None:
    versions_of(store).register(version)
    versions_of(store).mark_ready(version)
    if activate:
        versions_of(store).activate(version)


def _brute_force(rows, query, k, label=None, exclude=None):
    candidates = [r for r in rows if (label is None or r.label == label) and r.sha256 != exclude]
    matrix = np.stack([r.embedding for r in candidates]).astype(np.float64)
    q = np.asarray(query, np.float64)
    sims = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
    order = np.argsort(-sims, kind="stable")[:k]
    return [candidates[i].key for i in order], sims[order]


def _index_only(dsn: str):
    """Connections that cannot fall back to an exact sequential scan: the HNSW path is tested."""
    return lambda: psycopg2.connect(dsn, options=INDEX_ONLY)



@pytest.fixture
def filled(pg_dsn, store):
    rng = np.random.default_rng(7)
    _ready(store, "v1")
    rows = _fill(store, "v1", _unit(rng, ROWS))
    # A second version with its own vectors: its rows must never leak into v1 answers.
    versions_of(store).register("v2")
    other = _fill(store, "v2", _unit(rng, 50))
    return rows, other, rng


def test_nearest_equals_brute_force_cosine(pg_dsn, filled):
    rows, _, rng = filled
    # ef_search above the row count makes the HNSW search exhaustive, hence exact.
    exact = EmbeddingStore(_index_only(pg_dsn), ef_search=ROWS + 100)
    default = EmbeddingStore(_index_only(pg_dsn))
    recalls = []
    for query in _unit(rng, 10):
        expected_keys, expected_sims = _brute_force(rows, query, 5)
        got = exact.nearest(query, k=5, label=None)
        assert [n.key for n in got] == expected_keys
        np.testing.assert_allclose([n.similarity for n in got], expected_sims, atol=1e-5)
        approx = default.nearest(query, k=5)
        assert len(approx) == 5
        sims = [n.similarity for n in approx]
        assert sims == sorted(sims, reverse=True)
        recalls.append(len(set(expected_keys) & {n.key for n in approx}) / 5)
    assert np.mean(recalls) >= 0.8, recalls
    exact.close()
    default.close()


def test_class_filter_returns_k_rows_of_a_rare_class(pg_dsn, filled):
    rows, _, rng = filled
    rare_rows = [r for r in rows if r.label == RARE]
    assert len(rare_rows) == ROWS // 20
    store = EmbeddingStore(_index_only(pg_dsn))
    for query in _unit(rng, 5):
        got = store.nearest(query, k=5, label=RARE)
        assert len(got) == 5
        assert {n.label for n in got} == {RARE}
        expected_keys, _ = _brute_force(rows, query, 5, label=RARE)
        assert len(set(expected_keys) & {n.key for n in got}) >= 4
    store.close()


def test_without_iterative_scan_a_rare_class_comes_back_short(pg_dsn, filled):
    """The failure mode the iterative scan exists for (guards that the index path is used)."""
    _, _, rng = filled
    conn = psycopg2.connect(pg_dsn, options=INDEX_ONLY)
    from pgvector.psycopg2 import register_vector

    register_vector(conn)
    shortfalls = 0
    with conn, conn.cursor() as cur:
        cur.execute("SET LOCAL hnsw.ef_search = 10")
        cur.execute("SET LOCAL hnsw.iterative_scan = off")
        for query in _unit(rng, 5):
            cur.execute(
                "SELECT key FROM images WHERE model_version = 'v1' AND label = %s"
                " ORDER BY embedding::vector(128) <=> %s::vector(128) LIMIT 5",
                (RARE, query),
            )
            shortfalls += len(cur.fetchall()) < 5
    conn.close()
    assert shortfalls > 0
    store = EmbeddingStore(_index_only(pg_dsn), ef_search=10)
    for query in _unit(rng, 5):
        assert len(store.nearest(query, k=5, label=RARE)) == 5
    store.close()


def test_query_picture_is_excluded_and_versions_do_not_mix(filled, store):
    rows, other, _ = filled
    probe = rows[3]
    got = store.nearest(probe.embedding, k=5)
    assert got[0].sha256 == probe.sha256
    assert got[0].similarity == pytest.approx(1.0, abs=1e-5)

    without = store.nearest(probe.embedding, k=5, exclude_sha256=probe.sha256)
    assert len(without) == 5
    assert probe.sha256 not in {n.sha256 for n in without}

    v1_keys = {r.key for r in rows}
    v2_keys = {r.key for r in other}
    # A v2 vector queried against the current version (v1) finds only v1 rows ...
    assert {n.key for n in store.nearest(other[0].embedding, k=20)} <= v1_keys
    # ... and an explicit version only its own rows.
    in_v2 = store.nearest(other[0].embedding, k=20, model_version="v2")
    assert len(in_v2) == 20
    assert {n.key for n in in_v2} <= v2_keys
    assert in_v2[0].key == other[0].key

def test_excluded_picture_row_comes_back_with_the_searches(filled, store):
    """Predict asks "is this very picture indexed?" in the search's own round trip."""
    rows, other, _ = filled
    probe = rows[3]
    found, anywhere, own = store.nearest_groups(
        probe.embedding, [(None, 5), (None, 1)], exclude_sha256=probe.sha256,
        with_excluded=True,
    )
    assert probe.sha256 not in {n.sha256 for n in found + anywhere}
    assert len(found) == 5 and len(anywhere) == 1
    assert [(n.key, n.label, n.sha256) for n in own] == [(probe.key, probe.label, probe.sha256)]
    assert own[0].similarity == 1.0

    # Not indexed under the searched version (a v2 picture against v1): an empty last list.
    *searches, none = store.nearest_groups(
        other[0].embedding, [(None, 3)], exclude_sha256=other[0].sha256, with_excluded=True)
    assert none == [] and len(searches[0]) == 3
    # Only the own row asked for (every k is 0): still one list per group, plus the row.
    assert [len(g) for g in store.nearest_groups(
        probe.embedding, [("painting", 0)], exclude_sha256=probe.sha256,
        with_excluded=True)] == [0, 1]



def test_counts_keys_and_samples(filled, store):
    rows, other, _ = filled
    assert store.count() == ROWS
    assert store.count("v2") == len(other)
    assert store.keys("v2") == sorted(r.key for r in other)
    assert store.has_sha256(rows[0].sha256)
    assert store.has_sha256(rows[0].sha256, "v1")
    assert not store.has_sha256(rows[0].sha256, "v2")
    sample = store.sample_embeddings("v1", limit=30)
    assert len(sample) == 30
    by_key = {r.key: r for r in rows}
    for item in sample:
        np.testing.assert_allclose(item.embedding, by_key[item.key].embedding, atol=1e-6)
        assert item.label == by_key[item.key].label
    assert [s.key for s in store.sample_embeddings("v1", limit=30)] == [s.key for s in sample]


def test_upsert_is_idempotent_on_sha256_and_version(store):
    _ready(store, "v1")
    row = ImageRow(
        key="gallery/a.jpg", sha256="a" * 64, label="painting", probability=0.5,
        embedding=np.ones(128, np.float32), model_version="v1", width=1, height=1, size_bytes=1,
    )
    assert store.upsert(row) is True
    assert store.upsert(row) is False
    assert store.count("v1") == 1
    versions_of(store).register("v2")
    assert store.upsert(ImageRow(**{**row.__dict__, "model_version": "v2"})) is True
    assert store.count("v1") == 1 and store.count("v2") == 1


def _row(sha: str, version: str = "v1", key: str | None = None) -> ImageRow:
    return ImageRow(
        key=key or f"gallery/{sha}.jpg", sha256=sha, label="painting", probability=0.5,
        embedding=np.full(128, 0.25, np.float32), model_version=version,
        width=1, height=1, size_bytes=1,
    )


def test_upsert_many_reports_each_row_and_is_one_transaction(store):
    _ready(store, "v1")
    versions_of(store).register("v2")
    a, b, c, d = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    assert store.upsert(_row(a)) is True
    assert store.upsert_many([]) == []

    inserted = store.upsert_many([
        _row(b), _row(a), _row(c), _row(b, key="gallery/b-again.jpg"), _row(c, "v2"),
    ])
    assert inserted == [True, False, True, False, True]
    assert store.keys("v1") == sorted(f"gallery/{sha}.jpg" for sha in (a, b, c))
    assert store.count("v2") == 1

    # One row the database refuses (another picture under d's key) and the whole batch is undone.
    with pytest.raises(psycopg2.IntegrityError):
        store.upsert_many([_row(d), _row("e" * 64, key=f"gallery/{d}.jpg")])
    assert store.existing_sha256([d]) == set()
    with pytest.raises(NotFound):  # a version that was never registered has no dimension
        store.upsert_many([_row(d), _row("e" * 64, "never-registered")])
    with pytest.raises(ValueError):  # v1 keeps 128-d embeddings
        store.upsert(ImageRow(**{**_row(d).__dict__, "embedding": np.ones(64, np.float32)}))
    assert store.upsert_many([_row(d)]) == [True]  # the connection is usable afterwards


def test_existing_sha256_is_per_version(store):
    _ready(store, "v1")
    versions_of(store).register("v2")
    a, c = "a" * 64, "c" * 64
    store.upsert_many([_row(a), _row(c), _row(c, "v2")])
    assert store.existing_sha256([a, c, "f" * 64, a], "v1") == {a, c}
    assert store.existing_sha256([a, c], "v2") == {c}
    assert store.existing_sha256([a, "f" * 64]) == {a}  # default: the current version (v1)
    assert store.existing_sha256([], "v1") == set()


def test_search_settings_are_local_to_the_search_and_the_session_keeps_its_defaults(
    pg_dsn, filled
):
    """Behind RDS Proxy a session-level SET pins the connection to its client: the HNSW
    settings are set with is_local inside the search's own (implicit) transaction."""
    rows, _, rng = filled
    store = EmbeddingStore(_index_only(pg_dsn), ef_search=10)

    def session(cur):
        cur.execute(
            "SELECT pg_backend_pid(), current_setting('hnsw.ef_search', true),"
            " current_setting('hnsw.iterative_scan', true)"
        )
        return cur.fetchone()

    # In effect during the search: with ef_search 10 only the iterative scan finds 5 rows of
    # a 5 % class (see the test above for the same query without it).
    query = _unit(rng, 1)[0]
    assert len(store.nearest(query, k=5, label=RARE)) == 5
    pid, ef, scan = store.database.read(session)
    assert (ef, scan) == ("40", "off")  # pgvector's defaults: nothing stayed on the session
    store.ef_search = 77
    found = store.nearest_groups(query, [(RARE, 5), (None, 3), ("painting", 0)])
    assert [len(group) for group in found] == [5, 3, 0]
    assert {n.label for n in found[0]} == {RARE}
    assert [n.key for n in found[1]] == _brute_force(rows, query, 3)[0]
    assert store.database.transaction(session) == (pid, "40", "off")  # same session, defaults
    store.close()
    with pytest.raises(ValueError):
        store.ef_search = 0


def test_migrations_rerun_cleanly_and_concurrently(pg_server, pg_dsn):
    first = EmbeddingStore(pg_dsn)
    names = [p.name for p in migration_files()]
    assert names and names[0].startswith("001_")
    assert first.migrate() == names
    assert first.migrate() == []
    first.close()

    # A fresh database migrated from two threads at once: exactly one applies each file.
    name = f"concurrent_{pg_dsn.rsplit('/', 1)[-1].split('?')[0]}"
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    target = pg_server.get_uri(database=name)
    results, errors = [], []
    barrier = threading.Barrier(2)

    def run():
        store = EmbeddingStore(target)
        try:
            barrier.wait()
            results.append(store.migrate())
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(results, key=len) == [[], names]
    store = EmbeddingStore(target)
    versions_of(store).register("v1")  # a version gets its HNSW index when registered
    assert store.index_parameters("v1") == {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}
    store.close()


def test_rebuild_index_changes_build_options(store):
    _ready(store, "v1")
    versions_of(store).register("v2", 64)
    store.rebuild_index(m=8, ef_construction=32)
    assert store.index_parameters() == {"m": 8, "ef_construction": 32}  # the current v1
    assert store.index_parameters("v2") == {"m": 8, "ef_construction": 32}
    with pytest.raises(ValueError):
        store.rebuild_index(m=1, ef_construction=32)


def test_version_lifecycle(store):
    assert versions_of(store).current() is None
    assert versions_of(store).register("v1") is True
    assert versions_of(store).register("v1") is False
    with pytest.raises(VersionNotReady):
        versions_of(store).activate("v1")
    assert versions_of(store).current() is None
    with pytest.raises(NotFound):
        versions_of(store).activate("nope")

    versions_of(store).mark_ready("v1")
    versions_of(store).activate("v1")
    assert versions_of(store).current() == "v1"
    assert versions_of(store).previous() is None

    _ready(store, "v2")
    assert versions_of(store).current() == "v2"
    assert versions_of(store).previous() == "v1"
    versions_of(store).activate("v1")
    assert (versions_of(store).current(), versions_of(store).previous()) == ("v1", "v2")
    assert sum(v.is_current for v in versions_of(store).versions()) == 1


def test_reconnects_after_the_connection_dies(pg_dsn, store):
    _ready(store, "v1")

    def backend_pid(cur):
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]

    pid = store.database.transaction(backend_pid)
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    admin.close()
    assert versions_of(store).current() == "v1"  # transparently on a new connection


def test_unreachable_database_is_unavailable(pg_server):
    import socket

    with socket.socket() as sock:  # a port on which nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = EmbeddingStore(f"postgresql://nobody:secret@127.0.0.1:{port}/nothing")
    with pytest.raises(Unavailable) as raised:
        versions_of(store).current()
    assert raised.value.status == 503
    assert "secret" not in str(raised.value)


def test_migrate_custom_resource_with_secrets_manager_credentials(pg_server, pg_dsn, monkeypatch):
    """The migrate handler as CloudFormation calls it, credentials from a (moto) secret."""
    import importlib
    import json
    import sys
    from types import SimpleNamespace
    from urllib.parse import parse_qs, urlparse

    import boto3
    from moto import mock_aws

    uri = urlparse(pg_dsn)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1", "DB_HOST": parse_qs(uri.query)["host"][0],
        "DB_NAME": uri.path.lstrip("/"), "CORS_ORIGIN": "https://artlens.example",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with mock_aws():
        secret = boto3.client("secretsmanager").create_secret(
            Name="artlens/db", SecretString=json.dumps({"username": "postgres", "password": ""})
        )
        monkeypatch.setenv("DB_SECRET_ARN", secret["ARN"])
        sys.modules.pop("lambdas.migrate", None)
        migrate = importlib.import_module("lambdas.migrate")
        context = SimpleNamespace(
            function_name="f", memory_limit_in_mb=512, aws_request_id="r",
            invoked_function_arn="arn:aws:lambda:eu-west-1:123456789012:function:f",
        )
        created = migrate.handler({"RequestType": "Create"}, context)
        assert created["PhysicalResourceId"] == migrate.PHYSICAL_RESOURCE_ID
        assert created["Data"]["Applied"] == ",".join(p.name for p in migration_files())
        updated = migrate.handler(
            {"RequestType": "Update", "PhysicalResourceId": created["PhysicalResourceId"]},
            context,
        )
        assert updated == {
            "PhysicalResourceId": created["PhysicalResourceId"],
            "Data": {"Applied": "", "SchemaVersion": migration_files()[-1].name},
        }
        deleted = migrate.handler(
            {"RequestType": "Delete", "PhysicalResourceId": created["PhysicalResourceId"]},
            context,
        )
        assert deleted == {"PhysicalResourceId": created["PhysicalResourceId"]}
    store = EmbeddingStore(pg_dsn)  # the schema is still there after Delete
    assert versions_of(store).versions() == []
    versions_of(store).register("v1")
    assert store.index_parameters("v1")["m"] == HNSW_M
    store.close()


@pytest.fixture
def password_role(pg_server, pg_dsn):
    """A login role that must give its password (scram) to reach this test's database: the
    embedded server trusts every local connection, so one pg_hba line (first match wins) asks
    for a password for this role and database only. Yields (role, dbname, host, port)."""
    from pathlib import Path
    from urllib.parse import parse_qs, urlparse

    uri = urlparse(pg_dsn)
    dbname, host = uri.path.lstrip("/"), parse_qs(uri.query)["host"][0]
    role = f"rotating_{dbname}"
    admin = psycopg2.connect(pg_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'before-rotation'")
        cur.execute(f'ALTER DATABASE "{dbname}" OWNER TO {role}')
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")  # creating it needs a superuser
    hba = Path(pg_server.pgdata) / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"local {dbname} {role} scram-sha-256\n" + original)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_reload_conf()")
    try:
        yield role, dbname, host, uri.port or 5432, admin
    finally:
        hba.write_text(original)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
        admin.close()


def test_a_password_rotated_between_reading_and_connecting_is_read_again(password_role):
    """Rotation may change the password while migrate connects: the refused password is
    retried after a backoff with the secret read again (issue 12)."""
    from artlens.index.database import Database, credentials_connection_factory
    from artlens.index.migrations import migrate

    role, dbname, host, port, admin = password_role
    secret = {"username": role, "password": "before-rotation"}
    reads, slept = [], []

    def read_secret():
        reads.append(secret["password"])
        return dict(secret)

    def rotate_while_waiting(seconds: float) -> None:
        slept.append(seconds)
        secret["password"] = "after-rotation"  # the secret now holds what the role has

    with admin.cursor() as cur:  # rotated after the secret was read, before the connect
        cur.execute(f"ALTER ROLE {role} PASSWORD 'after-rotation'")
    database = Database(credentials_connection_factory(
        read_secret, host=host, port=port, dbname=dbname, sleep=rotate_while_waiting))
    assert migrate(database) == [p.name for p in migration_files()]
    assert (reads, slept) == (["before-rotation", "after-rotation"], [1.0])
    database.close()

    # A password that never works: 1 + 3 tries over 1 + 2 + 4 s, then 503, never the password.
    secret["password"], reads[:], slept[:] = "wrong", [], []
    refused = Database(credentials_connection_factory(
        read_secret, host=host, port=port, dbname=dbname, sleep=slept.append))
    with pytest.raises(Unavailable) as raised:
        versions_of(EmbeddingStore(refused)).current()
    assert (len(reads), slept) == (4, [1.0, 2.0, 4.0])
    assert "wrong" not in str(raised.value) and raised.value.status == 503
