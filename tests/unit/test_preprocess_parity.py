"""One picture gives identical tensors through the training path and the serving path."""

from __future__ import annotations

import numpy as np

from artlens.image import image_to_input
from tests.imagegen import artwork, encode
from training.data import load_pool
from training.train import dataset


def test_training_and_serving_tensors_are_identical(tmp_path):
    files = {
        "a/photo.jpg": encode(artwork(1, (1200, 900)), "JPEG", quality=90),  # draft-mode path
        "a/scan.png": encode(artwork(2).convert("RGBA"), "PNG"),
        "b/plate.webp": encode(artwork(3), "WEBP"),
        "b/grey.tif": encode(artwork(4).convert("L"), "TIFF"),
    }
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    pool = load_pool(tmp_path, progress=False)
    batches = list(
        dataset(pool.pixels, pool.labels, 2, batch_size=8, training=False, augment=False, seed=0)
    )
    training_tensors = np.concatenate([np.asarray(x) for x, _ in batches])
    serving_tensors = np.stack([image_to_input(files[p]) for p in pool.paths])
    assert training_tensors.dtype == serving_tensors.dtype == np.float32
    np.testing.assert_array_equal(training_tensors, serving_tensors)
    # the evaluation helper scales the same way
    scaled = pool.pixels.astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(scaled, serving_tensors)
