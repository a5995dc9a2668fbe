"""make train DATA=<folder>: clean, explore, cross-validate, train, evaluate, export, document.

Default config mobilenet_v2 (model v2): ImageNet MobileNetV2 backbone, head warm-up on cached
frozen features of augmented views, fine-tuning of the top blocks, temperature scaling, a
whitened retrieval embedding; evaluated on the grouped test split, on user-style copies and on
a cross-source set that never trains. The seed's CNN configs (reference, improved) remain.

Outputs (default out/training/, git-ignored): cleaning_report.json, class_distribution.png,
learning_curves_<config>.png, confusion_matrix.png, reliability_diagram.png, occlusion*.png,
embeddings_3d.html (self-contained), embeddings_3d.png, metrics.json. Shipped artifact (default
models/): artlens.onnx + artlens.json (the model card) + artlens.keras.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from training import data as data_mod  # noqa: E402
from training import plots  # noqa: E402
from training.export import export_onnx, write_card  # noqa: E402
from training.models import CONFIGS  # noqa: E402
from training.weights import SHARED_WEIGHTS, BackboneWeightsError, resolve_backbone_weights  # noqa: E402

BACKBONE_CONFIGS = ("mobilenet_v2",)
REPO = Path(__file__).resolve().parent.parent
CROSS_SOURCE_DEFAULT = REPO.parent / "shared/datasets/art-sample-kaggle-layout"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="dataset root (any accepted layout)")
    p.add_argument(
        "--labels",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="curator labels (the CSV of make export-labels; repeatable): a listed picture that "
        "is in the data takes the curator's type, any other is added under it; rows with a "
        "missing file or a type the data has no folder for are reported and skipped",
    )
    p.add_argument("--out", type=Path, default=Path("out/training"), help="reports and figures")
    p.add_argument(
        "--model-dir", type=Path, default=Path("models"), help="where the ONNX + card go"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(".artlens/cache"),
        help="decoded arrays, keyed by the data checksum",
    )
    p.add_argument(
        "--configs",
        default="mobilenet_v2",
        help="configs: mobilenet_v2 (default, model v2) or the seed's CNNs reference,improved",
    )
    p.add_argument("--ship", default=None, help="CNN config to ship (default: best CV macro-F1)")
    p.add_argument("--folds", type=int, default=3, help="k for stratified k-fold (0 = skip CV)")
    p.add_argument(
        "--cv-epochs", type=int, default=20, help="CNN configs: epochs per fold (learning curves)"
    )
    v2 = p.add_argument_group("mobilenet_v2 (model v2)")
    v2.add_argument(
        "--backbone-weights",
        default=None,
        help=f"Keras MobileNetV2 no-top .weights.h5 (default: {SHARED_WEIGHTS}, SHA-256 "
        "checked) or 'imagenet' (Keras download; needs internet)",
    )
    v2.add_argument("--input-size", type=int, default=160, choices=(96, 128, 160, 192, 224))
    v2.add_argument(
        "--embedding-dim",
        type=int,
        default=256,
        help="embedding dimensions in all (whitened features + 64 layout + C type)",
    )
    v2.add_argument(
        "--embedding",
        choices=("lw", "pcaw"),
        default="lw",
        help="lw: learned whitening on pairs (--whitening-pairs); pcaw: PCA-whitening",
    )
    v2.add_argument("--whitening-shrink", type=float, default=0.3)
    v2.add_argument(
        "--whitening-pairs",
        choices=("copies", "views"),
        default="copies",
        help="lw: fit on (training picture, user-style copy) pairs, the edits the copy search "
        "must ignore (default; +0.75 points of copy recall on validation, see "
        "docs/model/README.md), or on (picture, augmentation view) pairs",
    )
    v2.add_argument(
        "--type-weight",
        type=float,
        default=0.5,
        help="append the class probabilities x this to the embedding (0 = off)",
    )
    v2.add_argument(
        "--layout-weight",
        type=float,
        default=0.5,
        help="append the 8x8 grey layout descriptor x this to the embedding (0 = off)",
    )
    v2.add_argument("--views", type=int, default=3, help="augmented views per training picture")
    v2.add_argument(
        "--source-balance",
        choices=("sqrt", "equal"),
        default="sqrt",
        help="within a class, sources share its weight by sqrt(size) or equally (equal was "
        "tried: worse on test and no better cross-source, see docs/model/README.md)",
    )
    v2.add_argument("--warmup-epochs", type=int, default=12)
    v2.add_argument("--finetune-epochs", type=int, default=3)
    v2.add_argument(
        "--unfreeze-from",
        type=int,
        default=14,
        choices=(13, 14, 15, 16, 17),
        help="first MobileNetV2 block fine-tuned (17 = Conv_1 only)",
    )
    v2.add_argument(
        "--cross-source",
        default=str(CROSS_SOURCE_DEFAULT),
        help="Kaggle-layout folder: its validation_set is the cross-source check (never "
        "trains), its training_set an extra source; 'none' to skip",
    )
    v2.add_argument(
        "--no-extra-training",
        dest="extra_training",
        action="store_false",
        help="do not train on the cross-source folder's training_set",
    )
    v2.add_argument(
        "--compare-card",
        default="models/artlens.json",
        help="shipped card evaluated on the same pictures ('none' to skip)",
    )
    v2.add_argument(
        "--tradeoff",
        default="docs/model/tradeoff.json",
        help="size/dimension measurement (python -m training.tradeoff) for the card",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="final-training epochs (default: best epoch of the CV curves)",
    )
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument(
        "--per-class-limit", type=int, default=None, help="cap rows per class (quick runs)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--baseline-cv",
        type=Path,
        default=None,
        help="a previous model card: its cross-validation results for configs not run now are "
        "reused for the comparison (same data checksum, folds, epochs and seed required; "
        "mobilenet_v2 defaults to models/artlens.json and needs the same folds only)",
    )
    p.add_argument("--version", default=None, help="model version (default: date + git short hash)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS and c not in BACKBONE_CONFIGS]
    if unknown or not names:
        p.error(f"unknown configs {unknown}; known: {[*BACKBONE_CONFIGS, *CONFIGS]}")
    for name in ("cross_source", "compare_card", "tradeoff"):
        value = getattr(args, name)
        setattr(args, name, None if value in (None, "none", "") else Path(value))
    return args


def model_version() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = "nogit"
    return f"{datetime.now(UTC):%Y.%m.%d-%H%M}-{rev}"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def limit_per_class(pool, limit, seed):
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.permutation(np.nonzero(pool.labels == c)[0])[:limit] for c in range(len(pool.classes))]
    )
    keep.sort()
    return pool.pixels[keep], pool.labels[keep]


def summarise_cv(cv: dict) -> dict:
    """The card's form of a CV result: per-fold figures without the epoch histories."""
    if "fold_results" not in cv:  # reused from an earlier card: already summarised
        return cv
    per_fold = [
        {k: r[k] for k in ("fold", "accuracy", "macro_f1", "recall", "seconds")}
        for r in cv["fold_results"]
    ]
    return {k: v for k, v in cv.items() if k != "fold_results"} | {"per_fold": per_fold}


