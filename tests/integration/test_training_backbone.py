"""Model v2's config (mobilenet_v2) end to end on the REAL shared MobileNetV2 weights, at 96 px on
a few generated pictures: cached views, 2-fold CV, one fine-tuning epoch, temperature, ONE ONNX
graph (dynamic batch, both outputs, metadata), parity with Keras, the card, and the cross-source
split kept out of training."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from artlens.image import image_to_input
from tests.imagegen import artwork, encode, near_copy
from training.__main__ import main
from training.export import card_digest, onnx_metadata, validate_card

CLASSES = ("drawings", "engraving", "sculpture")
SIZE = 96


def _picture(c: int, i: int) -> bytes:
    arr = np.asarray(artwork(100 * c + i)).astype(np.int16)
    arr[..., c] = np.clip(arr[..., c] + 90, 0, 255)  # a class-specific colour cast
    return encode(Image.fromarray(arr.astype(np.uint8)), "JPEG")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2job")
    data, kaggle = root / "data", root / "kaggle"
    for c, cls in enumerate(CLASSES):
        for i in range(12):
            path = data / cls / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_picture(c, i))
        split = kaggle / "dataset" / "dataset_updated"
        for name, seed in (("training_set", 50), ("validation_set", 70)):
            path = split / name / cls / "k.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_picture(c, seed))
    # a main-data picture re-appears in the cross-source validation split: it must not train
    leak = kaggle / "dataset" / "dataset_updated" / "validation_set" / CLASSES[0] / "leak.jpg"
    arr = np.asarray(Image.open(data / CLASSES[0] / "3.jpg"))
    leak.write_bytes(near_copy(Image.fromarray(arr)))
    out, models = root / "out", root / "models"
    rc = main(
        [
            "--data", str(data),
            "--out", str(out),
            "--model-dir", str(models),
            "--cache-dir", str(root / "cache"),
            "--input-size", str(SIZE),
            "--embedding-dim", "128",
            "--views", "1",
            "--warmup-epochs", "2",
            "--finetune-epochs", "1",
            "--folds", "2",
            "--test-fraction", "0.25",
            "--cross-source", str(kaggle),
            "--compare-card", "none",
            "--tradeoff", "none",
            "--version", "v2-test",
            "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    return data, out, models


def test_one_onnx_graph_with_dynamic_batch_and_normalised_embedding(job):
    _, _, models = job
    session = ort.InferenceSession(str(models / "artlens.onnx"))
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].shape[1:] == [SIZE, SIZE, 3]
    assert sorted(o.name for o in session.get_outputs()) == ["embedding", "probabilities"]
    for n in (1, 5):
        x = np.random.default_rng(n).random((n, SIZE, SIZE, 3), np.float32)
        probs, emb = session.run(["probabilities", "embedding"], {"image": x})
        assert probs.shape == (n, len(CLASSES)) and emb.shape == (n, 128)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_card_metadata_and_parity(job):
    data, _, models = job
    card = validate_card(models / "artlens.json")  # ONNX hash, shapes, metadata digest
    assert card["input"]["shape"] == [None, SIZE, SIZE, 3]
    assert card["embedding_size"] == 128 and card["classes"] == list(CLASSES)
    assert f"{SIZE}x{SIZE}" in card["preprocessing"]["resize"]
    # serving refuses any other scale string: the [-1, 1] mapping lives inside the graph
    assert card["preprocessing"]["scale"] == "float32 = uint8 / 255"
    assert card["export_parity"]["parity_images"] >= 32
    assert (
        max(
            card["export_parity"]["max_abs_diff_probabilities"],
            card["export_parity"]["max_abs_diff_embedding"],
        )
        <= 1e-4
    )
    meta = onnx_metadata(models / "artlens.onnx")
    assert meta["artlens.model_version"] == "v2-test"
    assert json.loads(meta["artlens.classes"]) == list(CLASSES)
    assert meta["artlens.card_sha256"] == card_digest(card)
    tampered = card | {"version": "other"}
    assert card_digest(tampered) != meta["artlens.card_sha256"]
    # the temperature is baked in and the calibration report is complete
    cal = card["metrics"]["calibration"]
    assert cal["temperature"] == pytest.approx(card["architecture"]["temperature"])
    assert 0 <= cal["ece_15_bins_after"] <= 1 and len(cal["bins_after"]["count"]) == 15
    assert set(card["metrics"]["cross_validation"]) == {"mobilenet_v2"}
    # the default whitening learns what a user's copy changes (training pictures only)
    assert "(training picture, user-style copy" in card["architecture"]["embedding"]["text"]
    for key in ("intended_use", "out_of_scope", "limitations", "licences", "citation"):
        assert card[key], key
    # serving loads this card as it is (its scale check, its input size) and predicts on its
    # own preprocessing of a file
    from artlens.models.card import ModelCard
    from artlens.models.classifier import OnnxClassifier

    served = ModelCard.load(models / "artlens.json")
    assert served.input_size == SIZE and served.embedding_size == 128
    x = image_to_input((data / CLASSES[1] / "0.jpg").read_bytes(), size=SIZE)[None]
    pred = OnnxClassifier(served).predict(x)
    assert pred.probabilities.shape == (1, len(CLASSES)) and pred.embeddings.shape == (1, 128)


def test_cross_source_validation_never_trains_and_is_reported(job):
    _, out, models = job
    card = json.loads((models / "artlens.json").read_text())
    xs = card["metrics"]["cross_source"]
    assert xs["validation_set"]["pictures"] == 4  # one per class + the leaked copy
    assert xs["main_rows_kept_out_as_near_copies_of_validation"] == 1
    assert xs["training_set_used_for_training"] == 3
    assert xs["per_type"]["all"]["n"] == 4
    retrieval = card["metrics"]["retrieval"]
    assert 0 <= retrieval["copy_recall_at_1"] <= 1 and retrieval["copy_queries"] > 0
    for name in (
        "reliability_diagram.png",
        "occlusion.png",
        "confusion_matrix.png",
        "learning_curves_mobilenet_v2.png",
        "embeddings_3d.png",
    ):
        assert (out / name).stat().st_size > 0, name


def test_restamping_keeps_card_and_onnx_bound(job, tmp_path):
    """A card changed after the run (e.g. the version it ships as) is re-bound to its ONNX file:
    the metadata digest and the card's onnx_sha256 follow; the graph's outputs do not change."""
    import shutil

    from training.export import restamp_card

    _, _, models = job
    for name in ("artlens.json", "artlens.onnx"):
        shutil.copy2(models / name, tmp_path / name)
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3), np.float32)
    before = ort.InferenceSession(str(tmp_path / "artlens.onnx")).run(None, {"image": x})
    card = restamp_card(tmp_path / "artlens.json", {"version": "v2-shipped"})
    validate_card(tmp_path / "artlens.json")
    assert onnx_metadata(tmp_path / "artlens.onnx")["artlens.model_version"] == "v2-shipped"
    assert card["onnx_sha256"] != json.loads((models / "artlens.json").read_text())["onnx_sha256"]
    after = ort.InferenceSession(str(tmp_path / "artlens.onnx")).run(None, {"image": x})
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_card_carries_near_duplicate_thresholds(job):
    """The run calibrates serving's near-duplicate rule on its own held-out copies."""
    _, _, models = job
    dup = json.loads((models / "artlens.json").read_text())["serving"]["duplicates"]
    assert 0 < dup["min_similarity"] <= 1 and 0 <= dup["max_hamming"] <= 64
    assert 0 < dup["related_min_similarity"] <= 1
    assert dup["measured"]["copies"] > 0 and dup["basis"]
