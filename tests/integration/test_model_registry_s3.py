"""The model registry in the artifacts bucket (S3 mocked by moto; the models, the database and
the handlers are real): register a version, load it into a cache, refuse a tampered ONNX file,
reuse a cached copy without downloading it again, and roll back to a version that the image
does not carry."""

from __future__ import annotations

import hashlib
import importlib
import json
from collections import Counter
from pathlib import Path

import boto3
import numpy as np
import pytest

from artlens.index.embeddings import EmbeddingStore
from artlens.ingest import ingest_objects
from artlens.lake import LocalLake
from artlens.models.card import ModelIntegrityError, ModelNotRegistered
from artlens.models.classifier import get_classifier
from artlens.models.registry import (
    BucketSource,
    ModelRegistry,
    ModelSourceUnavailable,
    main,
    registry_from_settings,
)
from artlens.models.versions import CurrentModel, ensure_model_version, versions_of
from artlens.settings import Settings
from local_stack.events import LambdaContext
from tests.conftest import MOTO_REGION
from tests.imagegen import artwork, encode
from tests.integration.test_model_versions import Gallery, assert_served_by, predict_answer

REGION = MOTO_REGION
BUCKET = "artlens-artifacts-test"
URL_KEY = "registry-s3-url-key"


class CountingS3:
    """A real (moto) S3 client that counts the calls made through it."""

    def __init__(self) -> None:
        self.client = boto3.client("s3", region_name=REGION)
        self.calls: Counter[str] = Counter()
        self.client.meta.events.register("before-call.s3.*", self._count)

    def _count(self, model, **_):
        self.calls[model.name] += 1


@pytest.fixture
def s3(moto_aws) -> CountingS3:
    counting = CountingS3()
    counting.client.create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    counting.client.put_bucket_versioning(  # as the stack creates it
        Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return counting


def bucket_registry(s3: CountingS3, cache: Path, default: Path | None = None) -> ModelRegistry:
    return ModelRegistry(BucketSource(s3.client, BUCKET, cache), default_card=default)


def keys(s3: CountingS3) -> list[str]:
    listed = s3.client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def test_register_publishes_card_and_onnx_under_models_version(s3, tmp_path,
                                                                tiny_model_card_v2):
    registry = bucket_registry(s3, tmp_path / "cache")
    assert registry.card_for("tiny-1") is None
    assert registry.register(tiny_model_card_v2) == "tiny-1"
    assert keys(s3) == ["models/tiny-1/artlens.json", "models/tiny-1/artlens.onnx"]
    onnx = tiny_model_card_v2.with_name("artlens.onnx").read_bytes()
    stored = s3.client.get_object(Bucket=BUCKET, Key="models/tiny-1/artlens.onnx")
    assert stored["Body"].read() == onnx
    card = json.loads(s3.client.get_object(
        Bucket=BUCKET, Key="models/tiny-1/artlens.json")["Body"].read())
    assert card["onnx_sha256"] == hashlib.sha256(onnx).hexdigest()

    # Idempotent: the same model again writes nothing.
    puts = s3.calls["PutObject"]
    assert registry.register(tiny_model_card_v2) == "tiny-1"
    assert s3.calls["PutObject"] == puts
    assert registry.versions() == ["tiny-1"]


def test_another_model_under_a_registered_version_is_refused(s3, tmp_path,
                                                             tiny_model_card_v2):
    registry = bucket_registry(s3, tmp_path / "cache")
    registry.register(tiny_model_card_v2)
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    card = json.loads(tiny_model_card_v2.read_text())
    (impostor / "artlens.onnx").write_bytes(b"another model")
    card["onnx_sha256"] = hashlib.sha256(b"another model").hexdigest()
    (impostor / "artlens.json").write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="already registered with another model"):
        registry.register(impostor / "artlens.json")
    stored = s3.client.get_object(Bucket=BUCKET, Key="models/tiny-1/artlens.onnx")
    assert stored["Body"].read() == tiny_model_card_v2.with_name("artlens.onnx").read_bytes()


def test_a_registered_version_loads_into_the_cache_and_serves(s3, tmp_path, tiny_model_card,
                                                              tiny_model_card_v2):
    bucket_registry(s3, tmp_path / "operator").register(tiny_model_card_v2)
    cache = tmp_path / "lambda-tmp"
    # The image carries tiny-0; tiny-1 exists only in the bucket.
    registry = bucket_registry(s3, cache, default=tiny_model_card)
    gets = s3.calls["GetObject"]
    card = registry.require("tiny-1")
    assert s3.calls["GetObject"] == gets + 2  # the card and its ONNX file
    assert card.onnx_path == cache / "tiny-1" / "artlens.onnx"
    assert card.onnx_path.read_bytes() == tiny_model_card_v2.with_name("artlens.onnx").read_bytes()
    served = registry.classifier_for("tiny-1")
    reference = get_classifier(tiny_model_card_v2)
    pixels = np.random.default_rng(0).random((2, 112, 112, 3), dtype=np.float32)
    np.testing.assert_allclose(served.predict(pixels).embeddings,
                               reference.predict(pixels).embeddings, atol=1e-6)
    # The image's own model never touches the bucket.
    calls = sum(s3.calls.values())
    assert registry.card_for("tiny-0") == registry.default_card
    assert sum(s3.calls.values()) == calls


