"""The server contract the page is written against (issue 15 items 1-6) and the body limits of
issue 12, through the predict handler: real PostgreSQL + pgvector, a folder lake, the tiny real
ONNX model, API Gateway proxy events in and out."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from artlens.api.answers import UNIFORM_STD, Uncertainty, predict_image
from artlens.api.events import MAX_BODY_BYTES
from artlens.api.routes import UPLOADS_PREFIX, PredictApi
from artlens.errors import ImageRejected
from artlens.image import image_to_input
from artlens.index.embeddings import EmbeddingStore
from artlens.lake import LocalLake
from artlens.models.card import ModelCard
from artlens.models.classifier import OnnxClassifier, get_classifier
from artlens.models.versions import versions_of
from lambdas import predict
from local_stack.events import LambdaContext
from tests.imagegen import artwork, encode
from tests.integration.test_predict_handler import (
    ORIGIN,
    URL_KEY,
    answer,
    cosine,
    picture,
    post,
)
from tests.integration.test_predict_handler import (
    stack as stack,  # the fixture: a gallery of real embeddings, the handler environment
)


def call(method: str, path: str, *, body: str | None = None, query=None, headers=None,
         authorizer=None, b64: bool = False) -> dict:
    event = {
        "httpMethod": method, "resource": path, "path": path, "headers": headers or {},
        "multiValueHeaders": {}, "queryStringParameters": query,
        "multiValueQueryStringParameters": None, "body": body, "isBase64Encoded": b64,
        "requestContext": {"requestId": "req-contract",
                           "authorizer": authorizer or {"principalId": "dev"}},
    }
    return predict.handler(event, LambdaContext("artlens-predict"))


def post_json(document, path: str = "/predict", query=None) -> dict:
    return call("POST", path, body=json.dumps(document), query=query,
                headers={"Content-Type": "application/json"})


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def empty_stack(pg_dsn, handler_env):
    """The handler's environment over a migrated index whose current version has no rows."""
    store = EmbeddingStore(pg_dsn)
    store.migrate()
    versions_of(store).register("tiny-0")
    versions_of(store).mark_ready("tiny-0")
    versions_of(store).activate("tiny-0")
    store.close()


def card_with(tiny_model_card: Path, folder: Path, uncertainty: dict) -> OnnxClassifier:
    """The tiny model under a card that carries `serving.uncertainty` (ONNX copied beside)."""
    raw = json.loads(Path(tiny_model_card).read_text())
    raw["serving"] = {"uncertainty": uncertainty}
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(tiny_model_card).with_name(raw["onnx_file"]), folder / raw["onnx_file"])
    (folder / "artlens.json").write_text(json.dumps(raw))
    return OnnxClassifier(ModelCard.load(folder / "artlens.json"))


# -- item 1 and 2: GET /map -------------------------------------------------------------------


def test_map_of_an_empty_collection_is_200_with_no_points(empty_stack):
    body = answer(call("GET", "/map", query={"limit": "1000"}))
    assert body == {"model_version": "tiny-0",
                    "classes": ["drawings", "engraving", "iconography", "painting", "sculpture"],
                    "points": [], "projection": None}


def test_map_projection_places_a_stored_embedding_on_its_point(stack):
    seeded, _ = stack
    body = answer(call("GET", "/map", query={"limit": "1000"}))
    projection = body["projection"]
    mean, components = np.asarray(projection["mean"]), np.asarray(projection["components"])
    assert mean.shape == (128,) and components.shape == (3, 128)
    embeddings = {s.key: s.embedding for s in seeded}
    assert len(body["points"]) == len(seeded)
    for point in body["points"]:
        xyz = components @ (embeddings[point["key"]].astype(np.float64) - mean)
        np.testing.assert_allclose(xyz, [point["x"], point["y"], point["z"]], atol=1e-4)
    coords = np.array([[p["x"], p["y"], p["z"]] for p in body["points"]])
    assert np.max(np.abs(coords)) == pytest.approx(1.0)  # the [-1, 1] scaling is folded in


# -- item 3: embedding, sha256, assessment, nearest_by_type -----------------------------------


