"""A tiny real model for tests: the reference architecture trained for a few steps on generated
pictures and exported by the same export path as the shipped model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.export import PARITY_MIN_IMAGES, export_onnx, write_card
from training.models import CONFIGS, build_model, compile_for_training


def synthetic_batch(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is visible in their colour, so a couple of steps learn something."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    images = rng.random((n, 150, 150, 3), dtype=np.float32) * 0.3
    for i, label in enumerate(labels):
        images[i, :, :, label % 3] += 0.5 + 0.1 * (label // 3)
    return np.clip(images, 0, 1), labels


def make_tiny_model(out_dir: Path, classes=("a", "b"), seed: int = 0, epochs: int = 1) -> Path:
    """Train briefly, export ONNX + card into out_dir; returns the card path."""
    import keras

    out_dir = Path(out_dir)
    config = CONFIGS["reference"]
    model = build_model(config, len(classes), seed=seed)
    images, labels = synthetic_batch(PARITY_MIN_IMAGES, len(classes), seed)
    clf = compile_for_training(model, config, steps_per_epoch=2, epochs=epochs)
    clf.fit(
        images,
        keras.utils.to_categorical(labels, len(classes)),
        batch_size=16,
        epochs=epochs,
        verbose=0,
    )
    onnx_path = out_dir / "artlens.onnx"
    parity = export_onnx(model, onnx_path, images)
    card_path = out_dir / "artlens.json"
    write_card(
        card_path,
        onnx_path,
        name="artlens-tiny",
        version=f"tiny-{seed}",
        classes=list(classes),
        extra={"export_parity": parity},
    )
    return card_path
