"""Model v2 training: head warm-up on frozen MobileNetV2 features, then fine-tuning of the top
blocks on cached trunk activations of augmented views, and the export graph that bakes in the
[-1,1] input scaling, the temperature and the PCA-whitening of the embedding.

Rows and views: every training picture has view 0 (itself) and `views` augmented views
(training.augment.view); the frozen trunk's activations of all of them are cached
(training.backbone.frozen_activations), so every epoch of warm-up and fine-tuning costs only the
top blocks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from training.evaluate import LAYOUT_GRID


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "mobilenet_v2"
    input_size: int = 160
    first_block: int = 14  # first fine-tuned block (14: blocks 14-16 + Conv_1)
    views: int = 3  # augmented views per training picture (plus the picture itself)
    warmup_epochs: int = 12
    finetune_epochs: int = 3
    warmup_lr: float = 1e-3
    finetune_lr: float = 2e-4  # low: the pretrained filters move a little, not relearn
    batch_size: int = 64
    label_smoothing: float = 0.05
    dropout: float = 0.2
    weight_decay: float = 1e-4
    embedding_dim: int = 256  # total: whitened part + layout (grid^2) + classes
    layout_weight: float = 0.5  # weight of the 8x8 grey layout descriptor (0 = off)
    whitening: str = "lw"  # "lw": learned whitening on (picture, copy) pairs; "pcaw": PCA-whitening
    whitening_power: float = 1.0  # pcaw only
    shrink: float = 0.3  # lw only
    # lw only: what a pair's second picture is. "copies": a user-style copy of a training picture
    # (evaluate.user_copy with seeds the evaluation never uses); "views": a training
    # augmentation view (training.augment.view), as model v2's first card.
    whitening_pairs: str = "copies"
    type_weight: float = 0.5  # weight of the class probabilities appended to the embedding
    source_balance: str = "sqrt"
    seed: int = 0

    def notes(self) -> str:
        return (
            f"ImageNet MobileNetV2 (alpha 1.0) at {self.input_size} px; [0,1] input rescaled to "
            "[-1,1] inside the graph; GAP 1280-d; head Dense(C) warmed up "
            f"{self.warmup_epochs} epochs on frozen features of {self.views} augmented views + the "
            f"picture, then block {self.first_block}.. and Conv_1 fine-tuned {self.finetune_epochs}"
            f" epochs (AdamW {self.finetune_lr:g}, cosine decay, BatchNorm frozen in inference "
            f"mode), label smoothing {self.label_smoothing:g}, sample weights balanced over "
            f"classes and, within a class, over sources ({self.source_balance}); probabilities "
            "temperature-scaled (T fitted on out-of-fold validation logits); embedding = "
            f"{self.embedding_text()}, L2-normalised."
        )

    def embedding_text(self) -> str:
        if self.whitening == "lw":
            second = ("user-style copy (crop, rescale, brighter, JPEG)"
                      if self.whitening_pairs == "copies" else "augmented view")
            how = (
                f"learned whitening (shrink {self.shrink:g}) of the L2-normalised pooled "
                f"features, fitted on (training picture, {second}) pairs"
            )
        else:
            how = f"PCA-whitening (power {self.whitening_power:g}) of the L2-normalised pooled"
        text = f"{how}"
        if self.layout_weight:
            text += (
                f", + the {LAYOUT_GRID}x{LAYOUT_GRID} grey layout (mean-free, L2) x "
                f"{self.layout_weight:g} (copies keep their composition)"
            )
        if self.type_weight:
            text += (
                f", + the C class probabilities x {self.type_weight:g} (neighbours share the type)"
            )
        return text + f"; {self.embedding_dim} dimensions in all"

    def whitened_dim(self, num_classes: int) -> int:
        extra = (LAYOUT_GRID**2 if self.layout_weight else 0) + (
            num_classes if self.type_weight else 0
        )
        if self.embedding_dim - extra < 16:
            raise ValueError(f"embedding_dim {self.embedding_dim} leaves no room for features")
        return self.embedding_dim - extra


def sample_weights(
    labels: np.ndarray, sources: list[str], num_classes: int, balance: str = "sqrt"
) -> np.ndarray:
    """Each class weighs the same in total; within a class the sources share its weight in
    proportion to the square root of their size ("sqrt": a few Kaggle drawings count ~20x their
    share beside 2,000 Rijksmuseum scans without dominating) or equally ("equal": measured
    worse on the test split and no better on the cross-source set)."""
    labels = np.asarray(labels)
    src = np.asarray(sources)
    w = np.zeros(len(labels), np.float64)
    for c in range(num_classes):
        in_c = labels == c
        if not in_c.any():
            continue
        names, counts = np.unique(src[in_c], return_counts=True)
        sizes = np.ones(len(counts)) if balance == "equal" else np.sqrt(counts)
        share = sizes / sizes.sum()
        for name, n, s in zip(names, counts, share, strict=True):
            w[in_c & (src == name)] = s / n
    return (w / w.mean()).astype(np.float32)


@dataclass
class Fitted:
    base: object  # the fine-tuned Keras MobileNetV2 (uncut)
    head: object  # the Dense(C) logits layer
    ft_model: object  # cached activations -> [logits, pooled]
    history: dict
    seconds: float


def _views_of(rows: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row index, view index) of every existing view of `rows`."""
    r, v = np.nonzero(mask[rows])
    return rows[r], v


