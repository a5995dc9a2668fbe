"""The model v2 job (config mobilenet_v2): data, cross-source split, cached views, cross-validation
beside the reference CNN on the same folds, temperature scaling, final fine-tune, ONE ONNX graph,
evaluation of that ONNX file (and of the previously shipped model on the same pictures),
figures and the card. Called by training.__main__ once the backbone weights are checked.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from artlens.image import load_image, preprocessing_for
from training import data as data_mod
from training import evaluate as ev
from training import plots

# the sample's training_set is its own source for balancing: within drawings and engraving it is
# the only non-museum, non-book source the job has
EXTRA_SOURCE = "kaggle-sample-training_set"

CARD_TEXT = {
    "intended_use": [
        "Sorting photographs or scans of artworks into the five types the model knows "
        "(drawings, engraving, iconography, painting, sculpture) in a museum or collection tool, "
        "with a person reviewing the result; calibrated probabilities make low-confidence "
        "answers visible.",
        "Finding the same work again (a crop, a rescaled or re-encoded copy, another "
        "photograph) and close relatives in an indexed collection by cosine similarity of the "
        "embedding.",
    ],
    "out_of_scope": [
        "Attribution, authentication, dating or valuation of a work; legal or provenance "
        "decisions.",
        "Pictures that are not artworks (people, documents, screenshots): the model always "
        "answers one of its five types, with no 'none of these'.",
        "Surveillance or identification of people.",
        "Types or traditions absent from the training data (e.g. photography, textiles, "
        "non-Western art beyond the Kaggle icons and sculpture) without retraining.",
    ],
    "limitations": [
        "Sources are confounded with types: every training drawing is a Rijksmuseum scan, every "
        "engraving a plate from four Project Gutenberg books (mostly Gustave Doré's wood "
        "engravings, some Phiz etchings), while iconography, painting and sculpture come from "
        "the Kaggle 'art images' set. Augmentation (greyscale <-> colour, paper tone, margins, "
        "noise, crops) and source-balanced sampling fight the shortcut, and the cross-source "
        "check measures what is left, but on few pictures.",
        "Engraving bias: 'engraving' in practice means Doré-style black-and-white book "
        "illustration; other printmaking (colour woodcuts, mezzotints, modern prints) is "
        "under-represented and may be called drawings.",
        "Only ~660 distinct paintings after deduplication; many Kaggle files are duplicates.",
        "Copy retrieval is measured with synthetic copies (crop 3-10 % per side, rescale, "
        "JPEG, brighter); photographs at an angle, under glass or with reflections are harder.",
        "Input is resized to a square without keeping the aspect ratio, as the study did.",
    ],
    "licences": {
        "code": "this repository's licence",
        "backbone_weights": "Apache-2.0: ImageNet MobileNetV2 (alpha 1.0) from TF-slim's "
        "mobilenet_v2_1.0_224 checkpoint (tensorflow/models), as exported to Keras by "
        "JonathanCMitchell/mobilenet_v2_keras (MIT); the shipped ONNX file carries these "
        "weights, fine-tuned.",
        "data": {
            "drawings (Rijksmuseum), 43 paintings": "CC0 1.0 (Rijksmuseum open data)",
            "engraving (Project Gutenberg plates)": "public domain in the USA",
            "iconography, painting, sculpture (Kaggle art images; sample layout)": "as "
            "published on Kaggle (thedownhill/art-images-drawings-painting-sculpture-engraving)",
        },
    },
    "citation": {
        "model": "ArtLens model v2: MobileNetV2 fine-tuned for artwork type and copy retrieval "
        "(this repository, training/).",
        "backbone": "Sandler, M., Howard, A., Zhu, M., Zhmoginov, A., Chen, L.-C. (2018). "
        "MobileNetV2: Inverted Residuals and Linear Bottlenecks. CVPR 2018, 4510-4520.",
        "calibration": "Guo, C., Pleiss, G., Sun, Y., Weinberger, K. Q. (2017). On Calibration "
        "of Modern Neural Networks. ICML 2017.",
        "whitening": "Radenović, F., Tolias, G., Chum, O. (2018). Fine-tuning CNN Image "
        "Retrieval with No Human Annotation. IEEE TPAMI 41(7).",
    },
}


def display_path(path: Path) -> str:
    """A path as the card shows it: relative to the working directory when it can be."""
    import os

    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def log(msg: str, started: float) -> None:
    print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {msg}", flush=True)


def onnx_run(onnx_path: Path, pixels_u8: np.ndarray, threads: int = 2, batch: int = 64):
    """(probabilities, embedding) of uint8 pictures through the exported graph itself."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    probs, embs = [], []
    for s in range(0, len(pixels_u8), batch):
        x = pixels_u8[s : s + batch].astype(np.float32) / np.float32(255.0)
        p, e = sess.run(["probabilities", "embedding"], {"image": x})
        probs.append(p)
        embs.append(e)
    return np.concatenate(probs), np.concatenate(embs)