def reused_cv(card_path: Path, checksum: str, args) -> dict:
    """Cross-validation results of an earlier run, when its protocol is exactly this one's."""
    card = json.loads(Path(card_path).read_text())
    training = card["training"]
    same = (
        training["data"]["checksum"] == checksum
        and training["folds"] == args.folds
        and training["cv_epochs"] == args.cv_epochs
        and training["seed"] == args.seed
        and training.get("per_class_limit") == args.per_class_limit
    )
    if not same:
        raise SystemExit(f"{card_path}: its CV protocol differs from this run's; not reusable")
    wanted = set(args.configs.split(","))
    return {
        name: cv | {"reused_from_model_version": card["version"]}
        for name, cv in card["metrics"]["cross_validation"].items()
        if name not in wanted
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    for path in args.labels:
        # an unusable labels file fails now, not after minutes of decoding and TensorFlow
        try:
            data_mod.read_label_rows(path)
        except data_mod.LabelsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if any(c in BACKBONE_CONFIGS for c in args.configs.split(",")):
        # checked before TensorFlow is even imported: a wrong file fails in a second, clearly
        try:
            weights = resolve_backbone_weights(args.backbone_weights)
        except BackboneWeightsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from training import v2

        if args.baseline_cv is None and Path("models/artlens.json").exists():
            args.baseline_cv = Path("models/artlens.json")
        args.default_version = model_version()
        args.machine = machine()
        return v2.run(args, weights)
    return train_cnn(args)


def train_cnn(args) -> int:
    """The seed's CNN configs (reference, improved) at 150 px, as in model v1."""
    import keras
    import tensorflow as tf

    from training.train import cross_validate, fit, metrics, predict

    started = time.perf_counter()
    verbose = 0 if args.quiet else 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.model_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    print(f"== loading and cleaning {args.data}", flush=True)
    pool = data_mod.load_pool(
        args.data, cache_dir=args.cache_dir, progress=not args.quiet, labels=args.labels
    )
    (args.out / "cleaning_report.json").write_text(json.dumps(pool.report, indent=2))
    print(data_mod.format_report(pool.report), flush=True)
    classes = pool.classes
    pixels, labels = pool.pixels, pool.labels
    if args.per_class_limit:
        pixels, labels = limit_per_class(pool, args.per_class_limit, args.seed)

    plots.class_distribution(pool.report, args.out / "class_distribution.png")
    plots.mean_rgb_histograms(pixels, labels, classes, args.out / "mean_rgb_per_class.png")

    train_idx, test_idx = data_mod.stratified_split(labels, args.test_fraction, args.seed)
    train_px, train_y = pixels[train_idx], labels[train_idx]
    test_px, test_y = pixels[test_idx], labels[test_idx]
    print(
        f"== split: {len(train_idx)} train, {len(test_idx)} test (grouped, stratified)", flush=True
    )

    config_names = [c for c in args.configs.split(",") if c]
    cv_results = {}
    if args.baseline_cv:
        cv_results.update(reused_cv(args.baseline_cv, pool.report["data_checksum"], args))
    if args.folds >= 2:
        for name in config_names:
            print(
                f"== cross-validation: {name}, {args.folds} folds x {args.cv_epochs} epochs",
                flush=True,
            )
            cv = cross_validate(
                CONFIGS[name],
                train_px,
                train_y,
                classes,
                args.folds,
                args.cv_epochs,
                args.seed,
                verbose=verbose,
            )
            plots.learning_curves(cv, args.out / f"learning_curves_{name}.png")
            cv_results[name] = cv
            print(
                f"   {name}: accuracy {cv['accuracy_mean']:.3f} ± {cv['accuracy_sd']:.3f}, "
                f"macro-F1 {cv['macro_f1_mean']:.3f} ± {cv['macro_f1_sd']:.3f}, "
                f"best epoch {cv['best_epoch']}",
                flush=True,
            )

    ship = args.ship or (
        max(cv_results, key=lambda n: cv_results[n]["macro_f1_mean"])
        if cv_results
        else config_names[-1]
    )
    epochs = args.epochs or (
        cv_results[ship]["best_epoch"] if ship in cv_results else args.cv_epochs
    )
    print(f"== final training: {ship}, {epochs} epochs on {len(train_idx)} pictures", flush=True)
    final = fit(CONFIGS[ship], len(classes), train_px, train_y, epochs, args.seed, verbose=verbose)
    probs, embeddings = predict(final.model, test_px)
    test_metrics = metrics(test_y, probs, classes)
    plots.confusion(test_metrics["confusion_matrix"], classes, args.out / "confusion_matrix.png")
    view = plots.embedding_view(
        embeddings, test_y, classes, args.out / "embeddings_3d.html", args.out / "embeddings_3d.png"
    )
    print(
        f"   test: accuracy {test_metrics['accuracy']:.3f}, "
        f"macro-F1 {test_metrics['macro_f1']:.3f}, "
        f"loss {test_metrics['loss']:.3f}",
        flush=True,
    )
    for cls, m in test_metrics["per_class"].items():
        print(
            f"   {cls:<12} precision {m['precision']:.3f} recall {m['recall']:.3f} "
            f"(n={m['support']})"
        )

    print("== export", flush=True)
    onnx_path = args.model_dir / "artlens.onnx"
    # parity on real pictures: the test split first, topped up from training for tiny data sets
    parity_px = np.concatenate([test_px, train_px])[:64].astype(np.float32) / np.float32(255.0)
    parity = export_onnx(final.model, onnx_path, parity_px)
    # The Keras original is kept beside it for the ONNX-vs-Keras benchmark; serving never loads it.
    final.model.save(args.model_dir / "artlens.keras")
    elapsed = time.perf_counter() - started
    cv_summary = {name: summarise_cv(cv) for name, cv in cv_results.items()}
    card = write_card(
        args.model_dir / "artlens.json",
        onnx_path,
        name="artlens",
        version=args.version or model_version(),
        classes=classes,
        extra={
            "architecture": {"config": ship, "notes": CONFIGS[ship].notes},
            "metrics": {
                "cross_validation": cv_summary,
                "test": {k: v for k, v in test_metrics.items()},
                "test_split": {
                    "fraction": args.test_fraction,
                    "pictures": int(len(test_idx)),
                    "grouped_by": f"pHash <= {data_mod.NEAR_DUPLICATE_BITS} bits",
                },
            },
            "export_parity": parity,
            "keras_file": "artlens.keras",
            "embedding_view": view,
            "training": {
                "data": data_mod.card_data(args.data, pool.report),
                "epochs": epochs,
                "seed": args.seed,
                "folds": args.folds,
                "cv_epochs": args.cv_epochs,
                "per_class_limit": args.per_class_limit,
                "seconds_total": round(elapsed, 1),
                "seconds_final_fit": round(final.seconds, 1),
                "machine": machine(),
                "libraries": {"tensorflow": tf.__version__, "keras": keras.__version__},
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        },
    )
    (args.out / "metrics.json").write_text(json.dumps(card["metrics"], indent=2))
    print(
        f"== done in {elapsed / 60:.1f} min: {onnx_path} "
        f"({onnx_path.stat().st_size / 1e6:.1f} MB), "
        f"version {card['version']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
