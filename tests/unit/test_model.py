"""The ONNX classifier on a tiny real exported model (fixture tiny_model_card)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from artlens.models.card import ModelCard, ModelIntegrityError
from artlens.models.classifier import OnnxClassifier as Classifier
from artlens.models.classifier import get_classifier


@pytest.fixture(scope="module")
def card(tiny_model_card) -> ModelCard:
    return ModelCard.load(tiny_model_card)


@pytest.fixture(scope="module")
def classifier(card) -> Classifier:
    return Classifier(card, threads=1)


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 150, 150, 3), dtype=np.float32)


def test_card_fields(card, tiny_model_card):
    raw = json.loads(tiny_model_card.read_text())
    assert card.classes == tuple(raw["classes"])
    assert card.version == raw["version"]
    assert card.embedding_size == 128
    assert card.onnx_path.is_absolute() and card.onnx_path.exists()
    assert card.onnx_path.parent == tiny_model_card.resolve().parent


def test_output_shapes_and_probabilities(classifier, card):
    prediction = classifier.predict(batch(3))
    assert prediction.probabilities.shape == (3, len(card.classes))
    assert prediction.embeddings.shape == (3, 128)
    assert prediction.probabilities.dtype == np.float32
    assert np.all(prediction.probabilities >= 0)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(prediction.embeddings))


def test_batch_of_n_equals_n_singles(classifier):
    images = batch(5, seed=1)
    together = classifier.predict(images)
    for i in range(5):
        single = classifier.predict(images[i])  # a lone [150,150,3] picture is a batch of one
        np.testing.assert_allclose(single.probabilities[0], together.probabilities[i], atol=1e-5)
        np.testing.assert_allclose(single.embeddings[0], together.embeddings[i], atol=1e-4)


def test_different_pictures_get_different_embeddings(classifier):
    prediction = classifier.predict(batch(2, seed=2))
    assert not np.allclose(prediction.embeddings[0], prediction.embeddings[1])


def test_empty_batch_and_wrong_shape(classifier, card):
    empty = classifier.predict(np.zeros((0, 150, 150, 3), np.float32))
    assert empty.probabilities.shape == (0, len(card.classes))
    with pytest.raises(ValueError):
        classifier.predict(np.zeros((1, 100, 100, 3), np.float32))


def test_threads_are_configured(card):
    clf = Classifier(card, threads=2)
    options = clf._session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1


def copy_model(tiny_model_card, dest):
    card = json.loads(tiny_model_card.read_text())
    shutil.copy(tiny_model_card.with_name(card["onnx_file"]), dest / card["onnx_file"])
    (dest / "artlens.json").write_text(json.dumps(card))
    return dest / "artlens.json", card


def test_sha_mismatch_in_card_is_refused(tiny_model_card, tmp_path):
    card_path, card = copy_model(tiny_model_card, tmp_path)
    card["onnx_sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="SHA-256"):
        Classifier(ModelCard.load(card_path))


def test_modified_onnx_file_is_refused(tiny_model_card, tmp_path):
    card_path, card = copy_model(tiny_model_card, tmp_path)
    onnx = tmp_path / card["onnx_file"]
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError):
        Classifier(ModelCard.load(card_path))


def test_incomplete_card_is_refused(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelIntegrityError, match="lacks"):
        ModelCard.load(tmp_path / "c.json")


def test_get_classifier_caches_per_path_and_threads(tiny_model_card):
    first = get_classifier(tiny_model_card, 1)
    assert get_classifier(str(tiny_model_card), 1) is first
    assert get_classifier(tiny_model_card, 2) is not first
    assert first.version == ModelCard.load(tiny_model_card).version