def test_predict_answer_carries_embedding_sha256_assessment_and_nearest_by_type(
    stack, tiny_model_card
):
    seeded, lake = stack
    data = picture(20_000)  # not in the gallery
    body = answer(post(data))
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    expected = get_classifier(tiny_model_card).predict(image_to_input(data)[np.newaxis])
    np.testing.assert_allclose(body["embedding"], expected.embeddings[0], atol=2e-6)
    assessment = body["assessment"]
    ranked = sorted(body["probabilities"], key=lambda c: -body["probabilities"][c])
    assert assessment["candidates"] == ranked[:2]
    assert assessment["thresholds"] == {"min_probability": 0.6, "min_margin": 0.2,
                                        "min_similarity": None, "uniform_std": UNIFORM_STD}
    assert assessment["thresholds_from"] == "defaults"
    top, second = (body["probabilities"][c] for c in ranked[:2])
    status = "uncertain" if top < 0.6 or top - second < 0.2 else "confident"
    assert assessment["status"] == status
    if status == "confident":
        assert body["nearest_by_type"] is None
        return
    assert assessment["reason"] == ("low_probability" if top < 0.6 else "small_margin")
    by_type = body["nearest_by_type"]
    assert list(by_type) == ranked[:2]
    for candidate, found in by_type.items():
        same_type = [s for s in seeded if s.label == candidate]
        if not same_type:
            assert found is None
            continue
        best = max(same_type, key=lambda s: cosine(s.embedding, expected.embeddings[0]))
        assert (found["key"], found["label"]) == (best.key, candidate)
        assert lake.verify_url(f"renditions/1024/{found['sha256']}.jpg", *(
            dict(p.split("=", 1) for p in found["url"].split("?", 1)[1].split("&"))[f]
            for f in ("exp", "sig")))


def test_card_thresholds_decide_confident_and_far_from_collection(stack, tiny_model_card,
                                                                   tmp_path):
    seeded, lake = stack
    store = EmbeddingStore(predict.deps().serving.settings.database_url or "")
    data = picture(20_001)

    lenient = card_with(tiny_model_card, tmp_path / "lenient",
                        {"min_probability": 0.0, "min_margin": 0.0})
    confident = predict_image(data, lenient, store, lake)
    assert confident["assessment"]["status"] == "confident"
    assert confident["assessment"]["reason"] is None
    assert confident["assessment"]["thresholds_from"] == "card"
    assert confident["nearest_by_type"] is None

    strict = card_with(tiny_model_card, tmp_path / "strict",
                       {"min_probability": 0.0, "min_margin": 0.0, "min_similarity": 0.9999999})
    far = predict_image(data, strict, store, lake, neighbors=0)
    assert far["assessment"]["status"] == "not_artwork"
    assert far["assessment"]["reason"] == "far_from_collection"
    assert far["assessment"]["thresholds"]["min_similarity"] == 0.9999999
    # A stored work asked again is found at similarity 1 only if it is not excluded: it is.
    near = predict_image(seeded[0].data, card_with(
        tiny_model_card, tmp_path / "loose-sim",
        {"min_probability": 0.0, "min_margin": 0.0, "min_similarity": -1.0}), store, lake)
    assert near["assessment"]["status"] == "confident"
    assert seeded[0].key not in {n["key"] for n in near["neighbors"]}
    store.close()


def test_out_of_range_card_thresholds_fall_back_to_the_defaults():
    rules = Uncertainty.from_card({"serving": {"uncertainty": {
        "min_probability": 1.5, "min_margin": "0.1", "min_similarity": True}}})
    assert rules == Uncertainty()
    assert Uncertainty.from_card({"serving": {"uncertainty": {"min_margin": 0.05}}}) == \
        Uncertainty(min_margin=0.05, source="card")
    assert Uncertainty.from_card(None) == Uncertainty.from_card({"serving": []}) == Uncertainty()


@pytest.mark.parametrize("noise", [0.0, 0.004])
def test_a_near_uniform_picture_is_not_an_artwork(stack, noise):
    rng = np.random.default_rng(3)
    flat = np.clip(128 + rng.normal(0, noise * 255, (120, 160, 3)), 0, 255)
    body = answer(post(png(flat)))
    assert body["assessment"]["status"] == "not_artwork"
    assert body["assessment"]["reason"] == "uniform_image"
    assert body["nearest_by_type"] is None
    textured = answer(post(picture(20_002)))
    assert textured["assessment"]["reason"] != "uniform_image"


# -- item 4: predict by key or SHA-256 --------------------------------------------------------