def copies_of(
    root: Path, paths: list[str], rows: np.ndarray, size: int, seed_offset: int = 0
) -> np.ndarray:
    """The user-style copy (evaluate.user_copy) of each row's original file, decoded as an
    upload is (artlens.image) at the model's input size. Seed = row (+ seed_offset for another
    copy): offset 0 is the copy the card's copy recall@1 is measured on."""
    out = []
    for i in rows:
        data = ev.user_copy((Path(root) / paths[i]).read_bytes(), seed=int(i) + seed_offset)
        out.append(data_mod.resize_to(load_image(data, size=size).rgb, size))
    return np.stack(out)


def main_rows(labels: np.ndarray, n_classes: int, per_class_limit: int | None, seed: int):
    """The pool rows a run uses: all, or at most per_class_limit per class (seeded), sorted."""
    if not per_class_limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    return np.sort(
        np.concatenate(
            [
                rng.permutation(np.nonzero(labels == c)[0])[:per_class_limit]
                for c in range(n_classes)
            ]
        )
    )


def per_type_accuracy(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    out = {}
    for c, name in enumerate(classes):
        sel = y == c
        out[name] = {
            "accuracy": float((pred[sel] == c).mean()) if sel.any() else None,
            "n": int(sel.sum()),
        }
    out["all"] = {"accuracy": float((pred == y).mean()) if len(y) else None, "n": int(len(y))}
    return out


def evaluate_artifact(
    onnx_path,
    test_px,
    test_y,
    gallery_px,
    gallery_y,
    copy_px,
    xs_px,
    xs_y,
    classes,
    temperature=None,
    keep: dict | None = None,
) -> dict:
    """Every test-side number from the ONNX file: classification, calibration, retrieval and the
    cross-source check. Gallery for copies = test + training pictures. `keep` (a dict) receives
    the gallery and copy embeddings, for the near-duplicate calibration."""
    from training.train import metrics

    probs, emb = onnx_run(onnx_path, test_px)
    _, g_emb = onnx_run(onnx_path, gallery_px)
    _, c_emb = onnx_run(onnx_path, copy_px)
    if keep is not None:
        keep |= {"gallery_embedding": g_emb, "copy_embedding": c_emb}
    out = {"test": metrics(test_y, probs, classes)}
    out["calibration"] = {"ece_15_bins": ev.ece(probs, test_y)}
    if temperature is not None:
        # the graph divides logits by T; log p * T recovers the unscaled softmax exactly
        raw = ev.softmax(np.log(np.clip(probs, 1e-30, 1)) * temperature)
        out["calibration"] |= {
            "temperature": temperature,
            "ece_15_bins_before": ev.ece(raw, test_y),
            "ece_15_bins_after": ev.ece(probs, test_y),
            "nll_before": ev.nll(np.log(np.clip(raw, 1e-30, 1)), test_y),
            "nll_after": ev.nll(np.log(np.clip(probs, 1e-30, 1)), test_y),
            "bins_before": ev.calibration_bins(raw, test_y),
            "bins_after": ev.calibration_bins(probs, test_y),
        }
    all_emb = np.concatenate([emb, g_emb])
    p5 = ev.type_precision_at_k(emb, test_y, g_emb, gallery_y, k=5)
    out["retrieval"] = {
        "copy_recall_at_1": ev.copy_recall_at_1(c_emb, all_emb, np.arange(len(emb))),
        "copy_queries": int(len(c_emb)),
        "gallery_for_copies": int(len(all_emb)),
        "type_precision_at_5": p5["mean"],
        "type_precision_at_5_per_type": {classes[c]: v for c, v in p5["per_class"].items()},
    }
    if xs_px is not None and len(xs_px):
        xp, _ = onnx_run(onnx_path, xs_px)
        out["cross_source"] = per_type_accuracy(xs_y, xp.argmax(axis=1), classes)
    return out, emb, probs


def reusable_cv(card_path: Path, checksum: str, args) -> dict:
    """The CNN configs' cross-validation from an earlier card, when its folds are exactly these
    (same data checksum, k, seed, test fraction and no per-class cap)."""
    if card_path is None or not Path(card_path).exists():
        return {}
    card = json.loads(Path(card_path).read_text())
    tr = card.get("training", {})
    same = (
        tr.get("data", {}).get("checksum") == checksum
        and tr.get("folds") == args.folds
        and tr.get("seed") == args.seed
        and tr.get("per_class_limit") == args.per_class_limit
        and card.get("metrics", {}).get("test_split", {}).get("fraction") == args.test_fraction
    )
    if not same:
        print(f"   {card_path}: other folds than this run's; its CV is not reused", flush=True)
        return {}
    return {
        # a result that was itself reused keeps the version that actually ran it
        name: {"reused_from_model_version": card["version"]} | cv
        for name, cv in card["metrics"]["cross_validation"].items()
        if name in ("reference", "improved")
    }


def run(args, weights: dict) -> int:  # noqa: C901 - one linear job, sectioned by log lines
    import keras
    import tensorflow as tf
    from sklearn.model_selection import StratifiedKFold

    from training.backbone import (
        CUTS,
        build_backbone,
        cache_key,
        frozen_activations,
        split_backbone,
        to_backbone_input,
    )
    from training.export import export_onnx, write_card
    from training.finetune import BackboneConfig, export_model, fit, run_cached, sample_weights
    from training.train import metrics

    started = time.perf_counter()
    verbose = 0 if args.quiet else 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.model_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    cfg = BackboneConfig(
        input_size=args.input_size,
        first_block=args.unfreeze_from,
        views=args.views,
        warmup_epochs=args.warmup_epochs,
        finetune_epochs=args.finetune_epochs,
        embedding_dim=args.embedding_dim,
        whitening=args.embedding,
        shrink=args.whitening_shrink,
        whitening_pairs=args.whitening_pairs,
        layout_weight=args.layout_weight,
        source_balance=args.source_balance,
        type_weight=args.type_weight,
        seed=args.seed,
    )
    size = cfg.input_size
    previous_serving: dict = {}
    if args.compare_card is not None and args.compare_card.exists():
        # copy the shipped model aside first: --model-dir may be where it lives
        import shutil

        keep = args.out / "shipped_before"
        keep.mkdir(parents=True, exist_ok=True)
        old = json.loads(args.compare_card.read_text())
        # serving settings set by hand on the shipped card (e.g. uncertainty) carry over;
        # duplicates is measured again below, for this model
        previous_serving = {k: v for k, v in old.get("serving", {}).items() if k != "duplicates"}
        shutil.copy2(args.compare_card.with_name(old["onnx_file"]), keep / old["onnx_file"])
        shutil.copy2(args.compare_card, keep / "artlens.json")
        args.compare_card = keep / "artlens.json"

    log(f"loading and cleaning {args.data} at {size} px", started)
    pool = data_mod.load_pool(
        args.data, cache_dir=args.cache_dir, progress=False, size=size, labels=args.labels
    )
    (args.out / "cleaning_report.json").write_text(json.dumps(pool.report, indent=2))
    print(data_mod.format_report(pool.report), flush=True)
    classes = pool.classes
    rows_main = main_rows(pool.labels, len(classes), args.per_class_limit, args.seed)
    pixels = pool.pixels[rows_main]
    labels = pool.labels[rows_main]
    paths = [pool.paths[i] for i in rows_main]
    hashes = data_mod.row_hashes(pool)[rows_main]
    sources = data_mod.row_sources(args.data, paths, default="data")
    plots.class_distribution(pool.report, args.out / "class_distribution.png")
    n_main = len(labels)
    train_idx, test_idx = data_mod.stratified_split(labels, args.test_fraction, args.seed)
    log(f"split: {len(train_idx)} train, {len(test_idx)} test (grouped, stratified)", started)

    # --- cross-source: validation_set never trains; training_set is a small extra source ---
    xs_px, xs_y, xs_report = None, None, None
    excluded = np.zeros(n_main, bool)
    extra_px = np.zeros((0, size, size, 3), np.uint8)
    extra_y = np.zeros(0, int)
    if args.cross_source is not None:
        xv, known_v, xs_y = cross_source_split(args, size, "validation_set", classes)
        xt, known_t, _ = cross_source_split(args, size, "training_set", classes)
        xv_hash = data_mod.row_hashes(xv)
        xs_px = xv.pixels[known_v]
        # anything that is a near copy of a cross-source validation picture is kept out of
        # fitting (main data and the sample's training_set alike), so the check stays unseen
        excluded = data_mod.near_copies_of(hashes, xv_hash)
        keep_t = known_t & ~data_mod.near_copies_of(data_mod.row_hashes(xt), xv_hash)
        if args.extra_training:
            extra_px = xt.pixels[keep_t]
            extra_y = np.array([classes.index(xt.classes[c]) for c in xt.labels[keep_t]], int)
        xs_report = {
            "root": display_path(args.cross_source),
            "validation_set": {
                "files": xv.report["totals"],
                "pictures": int(known_v.sum()),
                "per_type_n": {c: int((xs_y == i).sum()) for i, c in enumerate(classes)},
            },
            "training_set_used_for_training": int(len(extra_y)),
            "training_set_dropped_as_near_copies_of_validation": int((known_t & ~keep_t).sum()),
            "main_rows_kept_out_as_near_copies_of_validation": int(excluded.sum()),
        }
        log(
            f"cross-source: {len(xs_y)} validation pictures (never trained on), "
            f"{len(extra_y)} extra training pictures, {int(excluded.sum())} main rows kept out",
            started,
        )
    all_px = np.concatenate([pixels, extra_px])
    all_y = np.concatenate([labels, extra_y]).astype(int)
    all_src = list(sources) + [EXTRA_SOURCE] * len(extra_y)
    extra_rows = np.arange(n_main, len(all_y))
    n_cls = len(classes)

    def fit_rows(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([rows[~excluded[rows]], extra_rows])

    def weights_for(rows: np.ndarray) -> np.ndarray:
        w = np.zeros(len(all_y), np.float32)
        w[rows] = sample_weights(all_y[rows], [all_src[i] for i in rows], n_cls, cfg.source_balance)
        return w

    # --- frozen trunk activations of the picture + augmented views, cached ---
    base0 = build_backbone(size, weights["weights"])
    trunk, top = split_backbone(base0, cfg.first_block)
    key = cache_key(
        data=pool.report["data_checksum"],
        rows=int(n_main),
        extra=int(len(extra_y)),
        extra_sum=int(extra_px.sum(dtype=np.int64)),
        size=size,
        views=cfg.views,
        seed=args.seed,
        weights=weights["sha256"] or "imagenet",
        cut=CUTS[cfg.first_block],
    )
    t0 = time.perf_counter()
    cache = frozen_activations(
        trunk,
        top,
        all_px,
        cfg.views,
        args.seed,
        args.cache_dir / f"views-{key}.npz",
        augment_rows=np.concatenate([train_idx, extra_rows]),
        progress=not args.quiet,
    )
    seconds_features = time.perf_counter() - t0
    log(
        f"frozen activations: {int(cache['mask'].sum())} views {cache['act'].shape[2:]} "
        f"({seconds_features:.0f}s)",
        started,
    )
    del base0, trunk, top
    keras.backend.clear_session()

    # --- cross-validation on the same folds as the reference CNN (v1 card) ---
    cv_results = reusable_cv(args.baseline_cv, pool.report["data_checksum"], args)
    cv_v2 = None
    oof_logits = None
    if args.folds >= 2:
        skf = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
        oof_logits = np.zeros((len(train_idx), n_cls), np.float32)
        per_fold = []
        for fold, (tr, va) in enumerate(skf.split(np.zeros(len(train_idx)), labels[train_idx])):
            rows = fit_rows(train_idx[tr])
            va_rows = train_idx[va]
            fitted = fit(
                cfg,
                weights["weights"],
                cache,
                all_y,
                rows,
                weights_for(rows),
                n_cls,
                val_rows=va_rows,
                verbose=verbose,
            )
            logits, _ = run_cached(fitted.ft_model, cache["act"][va_rows, 0])
            oof_logits[va] = logits
            m = metrics(labels[va_rows], ev.softmax(logits), classes)
            per_fold.append(
                {
                    "fold": fold,
                    "accuracy": m["accuracy"],
                    "macro_f1": m["macro_f1"],
                    "recall": {c: m["per_class"][c]["recall"] for c in classes},
                    "seconds": fitted.seconds,
                    "history": fitted.history,
                }
            )
            log(
                f"[mobilenet_v2] fold {fold + 1}/{args.folds}: acc {m['accuracy']:.3f} "
                f"macro-F1 {m['macro_f1']:.3f} ({fitted.seconds:.0f}s)",
                started,
            )
            del fitted
            keras.backend.clear_session()
        acc = np.array([r["accuracy"] for r in per_fold])
        f1 = np.array([r["macro_f1"] for r in per_fold])
        val_acc = np.mean([r["history"]["val_accuracy"] for r in per_fold], axis=0)
        cv_v2 = {
            "config": "mobilenet_v2",
            "folds": args.folds,
            "epochs": cfg.warmup_epochs + cfg.finetune_epochs,
            "epochs_detail": f"{cfg.warmup_epochs} warm-up + {cfg.finetune_epochs} fine-tune",
            "accuracy_mean": float(acc.mean()),
            "accuracy_sd": float(acc.std(ddof=1)),
            "macro_f1_mean": float(f1.mean()),
            "macro_f1_sd": float(f1.std(ddof=1)),
            "mean_val_accuracy_per_epoch": [float(v) for v in val_acc],
            "best_epoch": int(np.argmax(val_acc) + 1),
            "fold_results": per_fold,
        }
        plots.learning_curves_v2(cv_v2, args.out / "learning_curves_mobilenet_v2.png")
        cv_results["mobilenet_v2"] = cv_v2

    # --- temperature: fitted on out-of-fold validation logits (never on test) ---
    if oof_logits is not None:
        temperature = ev.fit_temperature(oof_logits, labels[train_idx])
        oof_y = labels[train_idx]
        calib_val = {
            "fitted_on": f"out-of-fold validation logits of the {args.folds}-fold CV "
            f"({len(oof_y)} pictures)",
            "temperature": temperature,
            "ece_before": ev.ece(ev.softmax(oof_logits), oof_y),
            "ece_after": ev.ece(ev.softmax(oof_logits / temperature), oof_y),
        }
    else:
        temperature, calib_val = 1.0, {"fitted_on": "nothing (no CV): T = 1"}
    log(
        f"temperature {temperature:.3f} (validation ECE {calib_val.get('ece_before', 0):.4f} -> "
        f"{calib_val.get('ece_after', 0):.4f})",
        started,
    )

    # --- final fit on the whole training split ---
    rows = fit_rows(train_idx)
    final = fit(
        cfg, weights["weights"], cache, all_y, rows, weights_for(rows), n_cls, verbose=verbose
    )
    log(
        f"final fit on {len(rows)} pictures x {1 + cfg.views} views ({final.seconds:.0f}s)", started
    )
    _, pooled_clean = run_cached(final.ft_model, cache["act"][rows, 0])
    if cfg.whitening == "lw" and cfg.whitening_pairs == "copies":
        # (training picture, user-style copy) pairs: the whitening learns exactly the edits
        # the copy search must ignore. Main-data rows only (copies are made from the files).
        r_idx = np.nonzero(rows < n_main)[0]
        copy_px = copies_of(args.data, paths, rows[r_idx], size, ev.WHITENING_COPY_SEEDS)
        trunk, _ = split_backbone(build_backbone(size, weights["weights"]), cfg.first_block)
        copy_act = np.concatenate([
            np.asarray(trunk.predict_on_batch(to_backbone_input(copy_px[s : s + 128])))
            for s in range(0, len(copy_px), 128)
        ]).astype(np.float16)
        _, pooled_copies = run_cached(final.ft_model, copy_act)
        w, b = ev.fit_learned_whitening(
            pooled_clean, (pooled_clean[r_idx], pooled_copies), cfg.whitened_dim(n_cls),
            cfg.shrink,
        )
        log(f"whitening fitted on {len(r_idx)} (picture, copy) pairs", started)
    elif cfg.whitening == "lw":
        r_idx, v_idx = np.nonzero(cache["mask"][rows][:, 1:])
        _, pooled_views = run_cached(final.ft_model, cache["act"][rows[r_idx], v_idx + 1])
        w, b = ev.fit_learned_whitening(
            pooled_clean, (pooled_clean[r_idx], pooled_views), cfg.whitened_dim(n_cls), cfg.shrink
        )
    else:
        w, b = ev.fit_whitening(pooled_clean, cfg.whitened_dim(n_cls), cfg.whitening_power)
    model = export_model(final, cfg, temperature, w, b)

    log("export", started)
    onnx_path = args.model_dir / "artlens.onnx"
    parity_px = np.concatenate([pixels[test_idx], pixels[train_idx]])[:64]
    parity = export_onnx(model, onnx_path, parity_px.astype(np.float32) / np.float32(255.0))
    model.save(args.model_dir / "artlens.keras")

    log("evaluating the ONNX file on the test split, copies and the cross-source set", started)
    copy_px = copies_of(args.data, paths, test_idx, size)
    kept: dict = {}
    result, test_emb, test_probs = evaluate_artifact(
        onnx_path,
        pixels[test_idx],
        labels[test_idx],
        pixels[train_idx],
        labels[train_idx],
        copy_px,
        xs_px,
        xs_y,
        classes,
        temperature,
        keep=kept,
    )
    t = result["test"]
    log(
        f"test: accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f}, ECE "
        f"{result['calibration']['ece_15_bins_before']:.4f} -> "
        f"{result['calibration']['ece_15_bins_after']:.4f}, copy recall@1 "
        f"{result['retrieval']['copy_recall_at_1']:.4f}, type P@5 "
        f"{result['retrieval']['type_precision_at_5']:.4f}",
        started,
    )
    for cls, m in t["per_class"].items():
        print(
            f"   {cls:<12} precision {m['precision']:.3f} recall {m['recall']:.3f} "
            f"(n={m['support']})",
            flush=True,
        )
    if "cross_source" in result:
        print(
            "   cross-source: "
            + ", ".join(
                f"{c} {v['accuracy']:.2f} (n={v['n']})"
                for c, v in result["cross_source"].items()
                if v["accuracy"] is not None
            ),
            flush=True,
        )

    serving = dict(previous_serving)
    if len(test_idx) and len(train_idx):
        log("near-duplicate thresholds from the same copies (serving.duplicates)", started)
        serving["duplicates"] = near_duplicate_block(
            args, onnx_path, pixels, labels, paths, train_idx, test_idx, test_emb, kept, copy_px
        )
        dup = serving["duplicates"]
        print(
            f"   near duplicate: similarity >= {dup['min_similarity']:.2f} and dHash <= "
            f"{dup['max_hamming']} bits: copies flagged {dup['measured']['copy_flag_rate']:.2%}, "
            f"originals falsely flagged {dup['measured']['distinct_false_flag_rate']:.2%}; "
            f"related >= {dup['related_min_similarity']:.2f}",
            flush=True,
        )

    baseline = None
    if args.compare_card is not None and Path(args.compare_card).exists():
        baseline = compare_shipped(
            args, Path(args.compare_card), rows_main, train_idx, test_idx, paths, classes
        )

    log("figures", started)
    plots.confusion(t["confusion_matrix"], classes, args.out / "confusion_matrix.png")
    plots.reliability(result["calibration"], args.out / "reliability_diagram.png")
    view = plots.embedding_view(
        test_emb,
        labels[test_idx],
        classes,
        args.out / "embeddings_3d.html",
        args.out / "embeddings_3d.png",
    )
    occ_rows = plots.pick_per_class(labels[test_idx], test_probs, per_class=2, seed=args.seed)
    plots.occlusion(
        onnx_path,
        pixels[test_idx][occ_rows],
        labels[test_idx][occ_rows],
        classes,
        args.out / "occlusion.png",
    )
    if xs_px is not None and len(xs_px):
        xs_rows = plots.pick_per_class(xs_y, None, per_class=1, seed=args.seed)
        plots.occlusion(
            onnx_path,
            xs_px[xs_rows],
            xs_y[xs_rows],
            classes,
            args.out / "occlusion_cross_source.png",
        )

    tradeoff = None
    if args.tradeoff is not None and Path(args.tradeoff).exists():
        tradeoff = json.loads(Path(args.tradeoff).read_text())

    elapsed = time.perf_counter() - started
    cv_summary = {}
    for name, cv in cv_results.items():
        cv_summary[name] = (
            {k: v for k, v in cv.items() if k != "fold_results"}
            | {
                "per_fold": [
                    {k: r[k] for k in ("fold", "accuracy", "macro_f1", "recall", "seconds")}
                    for r in cv["fold_results"]
                ]
            }
            if "fold_results" in cv
            else cv
        )
    metrics_out = {
        "cross_validation": cv_summary,
        "test": t,
        "test_split": {
            "fraction": args.test_fraction,
            "pictures": int(len(test_idx)),
            "grouped_by": f"pHash <= {data_mod.NEAR_DUPLICATE_BITS} bits (one picture per "
            "near-duplicate group)",
        },
        "calibration": {k: v for k, v in result["calibration"].items()} | {"validation": calib_val},
        "retrieval": result["retrieval"],
        "cross_source": {"per_type": result.get("cross_source"), **(xs_report or {})},
        "shipped_baseline": baseline,
    }
    card = write_card(
        args.model_dir / "artlens.json",
        onnx_path,
        name="artlens",
        version=args.version or args.default_version,
        classes=classes,
        input_size=size,
        embedding_size=cfg.embedding_dim,
        # serving checks `scale` verbatim; the backbone's [-1,1] mapping is inside the graph
        preprocessing=preprocessing_for(size)
        | {"in_graph": "x * 2 - 1 (MobileNetV2's [-1, 1]) is the graph's first layer"},
        extra={
            "architecture": {
                "config": "mobilenet_v2",
                "notes": cfg.notes(),
                "backbone": "MobileNetV2 alpha 1.0 (Sandler et al. 2018)",
                "fine_tuned_from": CUTS[cfg.first_block],
                "temperature": temperature,
                "embedding": {
                    "text": cfg.embedding_text(),
                    "method": cfg.whitening,
                    "whitened_dim": int(w.shape[1]),
                    "layout_weight": cfg.layout_weight,
                    "type_weight": cfg.type_weight,
                    "dim": cfg.embedding_dim,
                    "power": cfg.whitening_power,
                    "shrink": cfg.shrink,
                },
            },
            "metrics": metrics_out,
            "design_tradeoff": tradeoff,
            "export_parity": parity,
            "keras_file": "artlens.keras",
            "embedding_view": view,
            **CARD_TEXT,
            **({"serving": serving} if serving else {}),
            "training": {
                "data": data_mod.card_data(args.data, pool.report)
                | {"extra_source": EXTRA_SOURCE if len(extra_y) else None},
                "backbone_weights": {k: weights[k] for k in ("sha256", "source")}
                | {"file": Path(str(weights["weights"])).name},
                "views_per_picture": cfg.views,
                "warmup_epochs": cfg.warmup_epochs,
                "finetune_epochs": cfg.finetune_epochs,
                "epochs": cfg.warmup_epochs + cfg.finetune_epochs,
                "seed": args.seed,
                "folds": args.folds,
                "cv_epochs": cfg.warmup_epochs + cfg.finetune_epochs,
                "per_class_limit": args.per_class_limit,
                "seconds_total": round(elapsed, 1),
                "seconds_features": round(seconds_features, 1),
                "seconds_final_fit": round(final.seconds, 1),
                "machine": args.machine,
                "libraries": {"tensorflow": tf.__version__, "keras": keras.__version__},
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        },
    )
    (args.out / "metrics.json").write_text(json.dumps(card["metrics"], indent=2))
    log(
        f"done: {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB), version {card['version']}",
        started,
    )
    return 0


def near_duplicate_block(
    args, onnx_path, pixels, labels, paths, train_idx, test_idx, test_emb, kept, copy_px
) -> dict:
    """serving.duplicates for the card (training.duplicates), from the evaluation's own
    embeddings: the test pictures, their copies (the copy recall@1 ones) and test + training
    pictures as the gallery; plus a re-encoded copy of each test picture as a check."""
    from training import duplicates

    size = pixels.shape[1]
    return duplicates.calibrate_arrays(
        onnx_path,
        np.concatenate([test_emb, kept["gallery_embedding"]]),
        np.concatenate([pixels[test_idx], pixels[train_idx]]),
        np.concatenate([labels[test_idx], labels[train_idx]]),
        len(test_idx),
        kept["copy_embedding"],
        copy_px,
        np.arange(len(test_idx)),
        reencoded_px=duplicates.reencoded_copies(args.data, paths, test_idx, size),
        note=f" (1 copy each; gallery of {len(test_idx) + len(train_idx)} test + training "
        "pictures; measured by the training run)",
        names=[paths[i] for i in np.concatenate([test_idx, train_idx])],
    )[0]


def cross_source_split(args, size: int, split: str, classes) -> tuple:
    """One split of the cross-source folder at `size`: (pool, rows of known classes, labels
    in this model's class order)."""
    pool = data_mod.load_pool(
        args.cross_source, cache_dir=args.cache_dir, progress=False, size=size, split=split
    )
    known = np.array([pool.classes[c] in classes for c in pool.labels], bool)
    labels = np.array([classes.index(pool.classes[c]) for c in pool.labels[known]], int)
    return pool, known, labels


def compare_shipped(args, card_path, rows_main, train_idx, test_idx, paths, classes) -> dict:
    """The previously shipped model on exactly the same test pictures, copies, gallery and
    cross-source set (at its own input size), for the side-by-side table."""
    card = json.loads(card_path.read_text())
    if list(card["classes"]) != list(classes):
        return {"skipped": "other classes"}
    size = int(card["input"]["shape"][1])
    # the same labels, so the rows (and the split drawn from them) are this run's
    pool = data_mod.load_pool(
        args.data, cache_dir=args.cache_dir, progress=False, size=size, labels=args.labels
    )
    px, y = pool.pixels[rows_main], pool.labels[rows_main]
    xs_px = xs_y = None
    if args.cross_source is not None:
        xv, known, xs_y = cross_source_split(args, size, "validation_set", classes)
        xs_px = xv.pixels[known]
    copy_px = copies_of(args.data, paths, test_idx, size)
    res, _, _ = evaluate_artifact(
        card_path.with_name(card["onnx_file"]),
        px[test_idx],
        y[test_idx],
        px[train_idx],
        y[train_idx],
        copy_px,
        xs_px,
        xs_y,
        classes,
    )
    res["version"] = card["version"]
    res["config"] = card.get("architecture", {}).get("config")
    t = res["test"]
    print(
        f"   shipped {card['version']}: test accuracy {t['accuracy']:.4f}, macro-F1 "
        f"{t['macro_f1']:.4f}, copy recall@1 {res['retrieval']['copy_recall_at_1']:.4f}, "
        f"type P@5 {res['retrieval']['type_precision_at_5']:.4f}",
        flush=True,
    )
    return res
