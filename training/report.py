"""python -m training.report: docs/model/README.md from a finished run, its numbers read from
the model card (never typed by hand), and a list of the figures the run wrote.

    python -m training.report --card out/model-v2/artlens.json --figures out/train-v2

The figures stay in the run's --out folder (git-ignored): the project commits no images outside
the page (occlusion maps and the 3D map show dataset pictures), so the README names them and
`make train` (or any run) draws them again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FIGURES = (
    (
        "learning_curves_mobilenet_v2.png",
        "Learning curves (3-fold CV): head warm-up, then fine-tuning",
    ),
    ("confusion_matrix.png", "Confusion matrix on the grouped test split"),
    ("reliability_diagram.png", "Reliability diagram before and after temperature scaling"),
    ("occlusion.png", "Occlusion sensitivity per type (test pictures)"),
    ("occlusion_cross_source.png", "Occlusion sensitivity on cross-source pictures"),
    ("embeddings_3d.png", "Test-split embeddings, PCA to 3D"),
    ("class_distribution.png", "Class balance before and after cleaning"),
)

TARGETS = (  # (label, getter, target, higher is better)
    ("accuracy", lambda m: m["test"]["accuracy"], 0.97, True),
    ("macro-F1", lambda m: m["test"]["macro_f1"], 0.96, True),
    (
        "min recall of any type",
        lambda m: min(v["recall"] for v in m["test"]["per_class"].values()),
        0.93,
        True,
    ),
    ("ECE (15 bins) after temperature", lambda m: m["calibration"]["ece_15_bins"], 0.03, False),
    ("type precision@5", lambda m: m["retrieval"]["type_precision_at_5"], 0.95, True),
    ("copy recall@1", lambda m: m["retrieval"]["copy_recall_at_1"], 0.98, True),
)


def f(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def experiments_section(card: dict, others: list[tuple[str, dict]]) -> list[str]:
    """Other full runs on the same data and split, beside the shipped one."""
    if not others:
        return []
    lines = [
        "",
        "## Other full runs (same data, split and folds)",
        "",
        "| run | input | CV accuracy | CV macro-F1 | test accuracy | test macro-F1 | ECE | "
        "copy recall@1 | type P@5 | cross-source drawings / engraving | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, c in [("this model (shipped)", card), *others]:
        m = c["metrics"]
        cv = m["cross_validation"].get("mobilenet_v2", {})
        xs = (m.get("cross_source") or {}).get("per_type") or {}
        lines.append(
            f"| {label} | {c['input']['shape'][1]} | {f(cv.get('accuracy_mean'))} | "
            f"{f(cv.get('macro_f1_mean'))} | {f(m['test']['accuracy'], 4)} | "
            f"{f(m['test']['macro_f1'], 4)} | {f(m['calibration']['ece_15_bins'], 4)} | "
            f"{f(m['retrieval']['copy_recall_at_1'], 4)} | "
            f"{f(m['retrieval']['type_precision_at_5'], 4)} | "
            f"{f((xs.get('drawings') or {}).get('accuracy'), 2)} / "
            f"{f((xs.get('engraving') or {}).get('accuracy'), 2)} | "
            f"{c['training']['seconds_total'] / 60:.1f} |"
        )
    return lines


def duplicates_section(card: dict) -> list[str]:
    """serving.duplicates (training.duplicates): the thresholds, why, and the trade-off."""
    dup = card.get("serving", {}).get("duplicates")
    if not dup:
        return []
    lines = [
        "",
        "## Near duplicates and relatives",
        "",
        f"Serving calls a neighbour a near duplicate when the cosine similarity is at least "
        f"{dup['min_similarity']:.2f} and the perceptual hashes (dHash) differ in at most "
        f"{dup['max_hamming']} bits, related when the similarity is at least "
        f"{dup['related_min_similarity']:.2f} otherwise (`serving.duplicates`, measured by "
        "`python -m training.duplicates`).",
        "",
        dup["basis"],
        "",
        "| originals falsely flagged, at most | copies flagged | min_similarity | max_hamming |",
        "|---|---|---|---|",
    ]
    for row in dup["measured"].get("tradeoff", []):
        lines.append(
            f"| {row['max_false_flag_rate']:.1%} | {row['copy_flag_rate']:.2%} | "
            f"{row['min_similarity']:.3f} | {row['max_hamming']} |"
        )
    return lines


def render(card: dict, figures: list[tuple[str, str]], others=()) -> str:
    m = card["metrics"]
    base = m.get("shipped_baseline") or {}
    lines = [
        "# ArtLens model v2",
        "",
        f"Version `{card['version']}` · input {card['input']['shape'][1]} px · embedding "
        f"{card['embedding_size']}-d · classes {', '.join(card['classes'])}.",
        "",
        card["architecture"]["notes"],
        "",
        "All numbers below are read from the model card (`artlens.json`), written by the run that "
        "produced the ONNX file; test-side numbers are measured on the exported ONNX graph "
        "itself. Regenerate this page with `python -m training.report`.",
        "",
        "## Targets (grouped test split, one picture per near-duplicate group)",
        "",
        *([f"'Shipped before' is the model this run replaced: `{base.get('version')}` "
           f"({base.get('config')}), measured on the same split.", ""] if base else []),
        "| metric | shipped before | this model | target | met |",
        "|---|---|---|---|---|",
    ]
    for label, get, target, higher in TARGETS:
        try:
            v2 = get(m)
        except (KeyError, TypeError, ValueError):
            v2 = None
        try:
            v1 = get(base | {"calibration": base.get("calibration", {})}) if base else None
        except (KeyError, TypeError, ValueError):
            v1 = None
        met = v2 is not None and (v2 >= target if higher else v2 <= target)
        sign = "≥" if higher else "≤"
        lines.append(
            f"| {label} | {f(v1)} | {f(v2)} | {sign} {target} | {'yes' if met else 'no'} |"
        )
    lines += [
        "",
        "Per-type recall on test: "
        + ", ".join(
            f"{c} {v['recall']:.3f} (n={v['support']})" for c, v in m["test"]["per_class"].items()
        )
        + ".",
    ]

    lines += [
        "",
        "## Cross-validation beside the reference CNN (same folds)",
        "",
        "| config | folds | epochs | accuracy | macro-F1 | source |",
        "|---|---|---|---|---|---|",
    ]
    for name, cv in m["cross_validation"].items():
        src = (
            f"reused from {cv['reused_from_model_version']}"
            if "reused_from_model_version" in cv
            else "this run"
        )
        lines.append(
            f"| {name} | {cv['folds']} | {cv.get('epochs_detail', cv['epochs'])} | "
            f"{cv['accuracy_mean']:.3f} ± {cv['accuracy_sd']:.3f} | "
            f"{cv['macro_f1_mean']:.3f} ± {cv['macro_f1_sd']:.3f} | {src} |"
        )

    cal = m["calibration"]
    lines += [
        "",
        "## Calibration",
        "",
        f"Temperature T = {cal['temperature']:.3f}, fitted on {cal['validation']['fitted_on']} "
        "and baked into the graph (logits / T before the softmax).",
        "",
        "| | ECE (15 bins) | NLL |",
        "|---|---|---|",
        f"| test, before | {cal['ece_15_bins_before']:.4f} | {cal['nll_before']:.4f} |",
        f"| test, after | {cal['ece_15_bins_after']:.4f} | {cal['nll_after']:.4f} |",
        f"| CV validation, before → after | {cal['validation']['ece_before']:.4f} → "
        f"{cal['validation']['ece_after']:.4f} | |",
    ]

    r = m["retrieval"]
    lines += [
        "",
        "## Retrieval",
        "",
        f"Embedding: {card['architecture']['embedding']['text']}.",
        "",
        f"- copy recall@1: **{r['copy_recall_at_1']:.4f}** ({r['copy_queries']} user-style copies "
        f"of test pictures: crop 3–10 % a side, long side 160–480 px, 5–20 % brighter, JPEG q "
        f"60–85; gallery = {r['gallery_for_copies']} test + training pictures). Shipped before: "
        f"{f(base.get('retrieval', {}).get('copy_recall_at_1'), 4)}.",
        f"- type precision@5: **{r['type_precision_at_5']:.4f}** (test queries, training gallery); "
        "per type: "
        + ", ".join(f"{c} {v:.3f}" for c, v in r["type_precision_at_5_per_type"].items())
        + ". Shipped before: "
        f"{f(base.get('retrieval', {}).get('type_precision_at_5'), 4)}.",
    ]

    xs = m.get("cross_source") or {}
    if xs.get("per_type"):
        v1xs = base.get("cross_source") or {}
        lines += [
            "",
            "## Cross-source check (the model must learn the medium, not the source)",
            "",
            f"`{xs['root']}` `validation_set` (both copies merged and deduplicated, never "
            f"trained on; {xs['main_rows_kept_out_as_near_copies_of_validation']} main-data "
            "pictures that are near copies of it were kept out of training). Its "
            f"`training_set` gave {xs['training_set_used_for_training']} extra training "
            "pictures.",
            "",
            "| type | n | shipped before | this model |",
            "|---|---|---|---|",
        ]
        for c, v in xs["per_type"].items():
            lines.append(
                f"| {c} | {v['n']} | {f((v1xs.get(c) or {}).get('accuracy'), 2)} | "
                f"{f(v['accuracy'], 2)} |"
            )

    trade = card.get("design_tradeoff")
    if trade:
        lines += [
            "",
            "## How input size and embedding were chosen",
            "",
            trade["what"] + ".",
            "",
            "| size | embedding | accuracy (logreg) | copy recall@1 | type P@5 | "
            "latency ms (median / fastest) |",
            "|---|---|---|---|---|---|",
        ]
        for row in trade["rows"]:
            lines.append(
                f"| {row['input_size']} | {row['embedding']} | {row['accuracy_logreg']:.4f} | "
                f"{row['copy_recall_at_1']:.4f} | {row['type_precision_at_5']:.4f} | "
                f"{f(row.get('latency_ms_batch1_1thread'), 2)} / "
                f"{f(row.get('latency_ms_batch1_1thread_fastest'), 2)} |"
            )

    lines += experiments_section(card, list(others))
    lines += duplicates_section(card)
    lines += [
        "",
        "## Design decisions",
        "",
        "- **Backbone, not a bigger CNN**: frozen ImageNet MobileNetV2 features with a linear "
        "head reach ~0.96 on validation (table above) against the seed CNN's 0.85 in CV; 2 CPU "
        "cores cannot train a comparable network from scratch on ~6k pictures.",
        "- **Warm-up, then fine-tune the top blocks on cached activations**: the frozen trunk "
        "runs once per picture and augmented view (cached by data checksum, input size, "
        "augmentation seed, weights hash and cut point); every epoch then costs only the last "
        "blocks. BatchNorm stays in inference mode (small CPU batches would corrupt ImageNet "
        "statistics).",
        "- **Augmentation aimed at uploads and at the source shortcut**: crops and margins "
        "(added and removed), rescaling, JPEG, brightness/contrast/saturation, greyscale, "
        "paper tone, scan noise, small rotation and perspective; classes weigh the same and, "
        "within a class, sources share the weight by the square root of their size.",
        "- **Embedding decided on validation numbers** (table above, never the test split): "
        "learned whitening (pairs of a picture and a changed version of it define what a copy "
        "changes) beats PCA-whitening on copy recall at equal dimensions. Fitted on (training "
        "picture, user-style copy) pairs (`lwc` rows) rather than (picture, augmentation view) "
        "pairs (`lw` rows) it gains 0.6 to 2 points of copy recall at every size and "
        "dimension, and type precision holds: the copies' edits (a small crop, a rescale, a "
        "brighter exposure, JPEG) are exactly what the copy search must ignore, while the "
        "augmentation views also turn pictures grey, tone the paper and rotate them. The copy "
        "family is the one copy recall@1 is measured with (other seeds, training pictures "
        "only), so held-out copies of another kind could gain less; the card's type precision "
        "and cross-source check are the guard. The 8x8 layout "
        "raster lifts copy recall by ~3 points at no measurable cost to type precision; the "
        "class probabilities x 0.5 lift type precision@5 by ~4 points and cost little copy "
        "recall (x 1.0 costs ~3 points). 256 dimensions: 512 adds nothing measurable, 128 "
        "loses a little.",
        "- **Input size 160**: on frozen features 192 and 224 px are better on validation "
        "(accuracy +0.4 / +0.8 points, copy recall +0.6 to 2 points) at 1.4x and 2x the "
        "compute. Full runs at both sizes (table 'Other full runs', whitening still on "
        "augmentation views) did not carry that over. The 224 px run (with sources balanced "
        "equally) came out worse already in cross-validation. The 192 px run ties the 160 px "
        "run of the same recipe in cross-validation; its copy recall@1 of 0.9829 against "
        "0.9797 is 3 of 936 queries, inside the +/-0.46-point standard error of a recall near "
        "0.98 on 936 queries, and its cross-source check is one picture per type worse. Its "
        "costs are measured, not noise (`make bench` sections on this machine): a 256 px "
        "request p50 8.2 ms against 6.2, a 6 MP one 30.3 ms against 26.0, ingestion 103 "
        "pictures/s against 138. Fitting the whitening on copies instead (above) gained more "
        "copy recall at no serving cost (9 of 936 queries over the 160 px run on views), so "
        "160 px ships. Of the 10 copies it still misses, 6 are faint Rijksmuseum sketches "
        "that find another sheet of the same kind first (2 of them a Dore engraving); more "
        "input pixels do not fix that.",
        "- **Temperature on out-of-fold logits**: the CV models' validation logits are "
        "held-out data; the fitted T is baked into the graph. T < 1 because label smoothing "
        "and dropout make the raw model under-confident.",
        "",
        "## What a GPU would change",
        "",
        "On one GPU the frozen-feature pass (tens of thousands of views) takes seconds instead "
        "of minutes, so the cache stops mattering: the whole backbone can be fine-tuned end to "
        "end with fresh augmentation every epoch (instead of a fixed set of cached views), for "
        "10-20 epochs instead of 3, at 224 px or more, with 5-fold CV and a jointly trained "
        "contrastive projection head - all inside the same hour. The exported graph and its "
        "CPU serving cost would not change.",
    ]
    tr = card["training"]
    lines += [
        "",
        "## Run",
        "",
        f"- wall time {tr['seconds_total'] / 60:.1f} min on {tr['machine']['cores']} cores "
        f"({tr['machine']['cpu']}), of which frozen features {tr['seconds_features'] / 60:.1f} "
        f"min and the final fit {tr['seconds_final_fit'] / 60:.1f} min; the machine was shared "
        "with other jobs during the run.",
        f"- data checksum `{tr['data']['checksum']}`; {tr['data']['cleaning']['kept']} distinct "
        f"pictures of {tr['data']['cleaning']['seen']} files.",
        *(
            [
                f"- curator labels ({', '.join(tr['data']['labels']['files'])}): "
                f"{tr['data']['labels']['replaced']} replaced, "
                f"{tr['data']['labels']['confirmed']} confirmed, "
                f"{tr['data']['labels']['added']} added, "
                f"{tr['data']['labels']['skipped']} skipped."
            ]
            if tr["data"].get("labels")
            else []
        ),
        f"- backbone weights SHA-256 `{tr['backbone_weights']['sha256']}`.",
        f"- export parity (ONNX vs Keras, {card['export_parity']['parity_images']} pictures): "
        f"probabilities {card['export_parity']['max_abs_diff_probabilities']:.1e}, embedding "
        f"{card['export_parity']['max_abs_diff_embedding']:.1e}.",
        "",
        "## Intended use",
        "",
        *[f"- {x}" for x in card["intended_use"]],
        "",
        "## Out of scope",
        "",
        *[f"- {x}" for x in card["out_of_scope"]],
        "",
        "## Limitations",
        "",
        *[f"- {x}" for x in card["limitations"]],
        "",
        "## Licences",
        "",
        f"- backbone weights: {card['licences']['backbone_weights']}",
        *[f"- data, {k}: {v}" for k, v in card["licences"]["data"].items()],
        "",
        "## Citation",
        "",
        *[f"- {k}: {v}" for k, v in card["citation"].items()],
        "",
        "## Figures",
        "",
    ]
    lines += [
        "Written by the training run into its `--out` folder (`out/training/` for `make train`;",
        "git-ignored, since the project commits no images outside the page):",
        "",
        *[f"- `{name}`: {title}" for name, title in figures],
        "",
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.report", description=__doc__)
    p.add_argument("--card", type=Path, required=True)
    p.add_argument("--figures", type=Path, required=True, help="the run's --out folder")
    p.add_argument("--docs", type=Path, default=Path("docs/model"))
    p.add_argument(
        "--other",
        action="append",
        default=[],
        metavar="LABEL=CARD",
        help="another full run's card, shown beside the shipped one",
    )
    args = p.parse_args(argv)
    others = []
    for item in args.other:
        label, _, path = item.partition("=")
        others.append((label, json.loads(Path(path).read_text())))
    card = json.loads(args.card.read_text())
    args.docs.mkdir(parents=True, exist_ok=True)
    drawn = [(name, title) for name, title in FIGURES if (args.figures / name).exists()]
    if card.get("design_tradeoff"):
        (args.docs / "tradeoff.json").write_text(
            json.dumps(card["design_tradeoff"], indent=2) + "\n"
        )
    (args.docs / "README.md").write_text(render(card, drawn, others))
    print(f"wrote {args.docs / 'README.md'}, naming {len(drawn)} figures in {args.figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