def fit(
    config: BackboneConfig,
    weights: str,
    cache: dict,
    labels: np.ndarray,
    rows: np.ndarray,
    row_weight: np.ndarray,
    num_classes: int,
    val_rows: np.ndarray | None = None,
    verbose: int = 0,
) -> Fitted:
    """Warm up the head on frozen pooled features of `rows`' views, then fine-tune the top."""
    import keras
    import tensorflow as tf
    from keras import layers

    from training.backbone import build_backbone, split_backbone

    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    base = build_backbone(config.input_size, weights)
    _, top = split_backbone(base, config.first_block)
    r, v = _views_of(rows, cache["mask"])
    order = np.random.default_rng(config.seed).permutation(len(r))
    r, v = r[order], v[order]
    y = np.eye(num_classes, dtype=np.float32)[labels[r]]
    sw = row_weight[r]
    has_val = val_rows is not None and len(val_rows) > 0
    history = {"phase": [], "accuracy": [], "loss": [], "val_accuracy": [], "val_loss": []}

    # 1) warm-up: Dense(C) on frozen pooled features (seconds per epoch)
    head = layers.Dense(num_classes, name="logits")
    feats_in = keras.Input((cache["pooled"].shape[-1],))
    warm = keras.Model(feats_in, head(layers.Dropout(config.dropout)(feats_in)))
    loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=config.label_smoothing
    )
    warm.compile(
        optimizer=keras.optimizers.AdamW(config.warmup_lr, weight_decay=config.weight_decay),
        loss=loss,
        metrics=["accuracy"],
    )
    val_feats = None
    if has_val:
        val_feats = (
            cache["pooled"][val_rows, 0],
            np.eye(num_classes, dtype=np.float32)[labels[val_rows]],
        )
    h = warm.fit(
        cache["pooled"][r, v],
        y,
        sample_weight=sw,
        batch_size=256,
        epochs=config.warmup_epochs,
        validation_data=val_feats,
        verbose=verbose,
    )
    for k in ("accuracy", "loss", "val_accuracy", "val_loss"):
        history[k] += [float(x) for x in h.history.get(k, [])]
    history["phase"] += ["warm-up"] * config.warmup_epochs

    # 2) fine-tune the top blocks + head on cached trunk activations, BatchNorm in inference mode
    act_in = keras.Input(cache["act"].shape[2:], name="trunk_activations")
    pooled = layers.GlobalAveragePooling2D()(top(act_in, training=False))
    logits = head(layers.Dropout(config.dropout)(pooled))
    train_model = keras.Model(act_in, logits)
    ft_model = keras.Model(act_in, [head(pooled), pooled])
    if config.finetune_epochs > 0:
        steps = int(np.ceil(len(r) / config.batch_size)) * config.finetune_epochs
        train_model.compile(
            optimizer=keras.optimizers.AdamW(
                keras.optimizers.schedules.CosineDecay(config.finetune_lr, steps, alpha=0.05),
                weight_decay=config.weight_decay,
            ),
            loss=loss,
            metrics=["accuracy"],
        )
        act = cache["act"]
        # materialised once (float16, ~8 KB a view at 160 px) and reshuffled every epoch
        ds = (
            tf.data.Dataset.from_tensor_slices((act[r, v], y, sw))
            .shuffle(len(r), seed=config.seed, reshuffle_each_iteration=True)
            .batch(config.batch_size)
            .map(lambda a, yy, ww: (tf.cast(a, tf.float32), yy, ww))
            .prefetch(4)
        )
        val_ds = None
        if has_val:
            val_ds = (
                act[val_rows, 0].astype(np.float32),
                np.eye(num_classes, dtype=np.float32)[labels[val_rows]],
            )
        h = train_model.fit(
            ds, epochs=config.finetune_epochs, validation_data=val_ds, verbose=verbose
        )
        for k in ("accuracy", "loss", "val_accuracy", "val_loss"):
            history[k] += [float(x) for x in h.history.get(k, [])]
        history["phase"] += ["fine-tune"] * config.finetune_epochs
    return Fitted(base, head, ft_model, history, time.perf_counter() - started)