def test_a_tampered_onnx_in_the_bucket_is_refused_and_never_cached(s3, tmp_path, store,
                                                                   tiny_model_card,
                                                                   tiny_model_card_v2):
    bucket_registry(s3, tmp_path / "operator").register(tiny_model_card_v2)
    onnx = tiny_model_card_v2.with_name("artlens.onnx").read_bytes()
    s3.client.put_object(Bucket=BUCKET, Key="models/tiny-1/artlens.onnx",
                         Body=onnx[:-1] + bytes([onnx[-1] ^ 1]))
    cache = tmp_path / "lambda-tmp"
    registry = bucket_registry(s3, cache, default=tiny_model_card)
    with pytest.raises(ModelIntegrityError, match="refused .*tiny-1/artlens.onnx"):
        registry.card_for("tiny-1")
    assert not (cache / "tiny-1").exists()
    # Predict falls back to the image's model rather than serving the tampered one.
    current = CurrentModel(registry, made_current(store, "tiny-1", 256), ttl_s=0.0)
    assert current.classifier().version == "tiny-0"


def made_current(store: EmbeddingStore, version: str, dim: int) -> EmbeddingStore:
    """The index (real PostgreSQL) says `version` is current, as after a reindex elsewhere."""
    states = versions_of(store)
    states.register(version, dim)
    states.mark_ready(version)
    states.activate(version)
    return store


def test_a_cached_copy_is_reused_without_downloading_it_again(s3, tmp_path, tiny_model_card,
                                                             tiny_model_card_v2):
    bucket_registry(s3, tmp_path / "operator").register(tiny_model_card_v2)
    cache = tmp_path / "lambda-tmp"
    gets = s3.calls["GetObject"]
    bucket_registry(s3, cache, default=tiny_model_card).require("tiny-1")
    assert s3.calls["GetObject"] == gets + 2
    # A later invocation (a new registry over the same /tmp): verified, not downloaded.
    calls = sum(s3.calls.values())
    again = bucket_registry(s3, cache, default=tiny_model_card)
    assert again.require("tiny-1").onnx_path == cache / "tiny-1" / "artlens.onnx"
    assert again.classifier_for("tiny-1").version == "tiny-1"
    assert sum(s3.calls.values()) == calls  # no GET, no listing
    # A cached copy that no longer matches its card is not served: it is downloaded again.
    cached = cache / "tiny-1" / "artlens.onnx"
    cached.write_bytes(cached.read_bytes()[:-1] + b"\0")
    card = bucket_registry(s3, cache, default=tiny_model_card).require("tiny-1")
    assert s3.calls["GetObject"] == gets + 4
    assert card.onnx_path.read_bytes() == tiny_model_card_v2.with_name("artlens.onnx").read_bytes()


def test_an_unreachable_bucket_is_unavailable_not_unregistered(moto_aws, tmp_path, store,
                                                               tiny_model_card):
    # No such bucket: S3 answers NoSuchBucket, which says nothing about the version.
    client = boto3.client("s3", region_name=REGION)
    registry = ModelRegistry(BucketSource(client, "no-such-bucket", tmp_path / "c"),
                             default_card=tiny_model_card)
    with pytest.raises(ModelSourceUnavailable):
        registry.card_for("tiny-1")
    current = CurrentModel(registry, made_current(store, "tiny-1", 256), ttl_s=0.0)
    assert current.classifier().version == "tiny-0"  # the image's model keeps serving


def test_registry_from_settings_uses_the_artifacts_bucket(s3, tmp_path, tiny_model_card):
    env = {"MODEL_CARD_PATH": str(tiny_model_card), "DATABASE_URL": "postgresql://x/y",
           "LOCAL_LAKE_DIR": str(tmp_path / "lake"), "LOCAL_URL_KEY": "k",
           "ARTIFACTS_BUCKET": BUCKET, "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    registry = registry_from_settings(Settings.from_env(env), s3=s3.client)
    assert isinstance(registry.source, BucketSource)
    assert registry.location == f"s3://{BUCKET}/models/"
    assert registry.root == tmp_path / "cache"
    assert registry.default_card.version == "tiny-0"


def test_the_command_line_registers_and_lists(s3, tmp_path, tiny_model_card_v2, capsys):
    assert main(["--bucket", BUCKET, "register", str(tiny_model_card_v2)], s3=s3.client) == 0
    assert "registered tiny-1 in s3://" in capsys.readouterr().out
    assert main(["--bucket", BUCKET, "list"], s3=s3.client) == 0
    assert capsys.readouterr().out.split() == ["tiny-1"]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "artlens.onnx").write_bytes(b"x")
    card = json.loads(tiny_model_card_v2.read_text()) | {"version": "tiny-9"}
    (damaged / "artlens.json").write_text(json.dumps(card))
    assert main(["--bucket", BUCKET, "register", str(damaged / "artlens.json")],
                s3=s3.client) == 1
    assert "SHA-256" in capsys.readouterr().err
    assert keys(s3) == ["models/tiny-1/artlens.json", "models/tiny-1/artlens.onnx"]


