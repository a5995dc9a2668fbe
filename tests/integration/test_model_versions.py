"""Model versions end to end: the registry, what predict serves during and after a reindex, and a
rollback that really changes it. Real PostgreSQL + pgvector, two tiny real ONNX models (tiny-0
and tiny-1), a folder lake."""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from artlens.api.answers import predict_image
from artlens.errors import NotFound
from artlens.image import image_to_input
from artlens.index.embeddings import EmbeddingStore
from artlens.ingest import ingest_objects
from artlens.lake import LocalLake
from artlens.models.card import ModelIntegrityError, ModelNotRegistered
from artlens.models.classifier import get_classifier
from artlens.models.registry import ModelRegistry, registry_from_settings
from artlens.models.versions import (
    CurrentModel,
    ensure_model_version,
    reindex,
    switch_back,
    versions_of,
)
from artlens.settings import Settings
from local_stack.events import LambdaContext
from tests.imagegen import artwork, encode

GALLERY_SIZE = 8
NEIGHBOURS = 5
TTL_S = 5.0
URL_KEY = "model-versions-url-key"


class Clock:
    """A hand-driven monotonic clock: the tests decide when the TTL has passed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = TTL_S) -> None:
        self.now += seconds


class StopAfterFirstBatch(Exception):
    pass


def stop_after_first_batch(done: int, total: int) -> None:
    raise StopAfterFirstBatch


@dataclass
class Gallery:
    store: EmbeddingStore
    lake: LocalLake
    pictures: dict[str, bytes]  # gallery key -> bytes
    query: bytes  # a picture that is not in the gallery


@pytest.fixture
def lake(tmp_path):
    return LocalLake(tmp_path / "lake", URL_KEY.encode())


@pytest.fixture
def gallery(pg_dsn, lake, tiny_model_card) -> Gallery:
    """GALLERY_SIZE pictures ingested with tiny-0, which is current."""
    store = EmbeddingStore(pg_dsn)
    store.migrate()
    v1 = get_classifier(tiny_model_card)
    assert ensure_model_version(store, v1) == "tiny-0"
    datas = [encode(artwork(seed), "PNG") for seed in range(GALLERY_SIZE)]
    for index, data in enumerate(datas):
        lake.put(f"incoming/{index}.png", data)
    report = ingest_objects(lake.list("incoming/"), lake, v1, store)
    assert report.indexed == GALLERY_SIZE
    pictures = {f"gallery/{hashlib.sha256(d).hexdigest()}.png": d for d in datas}
    assert sorted(pictures) == store.keys("tiny-0")
    yield Gallery(store, lake, pictures, encode(artwork(10_000), "PNG"))
    store.close()


@pytest.fixture
def registry(tmp_path, tiny_model_card, tiny_model_card_v2) -> ModelRegistry:
    """tiny-0 deployed (the default card), tiny-1 registered beside it."""
    registry = ModelRegistry(tmp_path / "models", default_card=tiny_model_card)
    assert registry.register(tiny_model_card_v2) == "tiny-1"
    return registry


def expected_neighbours(gallery: Gallery, card: Path) -> list[tuple[str, float]]:
    """Brute force with the given model: the top keys (and cosine similarities) of the query."""
    model = get_classifier(card)
    keys = sorted(gallery.pictures)
    size = model.input_size  # each model at its own input size (the card's input.shape)
    embeddings = model.predict(
        np.stack([image_to_input(gallery.pictures[k], size) for k in keys])
    ).embeddings
    query = model.predict(image_to_input(gallery.query, size)).embeddings[0]
    sims = embeddings @ query / (np.linalg.norm(embeddings, axis=1) * np.linalg.norm(query))
    order = np.argsort(-sims, kind="stable")[:NEIGHBOURS]
    return [(keys[i], float(sims[i])) for i in order]


def ask(gallery: Gallery, current: CurrentModel) -> dict:
    return predict_image(gallery.query, current.classifier(), gallery.store, gallery.lake,
                         neighbors=NEIGHBOURS, scope="all")


def assert_served_by(answer: dict, version: str, gallery: Gallery, card: Path) -> None:
    assert answer["model_version"] == version
    expected = expected_neighbours(gallery, card)
    assert [n["key"] for n in answer["neighbors"]] == [key for key, _ in expected]
    np.testing.assert_allclose([n["similarity"] for n in answer["neighbors"]],
                               [sim for _, sim in expected], atol=1e-4)


def test_predict_follows_the_current_version_through_reindex_and_rollback(
    gallery, registry, tiny_model_card, tiny_model_card_v2, monkeypatch
):
    store = gallery.store
    lookups = []
    clock = Clock()
    current = CurrentModel(registry, store, ttl_s=TTL_S, clock=clock)
    real_current_version = current.states.current
    monkeypatch.setattr(current.states, "current",
                        lambda: lookups.append(1) or real_current_version())

    assert_served_by(ask(gallery, current), "tiny-0", gallery, tiny_model_card)
    ask(gallery, current)
    assert len(lookups) == 1  # within the TTL the current version is not asked again

    # A reindex to tiny-1 that dies after its first batch: tiny-0 keeps answering, in full.
    v2 = registry.classifier_for("tiny-1")
    with pytest.raises(StopAfterFirstBatch):
        reindex(store, gallery.lake, v2, batch_size=3, progress=stop_after_first_batch)
    assert store.count("tiny-1") == 3
    assert versions_of(store).current() == "tiny-0"
    clock.advance()
    assert_served_by(ask(gallery, current), "tiny-0", gallery, tiny_model_card)

    # Resumed: it embeds only what is left, then switches.
    report = reindex(store, gallery.lake, v2, batch_size=3)
    assert (report.total, report.embedded, report.activated) == (GALLERY_SIZE - 3,
                                                                GALLERY_SIZE - 3, True)
    assert report.previous_version == "tiny-0"
    assert versions_of(store).current() == "tiny-1"
    assert ask(gallery, current)["model_version"] == "tiny-0"  # still inside the TTL
    clock.advance()
    assert_served_by(ask(gallery, current), "tiny-1", gallery, tiny_model_card_v2)

    # One command switches back, and predict really answers with tiny-0 again.
    assert switch_back(store, registry) == ("tiny-1", "tiny-0")
    clock.advance()
    assert_served_by(ask(gallery, current), "tiny-0", gallery, tiny_model_card)
    # ... and forward again: both versions stay ready.
    assert switch_back(store, registry) == ("tiny-0", "tiny-1")
    clock.advance()
    assert ask(gallery, current)["model_version"] == "tiny-1"


def test_a_current_version_missing_from_the_registry_falls_back_to_the_default(
    gallery, tmp_path, tiny_model_card, tiny_model_card_v2, caplog
):
    store = gallery.store
    # tiny-1 becomes current elsewhere (another process reindexed with a model we lack).
    report = reindex(store, gallery.lake, get_classifier(tiny_model_card_v2))
    assert report.activated and versions_of(store).current() == "tiny-1"
    without_v2 = ModelRegistry(tmp_path / "empty-registry", default_card=tiny_model_card)
    clock = Clock()
    current = CurrentModel(without_v2, store, ttl_s=TTL_S, clock=clock)

    with caplog.at_level(logging.WARNING, logger="artlens.models.versions"):
        # The default model answers and searches its own rows, which are complete.
        assert_served_by(ask(gallery, current), "tiny-0", gallery, tiny_model_card)
        clock.advance()
        assert ask(gallery, current)["model_version"] == "tiny-0"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per switch, not once per TTL
    assert "tiny-1" in warnings[0] and "tiny-0" in warnings[0]


def test_a_damaged_registered_model_falls_back_instead_of_failing(
    gallery, registry, tiny_model_card, tiny_model_card_v2
):
    store = gallery.store
    reindex(store, gallery.lake, get_classifier(tiny_model_card_v2))
    damaged = ModelRegistry(registry.root.parent / "damaged", default_card=tiny_model_card)
    damaged.register(tiny_model_card_v2)
    onnx = damaged.card_for("tiny-1").onnx_path
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    current = CurrentModel(damaged, store, ttl_s=TTL_S, clock=Clock())
    assert ask(gallery, current)["model_version"] == "tiny-0"


def test_rollback_refuses_a_version_the_registry_cannot_serve(
    gallery, tmp_path, tiny_model_card_v2
):
    store = gallery.store
    reindex(store, gallery.lake, get_classifier(tiny_model_card_v2))
    only_v2 = ModelRegistry(tmp_path / "only-v2", default_card=tiny_model_card_v2)
    with pytest.raises(ModelNotRegistered, match="tiny-0"):
        switch_back(store, only_v2)
    assert versions_of(store).current() == "tiny-1"


def test_rollback_without_a_previous_version_is_not_found(gallery, registry):
    with pytest.raises(NotFound):
        switch_back(gallery.store, registry)
    assert versions_of(gallery.store).current() == "tiny-0"


# -- the registry itself ----------------------------------------------------------------------


def fake_card(folder: Path, version: str, onnx: bytes, *, sha: str | None = None) -> Path:
    """A card that satisfies the registry (which checks bytes, not that they are ONNX)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "artlens.onnx").write_bytes(onnx)
    card = {
        "name": "fake", "version": version, "classes": ["a", "b"], "input": {}, "outputs": {},
        "embedding_size": 128, "onnx_file": "artlens.onnx",
        "onnx_sha256": sha or hashlib.sha256(onnx).hexdigest(),
    }
    path = folder / "artlens.json"
    path.write_text(json.dumps(card))
    return path