def run_cached(ft_model, act: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, pooled) of cached activations through the fine-tuned top."""
    logits, pooled = [], []
    for s in range(0, len(act), batch):
        lg, pl = ft_model.predict_on_batch(act[s : s + batch].astype(np.float32))
        logits.append(np.asarray(lg))
        pooled.append(np.asarray(pl))
    return np.concatenate(logits), np.concatenate(pooled)


def layout_weights(size: int, grid: int = LAYOUT_GRID) -> np.ndarray:
    """Fixed [grid*grid*3, grid*grid] matrix: channel mean (grey) then minus the raster mean."""
    n = grid * grid
    centre = np.eye(n, dtype=np.float32) - np.float32(1.0 / n)
    return np.repeat(centre, 3, axis=0) / np.float32(3.0)  # row (k, c) = centre[k] / 3


def export_model(fitted: Fitted, config: BackboneConfig, temperature: float, w, b):
    """image [N,S,S,3] in [0,1] -> [probabilities (temperature-scaled), embedding (L2)].

    embedding = l2n([l2n(whitened pooled), layout_weight * layout, type_weight * probabilities])
    (evaluate.combined_embedding is its numpy twin)."""
    import keras
    from keras import layers

    size = config.input_size
    inp = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(2.0, offset=-1.0, name="to_backbone_scale")(inp)  # MobileNetV2's [-1,1]
    pooled = layers.GlobalAveragePooling2D(name="pooled")(fitted.base(x, training=False))
    scaled = layers.Rescaling(1.0 / temperature, name="temperature")(fitted.head(pooled))
    probabilities = layers.Softmax(name="probabilities")(scaled)
    whiten = layers.Dense(w.shape[1], name="whitening", trainable=False)
    parts = [
        layers.UnitNormalization(name="whitened_l2")(
            whiten(layers.UnitNormalization(name="pooled_l2")(pooled))
        )
    ]
    layout = None
    if config.layout_weight:
        cell = size // LAYOUT_GRID
        raster = layers.AveragePooling2D(cell, name="layout_raster")(
            layers.Cropping2D(((0, size - cell * LAYOUT_GRID), (0, size - cell * LAYOUT_GRID)))(inp)
            if size % LAYOUT_GRID
            else inp
        )
        layout = layers.Dense(
            LAYOUT_GRID**2, use_bias=False, name="layout_grey_centred", trainable=False
        )
        parts.append(
            layers.Rescaling(config.layout_weight, name="layout_weight")(
                layers.UnitNormalization(name="layout_l2")(
                    layout(layers.Flatten(name="layout_flat")(raster))
                )
            )
        )
    if config.type_weight:
        parts.append(layers.Rescaling(config.type_weight, name="type_weight")(probabilities))
    joined = layers.Concatenate(name="joined")(parts) if len(parts) > 1 else parts[0]
    embedding = layers.UnitNormalization(name="embedding")(joined)
    whiten.set_weights([w, b])
    if layout is not None:
        layout.set_weights([layout_weights(size)])
    return keras.Model(inp, [probabilities, embedding], name=f"artlens_{config.name}")