# -- rollback through the handlers, to a version the image does not carry --------------------


@pytest.fixture
def gallery(pg_dsn, tmp_path, tiny_model_card):
    """Pictures ingested with tiny-0, which is current (the earlier deployment)."""
    lake = LocalLake(tmp_path / "lake", URL_KEY.encode())
    store = EmbeddingStore(pg_dsn)
    store.migrate()
    v0 = get_classifier(tiny_model_card)
    assert ensure_model_version(store, v0) == "tiny-0"
    datas = [encode(artwork(seed), "PNG") for seed in range(6)]
    for index, data in enumerate(datas):
        lake.put(f"incoming/{index}.png", data)
    assert ingest_objects(lake.list("incoming/"), lake, v0, store).indexed == len(datas)
    pictures = {f"gallery/{hashlib.sha256(d).hexdigest()}.png": d for d in datas}
    yield Gallery(store, lake, pictures, encode(artwork(10_000), "PNG"))
    store.close()


def test_rollback_to_a_registered_version_that_is_not_in_the_image(
    s3, gallery, tmp_path, tiny_model_card, tiny_model_card_v2, pg_dsn, monkeypatch, capsys
):
    from lambdas import predict

    # tiny-0 was registered when it was deployed; the new image carries tiny-1 only.
    bucket_registry(s3, tmp_path / "operator").register(tiny_model_card)
    image = tmp_path / "image-models"
    image.mkdir()
    for name in ("artlens.json", "artlens.onnx"):
        (image / name).write_bytes(tiny_model_card_v2.with_name(name).read_bytes())
    for name in ("IMAGES_BUCKET", "DB_SECRET_ARN", "TOKEN_SECRET_ARN", "ORT_THREADS",
                 "ARTLENS_TOKEN_KEY", "ARTLENS_TOKEN_KEY_FILE", "MODEL_REGISTRY_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_CARD_PATH", str(image / "artlens.json"))
    monkeypatch.setenv("ARTIFACTS_BUCKET", BUCKET)
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "lambda-tmp"))
    monkeypatch.setenv("DATABASE_URL", pg_dsn)
    monkeypatch.setenv("LOCAL_LAKE_DIR", str(gallery.lake.root))
    monkeypatch.setenv("LOCAL_URL_KEY", URL_KEY)
    monkeypatch.setattr(predict, "CURRENT_VERSION_TTL_S", 0.0)
    predict.reset()
    reindex_lambda = importlib.reload(importlib.import_module("lambdas.reindex"))

    def served() -> dict:
        return predict_answer(gallery.query)

    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    try:
        # Before the reindex the current version, tiny-0, comes from the bucket.
        capsys.readouterr()
        answer = served()
        assert_served_by(answer, "tiny-0", gallery, tiny_model_card)
        # The answered prediction published its metrics (embedded metric format on stdout).
        emf = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith('{"_aws"')]
        assert [doc["PredictLatency"] for doc in emf if "PredictLatency" in doc]
        assert [doc["type"] for doc in emf if "Predictions" in doc] == [answer["label"]]
        report = reindex_lambda.handler({}, LambdaContext("artlens"))  # the image's model
        assert report["activated"] and report["model_version"] == "tiny-1"
        assert_served_by(served(), "tiny-1", gallery, tiny_model_card_v2)
        assert reindex_lambda.handler({"rollback": True}, LambdaContext("artlens")) == {
            "previous_version": "tiny-1", "model_version": "tiny-0"}
        assert versions_of(gallery.store).current() == "tiny-0"
        assert_served_by(served(), "tiny-0", gallery, tiny_model_card)
        assert (tmp_path / "lambda-tmp" / "tiny-0" / "artlens.onnx").is_file()
    finally:
        predict.reset()
        reindex_lambda.deps().store.close()


def test_rollback_refuses_a_version_that_is_neither_in_the_image_nor_registered(
    s3, gallery, tmp_path, tiny_model_card_v2
):
    from artlens.models.versions import reindex, switch_back

    reindex(gallery.store, gallery.lake, get_classifier(tiny_model_card_v2))
    registry = bucket_registry(s3, tmp_path / "cache", default=tiny_model_card_v2)
    with pytest.raises(ModelNotRegistered, match="tiny-0.*s3://"):
        switch_back(gallery.store, registry)
    assert versions_of(gallery.store).current() == "tiny-1"
