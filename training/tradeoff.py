"""python -m training.tradeoff: the measurement that chose model v2's input size and embedding.

For each input size, on FROZEN ImageNet features (fine-tuning moves every size alike, and frozen
features cost one forward pass per picture): a logistic-regression head's test accuracy, copy
recall@1 and type precision@5 of each embedding variant (raw pooled features, PCA-whitening to
128/256/512 dimensions, full or square-root whitening, learned whitening on (picture,
augmentation view) or (picture, user-style copy) pairs, with the layout and type parts the job
can append), and the latency of the exported ONNX
graph at batch 1 on one thread. Same grouped test split and copies as the training job.
Writes a JSON table (the card carries it) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from training import data as data_mod  # noqa: E402
from training import evaluate as ev  # noqa: E402
from training.v2 import copies_of  # noqa: E402 - the training job's own copies
from training.weights import resolve_backbone_weights  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.tradeoff", description=__doc__)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--sizes", default="160,192,224")
    p.add_argument("--dims", default="128,256,512")
    p.add_argument("--backbone-weights", default=None)
    p.add_argument("--cache-dir", type=Path, default=Path(".artlens/cache"))
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out/tradeoff.json"))
    return p.parse_args(argv)


def cached(path: Path, compute):
    if path.exists():
        return np.load(path)
    arr = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return arr


def onnx_latency_ms(model, size: int, path: Path, runs: int = 100) -> tuple[float, float]:
    """(median, fastest) batch-1 latency in ms of the exported graph on one intra-op thread (as
    on a Lambda core). The machine is shared: the fastest run is the least disturbed one."""
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def serve(image):
        p, e = model(image, training=False)
        return {"probabilities": p, "embedding": e}

    tf2onnx.convert.from_function(serve, input_signature=spec, opset=17, output_path=str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, size, size, 3), np.float32)
    for _ in range(10):
        sess.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000), float(np.min(times) * 1000)


def graph_for_latency(base, size: int, dim: int, classes: int):
    """Backbone + GAP + the heads at their real shapes (weights irrelevant for latency)."""
    import keras
    from keras import layers

    inp = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(2.0, offset=-1.0)(inp)
    pooled = layers.GlobalAveragePooling2D()(base(x, training=False))
    probs = layers.Softmax()(layers.Dense(classes)(pooled))
    emb = layers.UnitNormalization()(layers.Dense(dim)(layers.UnitNormalization()(pooled)))
    return keras.Model(inp, [probs, emb])


def main(argv=None) -> int:
    args = parse_args(argv)
    weights = resolve_backbone_weights(args.backbone_weights)
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from training.augment import view
    from training.backbone import build_backbone, pooled_features

    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        pool = data_mod.load_pool(args.data, cache_dir=args.cache_dir, progress=False, size=size)
        train, _test = data_mod.stratified_split(pool.labels, args.test_fraction, args.seed)
        # decide on a validation split carved from the training split: the test split is only
        # ever used for the final model's report
        tr_pos, va_pos = data_mod.stratified_split(pool.labels[train], 0.15, args.seed)
        tr, va = train[tr_pos], train[va_pos]
        pair_rows = np.random.default_rng(args.seed).permutation(tr)[:2000]
        keras.utils.set_random_seed(args.seed)
        base = build_backbone(size, weights["weights"])
        tag = f"{pool.report['data_checksum'][-16:]}-{size}"
        feats = cached(
            args.cache_dir / f"tradeoff-feats-{tag}.npy",
            lambda base=base, pool=pool: pooled_features(base, pool.pixels),
        )
        copy_feats = cached(
            args.cache_dir / f"tradeoff-valcopies-{tag}.npy",
            lambda base=base, pool=pool, va=va, size=size: pooled_features(
                base, copies_of(args.data, pool.paths, va, size)
            ),
        )
        view_feats = cached(
            args.cache_dir / f"tradeoff-views-{tag}.npy",
            lambda base=base, pool=pool, rows=pair_rows: pooled_features(
                base,
                np.stack(
                    [
                        view(pool.pixels[i], np.random.default_rng([args.seed, int(i), 1]))
                        for i in rows
                    ]
                ),
            ),
        )
        # (training picture, user-style copy) pairs for the learned whitening: the same
        # training pictures, copies with seeds no evaluation copy uses
        pair_copy_feats = cached(
            args.cache_dir / f"tradeoff-paircopies-{tag}.npy",
            lambda base=base, pool=pool, rows=pair_rows, size=size: pooled_features(
                base, copies_of(args.data, pool.paths, rows, size, ev.WHITENING_COPY_SEEDS)
            ),
        )
        pairs = {"lw": (feats[pair_rows], view_feats), "lwc": (feats[pair_rows], pair_copy_feats)}
        seconds_features = time.perf_counter() - t0
        y = pool.labels
        xn = ev.l2n(feats)
        clf = LogisticRegression(C=2.0, max_iter=3000, class_weight="balanced")
        clf.fit(xn[tr], y[tr])
        pred = clf.predict(xn[va])
        acc = float(accuracy_score(y[va], pred))
        f1 = float(f1_score(y[va], pred, average="macro"))
        # gallery = every training-split picture; each validation copy's original is its row
        gallery = np.concatenate([va, tr])
        target = np.arange(len(va))
        variants = {"raw-1280": (feats, copy_feats)}
        for dim in dims:
            for power in (0.5, 1.0):
                w, b = ev.fit_whitening(feats[tr], dim, power)
                variants[f"pcaw{power:g}-{dim}"] = (
                    ev.apply_whitening(feats, w, b),
                    ev.apply_whitening(copy_feats, w, b),
                )
            for shrink in (0.1, 0.3):
                for method, pair in pairs.items():
                    w, b = ev.fit_learned_whitening(feats[tr], pair, dim, shrink)
                    variants[f"{method}{shrink:g}-{dim}"] = (
                        ev.apply_whitening(feats, w, b),
                        ev.apply_whitening(copy_feats, w, b),
                    )
        # the combinations the job can bake in: learned whitening + the 8x8 layout descriptor
        # + the class probabilities, at the same TOTAL dimensions as above
        copy_px = copies_of(args.data, pool.paths, va, size)
        lay_g, lay_q = ev.layout_descriptor(pool.pixels), ev.layout_descriptor(copy_px)
        prob_g, prob_q = clf.predict_proba(xn), clf.predict_proba(ev.l2n(copy_feats))
        n_cls = len(pool.classes)
        for dim in dims:
            for method, pair in pairs.items():
                for beta, gamma in ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0)):
                    wd = dim - (ev.LAYOUT_GRID**2 if beta else 0) - (n_cls if gamma else 0)
                    w, b = ev.fit_learned_whitening(feats[tr], pair, wd, 0.3)
                    variants[f"{method}0.3+layout{beta:g}+type{gamma:g}-{dim}"] = (
                        ev.combined_embedding(
                            ev.apply_whitening(feats, w, b), lay_g, prob_g, beta, gamma
                        ),
                        ev.combined_embedding(
                            ev.apply_whitening(copy_feats, w, b), lay_q, prob_q, beta, gamma
                        ),
                    )
        for name, (g, q) in variants.items():
            g, q = ev.l2n(g), ev.l2n(q)
            recall = ev.copy_recall_at_1(q, g[gallery], target)
            p5 = ev.type_precision_at_k(g[va], y[va], g[tr], y[tr], k=5)
            rows.append(
                {
                    "input_size": size,
                    "embedding": name,
                    "accuracy_logreg": acc,
                    "macro_f1_logreg": f1,
                    "copy_recall_at_1": recall,
                    "type_precision_at_5": p5["mean"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        for dim in dims:
            lat, lat_min = onnx_latency_ms(
                graph_for_latency(base, size, dim, len(pool.classes)),
                size,
                args.cache_dir / f"latency-{size}-{dim}.onnx",
            )
            for r in rows:
                if r["input_size"] == size and r["embedding"].endswith(f"-{dim}"):
                    r["latency_ms_batch1_1thread"] = lat
                    r["latency_ms_batch1_1thread_fastest"] = lat_min
            print(f"size {size} dim {dim}: {lat:.2f} ms (fastest {lat_min:.2f})", flush=True)
        print(f"size {size}: features in {seconds_features:.0f}s", flush=True)
    result = {
        "what": "frozen MobileNetV2 features; logistic-regression head; measured on a validation "
        "split (15 % of the training split, grouped), never the test split; copy = "
        "evaluate.user_copy() of each validation picture, gallery = validation + training "
        "pictures; pcaw<power>-<D> = PCA-whitening, lw<shrink>-<D> = learned whitening on "
        "(picture, augmented view) pairs, lwc<shrink>-<D> = on (training picture, user-style "
        "copy) pairs (2,000 training pictures, copy seeds no evaluation uses); latency = ONNX "
        "Runtime, batch 1, one thread",
        "weights_sha256": weights["sha256"],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
