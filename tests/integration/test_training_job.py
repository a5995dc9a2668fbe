"""The training job's CNN configs (the seed's reference and improved; model v1) end to end on
tiny generated data: clean, cross-validate, train 2 epochs, export ONE ONNX graph whose outputs
match Keras, and write a card that validates. The backbone config (model v2) has its own test,
tests/integration/test_training_backbone.py."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from artlens.image import image_to_input
from tests.imagegen import artwork, encode
from training.__main__ import main
from training.export import ExportParityError, export_onnx, validate_card

CLASSES = ("drawings", "engraving", "sculpture")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    data = root / "data"
    for c, cls in enumerate(CLASSES):
        for i in range(14):
            img = artwork(100 * c + i)
            # make the class learnable: a class-specific colour cast
            arr = np.asarray(img).astype(np.int16)
            arr[..., c] = np.clip(arr[..., c] + 90, 0, 255)
            path = data / "training_set" / cls / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(Image.fromarray(arr.astype(np.uint8)), "JPEG"))
    (data / "training_set" / "sculpture" / "broken.jpg").write_text("<html>error</html>")
    out, models = root / "out", root / "models"
    rc = main(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--model-dir",
            str(models),
            "--cache-dir",
            str(root / "cache"),
            "--configs",
            "reference,improved",
            "--folds",
            "2",
            "--cv-epochs",
            "2",
            "--test-fraction",
            "0.25",
            "--version",
            "test-1",
            "--quiet",
        ]
    )
    assert rc == 0
    return data, out, models


def test_job_writes_every_report(trained):
    _, out, _ = trained
    for name in (
        "cleaning_report.json",
        "class_distribution.png",
        "mean_rgb_per_class.png",
        "learning_curves_reference.png",
        "learning_curves_improved.png",
        "confusion_matrix.png",
        "embeddings_3d.html",
        "embeddings_3d.png",
        "metrics.json",
    ):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "cleaning_report.json").read_text())
    assert report["totals"]["unreadable"] == 1
    html = (out / "embeddings_3d.html").read_text()
    # self-contained: plotly.js is inlined, no script is loaded from elsewhere
    assert re.search(r"<script[^>]*\bsrc=", html) is None and "Plotly.newPlot" in html


def test_onnx_has_one_graph_with_both_outputs_and_dynamic_batch(trained):
    _, _, models = trained
    model = onnx.load(models / "artlens.onnx")
    assert [i.name for i in model.graph.input] == ["image"]
    assert sorted(o.name for o in model.graph.output) == ["embedding", "probabilities"]
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(str(models / "artlens.onnx"))
    for n in (1, 7):
        probs, emb = session.run(
            ["probabilities", "embedding"],
            {"image": np.random.default_rng(n).random((n, 150, 150, 3), np.float32)},
        )
        assert probs.shape == (n, len(CLASSES)) and emb.shape == (n, 128)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_card_validates_and_records_provenance(trained):
    data, _, models = trained
    card = validate_card(models / "artlens.json")
    assert card["classes"] == list(CLASSES)
    assert card["version"] == "test-1"
    assert card["export_parity"]["parity_images"] >= 32
    assert card["export_parity"]["max_abs_diff_probabilities"] <= 1e-4
    assert set(card["metrics"]["cross_validation"]) == {"reference", "improved"}
    assert card["metrics"]["test"]["per_class"].keys() == set(CLASSES)
    assert card["training"]["data"]["checksum"].startswith("files-sha256:")
    assert card["training"]["seconds_total"] > 0
    # the card's preprocessing is the serving library's: a served file gives a valid prediction
    session = ort.InferenceSession(str(models / "artlens.onnx"))
    x = image_to_input((data / "training_set" / "drawings" / "0.jpg").read_bytes())[None]
    probs, _ = session.run(["probabilities", "embedding"], {"image": x})
    assert probs.shape == (1, 3)


def test_export_refuses_a_broken_conversion(tmp_path):
    """Parity is enforced: a model whose ONNX disagrees with Keras is not written."""
    import keras

    from training.models import CONFIGS, build_model

    model = build_model(CONFIGS["reference"], 2, seed=0)
    images = np.random.default_rng(0).random((32, 150, 150, 3), np.float32)

    class Drifting(keras.Model):
        """Keras answers differ from the traced graph's: stands for a faulty converter."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.calls = 0

        def call(self, x, training=False):
            p, e = self.inner(x, training=training)
            self.calls += 1
            return p, e + (1.0 if self.calls > 1 else 0.0)

    with pytest.raises(ExportParityError):
        export_onnx(Drifting(model), tmp_path / "m.onnx", images)
    assert not (tmp_path / "m.onnx").exists()