def test_predict_by_key_and_sha256_equals_uploading_the_work_without_itself(stack):
    seeded, _ = stack
    work = seeded[5]
    uploaded = answer(post(work.data, query={"scope": "all", "neighbors": "6"}))
    for reference in ({"key": work.key}, {"sha256": work.key[8:72].upper()}):
        body = answer(post_json(reference, query={"scope": "all", "neighbors": "6"}))
        for field in ("label", "probabilities", "sha256", "embedding", "assessment",
                      "model_version"):
            assert body[field] == uploaded[field], field
        # The same neighbours (their signed URLs differ only by when they were signed).
        assert [(n["key"], n["similarity"]) for n in body["neighbors"]] == [
            (n["key"], n["similarity"]) for n in uploaded["neighbors"]]
        assert work.key not in {n["key"] for n in body["neighbors"]}
        assert len(body["neighbors"]) == 6


def test_an_uploaded_picture_can_be_asked_for_again_by_sha256(stack):
    _, lake = stack
    data = picture(20_003)
    digest = hashlib.sha256(data).hexdigest()
    assert answer(post_json({"sha256": digest}), 404)["error"] == "not_found"
    first = answer(post(data))
    assert lake.get(UPLOADS_PREFIX + digest) == data
    again = answer(post_json({"sha256": digest}))
    assert (again["label"], again["embedding"], again["sha256"]) == (
        first["label"], first["embedding"], digest)
    assert [n["key"] for n in again["neighbors"]] == [n["key"] for n in first["neighbors"]]


@pytest.mark.parametrize(
    ("document", "status", "code"),
    [
        ({"key": "gallery/" + "a" * 64 + ".jpg"}, 404, "not_found"),
        ({"sha256": "b" * 64}, 404, "not_found"),
        ({"key": "gallery/../secret.jpg"}, 400, "bad_key"),
        ({"key": "incoming/" + "a" * 64 + ".jpg"}, 400, "bad_key"),
        ({"key": 7}, 400, "bad_key"),
        ({"sha256": "xyz"}, 400, "bad_sha256"),
        ({"sha256": "a" * 63}, 400, "bad_sha256"),
        ({"sha256": "a" * 64, "key": "gallery/" + "a" * 64 + ".jpg"}, 400, "missing_file"),
    ],
)
def test_bad_and_unknown_references(stack, document, status, code):
    error = answer(post_json(document), status)
    assert error["error"] == code and error["message"]


# -- item 5: POST /preview --------------------------------------------------------------------


def test_preview_of_a_tiff_large_png_and_rotated_jpeg(stack):
    tiff = encode(artwork(7500, (300, 200)), "TIFF")
    body = answer(call("POST", "/preview", body=base64.b64encode(tiff).decode(),
                       headers={"Content-Type": "image/tiff"}, b64=True))
    assert body["preview"].startswith("data:image/jpeg;base64,")
    shown = Image.open(io.BytesIO(base64.b64decode(body["preview"].split(",", 1)[1])))
    assert (shown.format, shown.size, body["width"], body["height"], body["format"]) == (
        "JPEG", (300, 200), 300, 200, "TIFF")

    big = answer(post_json({"image_base64": base64.b64encode(
        encode(artwork(7501, (1600, 800)), "PNG")).decode()}, path="/preview"))
    assert (big["width"], big["height"]) == (512, 256)

    # EXIF orientation 6 (rotate 90°): a 200x100 sensor picture is a 100x200 portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera Maker"
    out = io.BytesIO()
    artwork(7502, (200, 100)).save(out, "JPEG", exif=exif.tobytes())
    rotated = answer(post_json({"image_base64": base64.b64encode(out.getvalue()).decode()},
                               path="/preview"))
    assert (rotated["width"], rotated["height"]) == (100, 200)
    made = Image.open(io.BytesIO(base64.b64decode(rotated["preview"].split(",", 1)[1])))
    assert dict(made.getexif()) == {} and "exif" not in made.info  # metadata stripped


def test_preview_refuses_what_is_not_a_picture(stack):
    error = answer(call("POST", "/preview", body="<html>no</html>",
                        headers={"Content-Type": "text/html"}), 415)
    assert error["error"] == "unsupported_format"
    assert answer(call("GET", "/preview"), 405)["error"] == "method_not_allowed"


# -- item 6: GET /whoami ----------------------------------------------------------------------


