"""Training, cross-validation and evaluation loops (Keras, CPU-friendly tf.data pipelines)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from training.augment import augment_fn
from training.models import ModelConfig, build_model, compile_for_training


@dataclass
class FitResult:
    model: object  # image -> [probabilities, embedding]
    history: dict  # per-epoch lists: loss, accuracy, val_loss, val_accuracy
    seconds: float


def dataset(pixels, labels, num_classes, batch_size, *, training, augment, seed):
    import tensorflow as tf

    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    ds = tf.data.Dataset.from_tensor_slices((pixels, onehot))
    if training:
        ds = ds.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(
        lambda x, y: (tf.cast(x, tf.float32) / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE
    )
    if training and augment:
        ds = ds.map(augment_fn(seed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def class_weights(labels, num_classes) -> dict[int, float]:
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


def fit(
    config: ModelConfig,
    num_classes: int,
    train_px,
    train_y,
    epochs: int,
    seed: int,
    val_px=None,
    val_y=None,
    verbose: int = 1,
) -> FitResult:
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(config, num_classes, seed=seed)
    steps = int(np.ceil(len(train_px) / config.batch_size))
    clf = compile_for_training(model, config, steps_per_epoch=steps, epochs=epochs)
    train_ds = dataset(
        train_px,
        train_y,
        num_classes,
        config.batch_size,
        training=True,
        augment=config.augment,
        seed=seed,
    )
    val_ds = None
    if val_px is not None:
        val_ds = dataset(val_px, val_y, num_classes, 64, training=False, augment=False, seed=seed)
    started = time.perf_counter()
    hist = clf.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        verbose=verbose,
        class_weight=class_weights(train_y, num_classes) if config.augment else None,
    )
    return FitResult(
        model,
        {k: [float(v) for v in vs] for k, vs in hist.history.items()},
        time.perf_counter() - started,
    )


def predict(model, pixels, batch_size: int = 128):
    probs, embs = [], []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size].astype(np.float32) / np.float32(255.0)
        p, e = model(batch, training=False)
        probs.append(np.asarray(p))
        embs.append(np.asarray(e))
    return np.concatenate(probs), np.concatenate(embs)


def metrics(y_true, probs, classes) -> dict:
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
    )

    y_pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "loss": float(log_loss(y_true, np.clip(probs, 1e-7, 1), labels=labels)),
        "macro_f1": float(
            f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)
        ),
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def cross_validate(
    config: ModelConfig,
    pixels,
    labels,
    classes,
    folds: int,
    epochs: int,
    seed: int,
    verbose: int = 1,
) -> dict:
    """Stratified k-fold over the deduplicated pool (one row per duplicate group)."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    results = []
    for fold, (tr, va) in enumerate(skf.split(pixels, labels)):
        fitted = fit(
            config,
            len(classes),
            pixels[tr],
            labels[tr],
            epochs,
            seed + fold,
            pixels[va],
            labels[va],
            verbose=verbose,
        )
        probs, _ = predict(fitted.model, pixels[va])
        m = metrics(labels[va], probs, classes)
        results.append(
            {
                "fold": fold,
                "history": fitted.history,
                "seconds": fitted.seconds,
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "recall": {c: m["per_class"][c]["recall"] for c in classes},
            }
        )
        print(
            f"  [{config.name}] fold {fold + 1}/{folds}: acc {m['accuracy']:.3f} "
            f"macro-F1 {m['macro_f1']:.3f} ({fitted.seconds:.0f}s)",
            flush=True,
        )
    acc = np.array([r["accuracy"] for r in results])
    f1 = np.array([r["macro_f1"] for r in results])
    val_acc = np.mean([r["history"]["val_accuracy"] for r in results], axis=0)
    return {
        "config": config.name,
        "folds": folds,
        "epochs": epochs,
        "accuracy_mean": float(acc.mean()),
        "accuracy_sd": float(acc.std(ddof=1) if folds > 1 else 0),
        "macro_f1_mean": float(f1.mean()),
        "macro_f1_sd": float(f1.std(ddof=1) if folds > 1 else 0),
        "mean_val_accuracy_per_epoch": [float(v) for v in val_acc],
        "best_epoch": int(np.argmax(val_acc) + 1),
        "fold_results": results,
    }
