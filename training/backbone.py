"""MobileNetV2 backbone for model v2: building it, cutting it where fine-tuning starts, and the
cache of frozen activations that makes warm-up and fine-tuning affordable on two CPU cores.

The backbone is cut in two at the block where fine-tuning starts: the frozen trunk runs ONCE
per picture and augmented view (its outputs are cached on disk, keyed by everything that
determines them), and only the small top - the last blocks, ~15 % of the multiply-adds - runs
forward and backward during fine-tuning. The exported graph is the uncut backbone: trunk and top
are two views of the same layers.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

# first fine-tuned block -> the tensor the trunk ends with (Keras MobileNetV2 layer names)
CUTS = {
    13: "block_12_add",
    14: "block_13_project_BN",
    15: "block_14_add",
    16: "block_15_add",
    17: "block_16_project_BN",  # Conv_1 only
}
POOLED_SIZE = 1280
CACHE_FORMAT = 1  # bump when what is cached changes meaning


def build_backbone(size: int, weights: str):
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=1.0, include_top=False, weights=weights
    )


def split_backbone(base, first_block: int):
    """(trunk, top): trunk = image in [-1,1] -> activations at the cut; top = cut -> out_relu.
    BatchNorm layers of the top are frozen: fine-tuning calls it with training=False, so batch
    statistics of small CPU batches never replace ImageNet's moving averages."""
    import keras

    cut = base.get_layer(CUTS[first_block]).output
    trunk = keras.Model(base.input, cut, name="trunk")
    top = keras.Model(cut, base.output, name="top")
    for layer in base.layers:
        layer.trainable = False
    for layer in top.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
    return trunk, top


def to_backbone_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 -> the backbone's [-1, 1] scale, computed as the exported graph does (x/255*2-1)."""
    return (pixels.astype(np.float32) / np.float32(255.0)) * np.float32(2.0) - np.float32(1.0)


def cache_key(**parts) -> str:
    blob = json.dumps(parts | {"format": CACHE_FORMAT}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def frozen_activations(
    trunk,
    top,
    pixels: np.ndarray,
    views: int,
    seed: int,
    cache_path: Path | None,
    augment_rows: np.ndarray | None = None,
    batch: int = 128,
    progress: bool = True,
) -> dict:
    """Trunk activations (float16) and frozen pooled features (float32) for view 0 (the picture
    itself) and `views` augmented views of each row. Rows not in `augment_rows` (e.g. the test
    split) get only view 0; their augmented slots stay empty (mask False).

    Returns {"act": [N,1+views,h,w,c] f16, "pooled": [N,1+views,1280] f32, "mask": [N,1+views]}.
    """
    from training.augment import view

    if cache_path is not None and Path(cache_path).exists():
        with np.load(cache_path) as z:
            return {k: z[k] for k in ("act", "pooled", "mask")}
    n = len(pixels)
    mask = np.zeros((n, 1 + views), bool)
    mask[:, 0] = True
    rows = np.arange(n) if augment_rows is None else np.asarray(augment_rows)
    mask[rows, 1:] = True
    jobs = [(i, v) for i in range(n) for v in range(1 + views) if mask[i, v]]
    shape = tuple(int(d) for d in trunk.output.shape[1:])
    act = np.zeros((n, 1 + views, *shape), np.float16)
    pooled = np.zeros((n, 1 + views, POOLED_SIZE), np.float32)
    started = time.perf_counter()
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        imgs = np.stack(
            [
                pixels[i] if v == 0 else view(pixels[i], np.random.default_rng([seed, i, v]))
                for i, v in chunk
            ]
        )
        a = trunk.predict_on_batch(to_backbone_input(imgs))
        p = np.asarray(top.predict_on_batch(a)).mean(axis=(1, 2))
        a = np.asarray(a)
        for k, (i, v) in enumerate(chunk):
            act[i, v] = a[k]
            pooled[i, v] = p[k]
        if progress and (start // batch) % 20 == 0:
            done = start + len(chunk)
            rate = done / max(time.perf_counter() - started, 1e-6)
            print(f"   features {done}/{len(jobs)} views ({rate:.0f}/s)", flush=True)
    out = {"act": act, "pooled": pooled, "mask": mask}
    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache_path) + ".tmp.npz")
        np.savez(tmp, **out)
        tmp.replace(cache_path)
    return out


def pooled_features(model, pixels: np.ndarray, batch: int = 128) -> np.ndarray:
    """GAP of the backbone for uint8 pictures (no augmentation, no cache)."""
    out = []
    for start in range(0, len(pixels), batch):
        x = to_backbone_input(pixels[start : start + batch])
        out.append(np.asarray(model.predict_on_batch(x)).mean(axis=(1, 2)))
    return np.concatenate(out) if out else np.zeros((0, POOLED_SIZE), np.float32)