def test_whoami_answers_from_the_authorizer_context_without_the_database(stack, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    predict.reset()
    context = {"principalId": "curator", "sub": "curator", "scheme": "bearer",
               "exp": "1900000000", "integrationLatency": 3}
    assert answer(call("GET", "/whoami", authorizer=context)) == {
        "sub": "curator", "scheme": "bearer", "expires_at": 1900000000, "scopes": ["predict"]}
    reviewer = {**context, "scopes": "review predict"}
    assert answer(call("GET", "/whoami", authorizer=reviewer))["scopes"] == ["predict", "review"]
    # A context without `exp` (a token without one, or an authorizer that does not say yet).
    lasting = {"principalId": "lab-1", "sub": "lab-1", "scheme": "bearer"}
    assert answer(call("GET", "/whoami", authorizer=lasting)) == {
        "sub": "lab-1", "scheme": "bearer", "expires_at": None, "scopes": ["predict"]}
    assert answer(call("POST", "/whoami"), 405)["error"] == "method_not_allowed"
    assert answer(call("GET", "/whoami", query={"x": "1"}), 400)["error"] == "bad_query"


# -- issue 12: bodies that fit one Lambda event; JSON nested too deep ------------------------


def test_body_over_the_event_limit_is_413_naming_the_limit(stack):
    error = answer(post(b"\xff\xd8\xff" + b"\0" * MAX_BODY_BYTES), 413)
    assert error["error"] == "too_large"
    assert f"{MAX_BODY_BYTES:,} bytes" in error["message"]
    assert "Downscale" in error["message"]
    assert MAX_BODY_BYTES == (6_291_456 - 65_536) * 3 // 4
    # Base64 of the largest body plus the event around it stays within Lambda's 6 MB.
    assert (MAX_BODY_BYTES + 2) // 3 * 4 + 65_536 <= 6_291_456


def test_json_nested_100000_deep_is_400_not_500(stack):
    error = answer(call("POST", "/predict", body="[" * 100_000 + "]" * 100_000,
                        headers={"Content-Type": "application/json"}), 400)
    assert error["error"] == "bad_json"


def test_preview_of_a_stored_work_by_reference(stack):
    seeded, _ = stack
    body = answer(post_json({"key": seeded[0].key}, path="/preview"))
    assert (body["width"], body["height"], body["format"]) == (96, 96, "PNG")
    assert answer(post_json({"sha256": "c" * 64}, path="/preview"), 404)["error"] == "not_found"


# -- keeping an upload overlaps the model --------------------------------------------------------


def test_an_upload_is_kept_while_the_model_runs_and_a_rejected_one_never(
    stack, tiny_model_card, pg_dsn
):
    """On S3 keeping an upload is two calls of tens of ms: they must run beside the inference,
    not after it. The real lake and model, observed: the model waits (up to 10 s) for the lake
    to be asked about the upload, which a keep started only after the answer never does."""
    _, lake = stack
    asked = threading.Event()
    waited: list[bool] = []

    class ObservedLake(LocalLake):
        def put_if_absent(self, key: str, data: bytes, content_type: str = "") -> bool:
            asked.set()
            return super().put_if_absent(key, data)

    class WaitingClassifier:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def predict(self, pixels):
            waited.append(asked.wait(timeout=10))
            return self.inner.predict(pixels)

    classifier = WaitingClassifier(get_classifier(tiny_model_card, 1))
    store = EmbeddingStore(pg_dsn)
    api = PredictApi(SimpleNamespace(classifier=lambda: classifier), store,
                     ObservedLake(lake.root, URL_KEY.encode()), nonces=None, cors_origin=ORIGIN)

    def event(data: bytes) -> dict:
        return {"httpMethod": "POST", "resource": "/predict", "path": "/predict",
                "headers": {"content-type": "image/png"}, "queryStringParameters": None,
                "body": base64.b64encode(data).decode(), "isBase64Encoded": True,
                "requestContext": {"requestId": "keep", "authorizer": {"principalId": "dev"}}}

    try:
        with pytest.raises(ImageRejected):
            api.predict(event(b"this is not a picture"))
        assert not asked.is_set() and lake.list(UPLOADS_PREFIX) == []

        data = picture(20_010)
        body = api.predict(event(data))
        assert waited == [True]  # the lake was asked before the model finished
        assert lake.get(UPLOADS_PREFIX + body["sha256"]) == data  # and kept before answering
    finally:
        store.close()
