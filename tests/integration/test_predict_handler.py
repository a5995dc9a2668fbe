"""The predict handler end to end: real PostgreSQL + pgvector, a local lake folder, a tiny real
ONNX model, API Gateway proxy events in and out."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from artlens.image import image_to_input, load_image
from artlens.index.embeddings import EmbeddingStore, ImageRow
from artlens.lake import LocalLake
from artlens.models.classifier import get_classifier
from artlens.models.versions import versions_of
from lambdas import predict
from local_stack.events import LambdaContext

ORIGIN = "https://art.example"
URL_KEY = "local-url-signing-key-for-tests"
SEED_IMAGES = 48




def picture(seed: int) -> bytes:
    """A PNG whose dominant colour and texture vary with the seed (spreads over classes)."""
    rng = np.random.default_rng(seed)
    pixels = rng.random((96, 96, 3)) * 0.35
    pixels[:, :, seed % 3] += 0.3 + 0.3 * rng.random()
    pixels[rng.integers(0, 48):, :, (seed // 3) % 3] += 0.25
    img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Seeded:
    data: bytes
    key: str
    label: str
    embedding: np.ndarray


@pytest.fixture
def stack(pg_dsn, tiny_model_card, tmp_path, handler_env):
    """Environment for the handler, and a gallery of real embeddings in the database."""
    lake_dir = tmp_path / "lake"
    classifier = get_classifier(tiny_model_card, 1)
    store = EmbeddingStore(pg_dsn)
    store.migrate()
    versions_of(store).register(classifier.version)
    lake = LocalLake(lake_dir, URL_KEY.encode())
    datas = [picture(i) for i in range(SEED_IMAGES)]
    prediction = classifier.predict(np.stack([image_to_input(d) for d in datas]))
    seeded = []
    for data, probs, emb in zip(datas, prediction.probabilities, prediction.embeddings,
                                strict=True):
        sha = hashlib.sha256(data).hexdigest()
        label = classifier.classes[int(np.argmax(probs))]
        key = f"gallery/{sha}.png"
        lake.put(key, data, "image/png")
        loaded = load_image(data)
        assert store.upsert(ImageRow(key=key, sha256=sha, label=label,
                                     probability=float(probs.max()), embedding=emb,
                                     model_version=classifier.version, width=loaded.width,
                                     height=loaded.height, size_bytes=len(data)))
        seeded.append(Seeded(data, key, label, emb))
    versions_of(store).mark_ready(classifier.version)
    versions_of(store).activate(classifier.version)
    store.close()
    return seeded, lake


def post(body: bytes | str, *, content_type="image/png", query=None, b64=True) -> dict:
    if b64:
        body = base64.b64encode(body).decode()
    event = {
        "httpMethod": "POST",
        "resource": "/predict",
        "path": "/predict",
        "headers": {"content-type": content_type, "Authorization": "Bearer x"},
        "multiValueHeaders": {},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
        "body": body,
        "isBase64Encoded": b64,
        "requestContext": {"requestId": "req-int-1", "authorizer": {"principalId": "dev"}},
    }
    return predict.handler(event, LambdaContext("artlens-predict"))


def answer(response: dict, status: int = 200) -> dict:
    assert response["statusCode"] == status, response["body"]
    headers = response["headers"]
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"] == "application/json"
    return json.loads(response["body"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def query_picture(seeded: list[Seeded]) -> Seeded:
    """A seeded picture from a class with at least 6 members (itself + 5 neighbours)."""
    label, count = Counter(s.label for s in seeded).most_common(1)[0]
    assert count >= 6, "the generated gallery should give some class 6 members"
    return next(s for s in seeded if s.label == label)


def test_predict_returns_five_same_class_neighbours_without_the_query(stack):
    seeded, lake = stack
    query = query_picture(seeded)
    body = answer(post(query.data))

    assert body["label"] == query.label
    assert body["model_version"] == "tiny-0"
    assert set(body["probabilities"]) == {"drawings", "engraving", "iconography", "painting",
                                          "sculpture"}
    assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-4
    assert body["probability"] == max(body["probabilities"].values())
    assert set(body["timings_ms"]) == {"decode", "infer", "search", "total"}
    assert body["timings_ms"]["total"] >= body["timings_ms"]["infer"] >= 0

    neighbours = body["neighbors"]
    assert len(neighbours) == 5
    assert all(n["label"] == body["label"] for n in neighbours)
    assert query.key not in {n["key"] for n in neighbours}
    similarities = [n["similarity"] for n in neighbours]
    assert similarities == sorted(similarities, reverse=True)

    # Brute force over the same class, query excluded: the same five keys and similarities.
    expected = sorted(
        ((cosine(query.embedding, s.embedding), s.key) for s in seeded
         if s.label == query.label and s.key != query.key),
        reverse=True,
    )[:5]
    assert [n["key"] for n in neighbours] == [key for _, key in expected]
    np.testing.assert_allclose(similarities, [sim for sim, _ in expected], atol=1e-4)

    for n in neighbours:  # signed local URLs of that work's renditions, never the original
        assert n["key"] == f"gallery/{n['sha256']}.png"
        for field, side in (("url", 1024), ("thumbnail_url", 256)):
            path, _, params = n[field].partition("?")
            key = f"renditions/{side}/{n['sha256']}.jpg"
            assert path == f"/lake/{key}"
            fields = dict(p.split("=", 1) for p in params.split("&"))
            assert lake.verify_url(key, fields["exp"], fields["sig"])


def test_scope_all_searches_every_class(stack):
    seeded, _ = stack
    query = query_picture(seeded)
    body = answer(post(query.data, query={"scope": "all", "neighbors": "8"}))
    assert len(body["neighbors"]) == 8
    assert query.key not in {n["key"] for n in body["neighbors"]}
    expected = sorted(((cosine(query.embedding, s.embedding), s.key) for s in seeded
                       if s.key != query.key), reverse=True)[:8]
    assert [n["key"] for n in body["neighbors"]] == [key for _, key in expected]


def test_neighbors_zero_skips_the_search(stack):
    seeded, _ = stack
    body = answer(post(seeded[0].data, query={"neighbors": "0"}))
    assert body["neighbors"] == []
    assert body["label"] == seeded[0].label


def test_a_new_picture_as_json_and_multipart(stack):
    data = picture(10_000)  # not in the gallery
    as_json = json.dumps({"image_base64": base64.b64encode(data).decode()})
    by_json = answer(post(as_json, content_type="application/json", b64=False))
    boundary = "artlens-test-boundary"
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    by_form = answer(post(form, content_type=f"multipart/form-data; boundary={boundary}"))
    assert by_json["label"] == by_form["label"]
    assert [n["key"] for n in by_json["neighbors"]] == [n["key"] for n in by_form["neighbors"]]
    assert len(by_json["neighbors"]) >= 1


@pytest.mark.parametrize(
    ("body", "content_type", "query", "status", "code"),
    [
        (b"", "image/png", None, 400, "empty"),
        (b"<html><body>not a picture</body></html>", "text/html", None, 415,
         "unsupported_format"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (6 * 1024 * 1024), "image/png", None, 413, "too_large"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, "image/jpeg", None, 400, "corrupt_image"),
        (b"x", "image/png", {"neighbors": "99"}, 400, "bad_query"),
        (b"x", "image/png", {"scope": "nearby"}, 400, "bad_query"),
        (b"x", "image/png", {"debug": "1"}, 400, "bad_query"),
        (b"--b\r\n", "multipart/form-data; boundary=b", None, 400, "bad_multipart"),
        (b'{"image_base64": "%%%"}', "application/json", None, 400, "invalid_base64"),
    ],
    ids=["empty", "html", "too-large", "corrupt", "neighbors", "scope", "unknown-param",
         "multipart", "base64"],
)
def test_bad_requests_get_typed_json_errors_with_cors(stack, body, content_type, query, status,
                                                      code):
    error = answer(post(body, content_type=content_type, query=query), status)
    assert error["error"] == code
    assert isinstance(error["message"], str) and error["message"]


def test_collection_map(stack):
    seeded, lake = stack
    event = {"httpMethod": "GET", "resource": "/map", "path": "/map",
             "headers": {}, "queryStringParameters": {"limit": "20"},
             "requestContext": {"requestId": "req-map"}}
    body = answer(predict.handler(event, LambdaContext("artlens-predict")))
    assert body["model_version"] == "tiny-0"
    assert body["classes"] == ["drawings", "engraving", "iconography", "painting", "sculpture"]
    assert len(body["points"]) == 20
    labels = {s.key: s.label for s in seeded}
    coords = np.array([[p["x"], p["y"], p["z"]] for p in body["points"]])
    assert np.all(np.abs(coords) <= 1.0) and np.max(np.abs(coords)) == pytest.approx(1.0)
    assert np.linalg.matrix_rank(coords) == 3  # a real 3-D spread, not a degenerate line
    for point in body["points"]:
        assert labels[point["key"]] == point["label"]
        assert point["key"] == f"gallery/{point['sha256']}.png"
        assert point["thumbnail_url"].startswith(f"/lake/renditions/256/{point['sha256']}.jpg?")


def test_unknown_route_and_wrong_method(stack):
    base = {"headers": {}, "queryStringParameters": None, "requestContext": {"requestId": "r"}}
    missing = predict.handler({**base, "httpMethod": "GET", "resource": "/nope", "path": "/nope"},
                              LambdaContext("artlens-predict"))
    assert answer(missing, 404)["error"] == "not_found"
    wrong = predict.handler({**base, "httpMethod": "GET", "resource": "/predict",
                             "path": "/predict"}, LambdaContext("artlens-predict"))
    assert answer(wrong, 405)["error"] == "method_not_allowed"


def test_database_down_is_503_not_500(stack, monkeypatch):
    seeded, _ = stack
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    predict.reset()
    error = answer(post(seeded[0].data), 503)
    assert error["error"] == "unavailable"