def test_register_copies_the_model_and_is_idempotent(tmp_path, tiny_model_card_v2):
    registry = ModelRegistry(tmp_path / "models")
    assert registry.card_for("tiny-1") is None
    with pytest.raises(ModelNotRegistered):
        registry.classifier_for("tiny-1")

    assert registry.register(tiny_model_card_v2) == "tiny-1"
    folder = tmp_path / "models" / "tiny-1"
    assert sorted(p.name for p in folder.iterdir()) == ["artlens.json", "artlens.onnx"]
    assert (folder / "artlens.onnx").read_bytes() == (
        tiny_model_card_v2.with_name("artlens.onnx").read_bytes())
    before = (folder / "artlens.onnx").stat().st_mtime_ns
    assert registry.register(tiny_model_card_v2) == "tiny-1"
    assert registry.register(folder / "artlens.json") == "tiny-1"  # its own copy
    assert (folder / "artlens.onnx").stat().st_mtime_ns == before
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny-1"]  # no staging left

    card = registry.card_for("tiny-1")
    assert card.onnx_path == folder / "artlens.onnx"
    model = registry.classifier_for("tiny-1")
    assert model.version == "tiny-1"
    assert model is registry.classifier_for("tiny-1")  # one session per process


def test_register_refuses_bad_models(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        registry.register(fake_card(tmp_path / "a", "v1", b"model a", sha="0" * 64))
    assert registry.card_for("v1") is None

    assert registry.register(fake_card(tmp_path / "b", "v1", b"model b")) == "v1"
    with pytest.raises(ModelIntegrityError, match="already registered with another model"):
        registry.register(fake_card(tmp_path / "c", "v1", b"model c"))
    assert (tmp_path / "models" / "v1" / "artlens.onnx").read_bytes() == b"model b"

    (tmp_path / "models" / "v1" / "artlens.onnx").write_bytes(b"model B")
    with pytest.raises(ModelIntegrityError, match="damaged"):
        registry.register(fake_card(tmp_path / "b", "v1", b"model b"))

    for version in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(ModelIntegrityError, match="not a usable model version"):
            registry.register(fake_card(tmp_path / "d", version, b"model d"))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["v1"]
    assert not (tmp_path / "escape").exists()


def test_registry_from_settings(tmp_path, tiny_model_card):
    env = {"MODEL_CARD_PATH": str(tiny_model_card), "DATABASE_URL": "postgresql://x/y",
           "LOCAL_LAKE_DIR": "/tmp/lake", "LOCAL_URL_KEY": "k"}
    in_image = registry_from_settings(Settings.from_env(env))
    assert in_image.root == tiny_model_card.parent  # the AWS image: models/ itself
    assert in_image.card_for("tiny-0") == in_image.default_card
    local = registry_from_settings(
        Settings.from_env({**env, "MODEL_REGISTRY_DIR": str(tmp_path / "reg")}))
    assert local.root == tmp_path / "reg"
    assert local.default_classifier().version == "tiny-0"


# -- the handlers -----------------------------------------------------------------------------


def predict_answer(picture: bytes) -> dict:
    """The predict handler's 200 answer for a picture, neighbours of every type."""
    from lambdas import predict

    response = predict.handler({
        "httpMethod": "POST", "resource": "/predict", "path": "/predict",
        "headers": {"content-type": "image/png"}, "queryStringParameters": {"scope": "all"},
        "body": base64.b64encode(picture).decode(), "isBase64Encoded": True,
        "requestContext": {"requestId": "r1"},
    }, LambdaContext("artlens"))
    assert response["statusCode"] == 200, response["body"]
    return json.loads(response["body"])


def test_handlers_reindex_switch_and_roll_back_what_predict_serves(
    gallery, registry, tiny_model_card, tiny_model_card_v2, pg_dsn, monkeypatch
):
    from lambdas import predict

    for name in ("IMAGES_BUCKET", "DB_SECRET_ARN", "TOKEN_SECRET_ARN", "ORT_THREADS",
                 "ARTLENS_TOKEN_KEY", "ARTLENS_TOKEN_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_CARD_PATH", str(tiny_model_card))  # tiny-0 is deployed
    monkeypatch.setenv("MODEL_REGISTRY_DIR", str(registry.root))
    monkeypatch.setenv("DATABASE_URL", pg_dsn)
    monkeypatch.setenv("LOCAL_LAKE_DIR", str(gallery.lake.root))
    monkeypatch.setenv("LOCAL_URL_KEY", URL_KEY)
    monkeypatch.setattr(predict, "CURRENT_VERSION_TTL_S", 0.0)
    predict.reset()
    reindex_lambda = importlib.reload(importlib.import_module("lambdas.reindex"))

    def served() -> dict:
        return predict_answer(gallery.query)

    try:
        assert_served_by(served(), "tiny-0", gallery, tiny_model_card)
        report = reindex_lambda.handler({"version": "tiny-1"}, LambdaContext("artlens"))
        assert report["activated"] and report["model_version"] == "tiny-1"
        # The image still carries tiny-0, yet predict answers with the current tiny-1.
        assert_served_by(served(), "tiny-1", gallery, tiny_model_card_v2)

        assert reindex_lambda.handler({"rollback": True}, LambdaContext("artlens")) == {
            "previous_version": "tiny-1", "model_version": "tiny-0"}
        assert_served_by(served(), "tiny-0", gallery, tiny_model_card)
    finally:
        predict.reset()
        reindex_lambda.deps().store.close()


def test_the_local_stack_says_when_it_ships_another_model_and_follows_the_switch(
    gallery, tiny_model_card_v2
):
    """`make run` with tiny-1 shipped over a collection indexed with tiny-0: the user is told
    how to move (and tiny-0 keeps answering); /health follows the reindex."""
    from local_stack.runtime import LocalRuntime

    def unused(event, context):
        raise AssertionError("not called")

    def runtime(shipped: str) -> LocalRuntime:
        return LocalRuntime(
            store=gallery.store, lake=gallery.lake, model_version="tiny-0",
            shipped_version=shipped, authorizer_handler=unused, predict_handler=unused,
            embed_handler=unused,
        )

    assert runtime("tiny-0").upgrade_notice() is None
    stack = runtime("tiny-1")
    notice = stack.upgrade_notice()
    assert notice is not None and "tiny-1" in notice and "`make reindex`" in notice
    assert "tiny-0, which keeps answering" in notice
    assert stack.health() == {"status": "ok", "model_version": "tiny-0", "indexed": GALLERY_SIZE}
    reindex(gallery.store, gallery.lake, get_classifier(tiny_model_card_v2))
    assert stack.health() == {"status": "ok", "model_version": "tiny-1", "indexed": GALLERY_SIZE}
