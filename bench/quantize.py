"""int8: ONNX Runtime's static quantization of the shipped model, beside the float32 graph.

`make bench` (section `quantize`): quantizes the card's ONNX file into the run's temp folder
(both variants below), calibrated on pool pictures, and times fp32 and int8 at batch 1 and 32
on one intra-op thread (as the predict Lambda runs), taking turns over 3 rounds, with file
sizes and how often int8 agrees with fp32's type.

`python -m bench.quantize` (`make bench-int8`): the issue's rule, "ship it only if every metric
above still holds". It rebuilds the card's grouped test split with the training job's own code
(training.data.load_pool + stratified_split, the card's seed and fraction), makes the same
user-style copies (training.v2.copies_of) and scores fp32 and int8 with the same function the
card's numbers came from (training.v2.evaluate_artifact): accuracy, macro-F1, every type's
recall, ECE, type precision@5, copy recall@1 and the cross-source check; then latency and size.
It prints the side-by-side table, writes bench/int8_results.json and the table in
docs/performance.md. It never touches models/: the int8 file goes to .artlens/int8/ (ignored),
and shipping it would be a new model version, the lead's call.

How it quantizes: static QDQ (the format ORT's guide recommends for CNNs), per-channel int8
weights, uint8 activations, MinMax calibration on training-split pictures decoded as serving
decodes them (artlens.image.load_image + preprocess at the card's input size). Two variants,
both scored (VARIANTS): `all`, every op ORT can quantize, outputs included; and `trunk`, only
the backbone up to the global average pool, so the head (temperature, softmax, whitening, L2
normalisation) and the 8x8 layout branch stay float32 and the outputs are not rounded to uint8
steps. Also measured and dropped (docs/performance.md): Conv nodes only (the quantized tensor is
then the conv output before ReLU6, a wider range: copy recall 0.957) and dynamic quantization
(ConvInteger: 7x slower than fp32 here). int8 ships only if some variant keeps every metric.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.common import REPO, SHIPPED_CARD, Bench, p50, time_calls

CALIBRATION_PICTURES = 64
CALIBRATION_BATCH = 8
ROUNDS = 3
# name -> what is quantized; the rest stays float32
VARIANTS: dict[str, str] = {
    "all": "every op ORT quantizes, outputs included",
    "trunk": "the backbone up to the global average pool; head and layout branch float32",
}
INT8_DIR = REPO / ".artlens" / "int8"
INT8_RESULTS = REPO / "bench" / "int8_results.json"
DATA = REPO.parent / "shared" / "datasets" / "art"
CROSS_SOURCE = REPO.parent / "shared" / "datasets" / "art-sample-kaggle-layout"

# The table: (key in the scores, label, op, bound). Each must still hold for int8.
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("accuracy", "accuracy", ">=", 0.97),
    ("macro_f1", "macro-F1", ">=", 0.96),
    ("min_recall", "lowest recall of any type", ">=", 0.93),
    ("ece", "ECE (15 bins)", "<=", 0.03),
    ("type_p_at_5", "type precision@5", ">=", 0.95),
    ("copy_recall_at_1", "copy recall@1", ">=", 0.98),
    ("cross_source_drawings", "cross-source drawings", ">=", 0.8),
    ("cross_source_engraving", "cross-source engraving", ">=", 0.8),
    ("ms_b1", "inference, batch 1, 1 thread", "<=", float("nan")),
    ("ms_b32", "inference, batch 32, 1 thread", "<=", float("nan")),
)


# -- quantizing ---------------------------------------------------------------------------


def calibration_inputs(root: Path, paths: list[str], rows: np.ndarray, size: int) -> np.ndarray:
    """Model inputs of the given rows' original files, decoded exactly as serving does."""
    from artlens.image import load_image, preprocess

    return np.stack([
        preprocess(load_image((Path(root) / paths[int(i)]).read_bytes(), size=size).rgb, size)
        for i in rows
    ])


def quantize(src: Path, dst: Path, calibration: np.ndarray, input_name: str = "image",
             variant: str = "all") -> Path:
    """Static QDQ int8 of `src` (per-channel weights, MinMax on `calibration`) written to `dst`;
    `variant` names which nodes are quantized (VARIANTS)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {sorted(VARIANTS)}")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(range(0, len(calibration), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self._batches, None)
            if start is None:
                return None
            return {input_name: calibration[start : start + CALIBRATION_BATCH]}

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="artlens-int8-") as tmp:
        # shape inference + graph optimisation first, as ORT's quantization guide asks
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        quantize_static(
            str(prepared), str(dst), Reader(),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=head_nodes(prepared) if variant == "trunk" else None,
        )
    return dst


def head_nodes(path: Path) -> list[str]:
    """Every node that does not feed the global average pool: the head after it and side
    branches (the layout descriptor). Found from the graph, not from layer names; none when the
    graph has no GlobalAveragePool."""
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)
    producer = {out: node for node in nodes for out in node.output}
    pools = [n for n in nodes if n.op_type == "GlobalAveragePool"]
    trunk: set[int] = set()
    todo = [producer[i] for pool in pools for i in pool.input if i in producer]
    while todo:
        node = todo.pop()
        if id(node) not in trunk:
            trunk.add(id(node))
            todo.extend(producer[i] for i in node.input if i in producer)
    if not pools or any(not n.name for n in nodes):  # exclusion works by node name
        return []
    return [n.name for n in nodes if id(n) not in trunk]


def session(path: Path, threads: int = 1) -> Any:
    """A session with the options the served OnnxClassifier uses (for a file with no card)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency(paths: dict[str, Path], images: np.ndarray, reps_b1: int, reps_b32: int,
            warmup: int, input_name: str = "image", rounds: int = ROUNDS) -> dict[str, dict]:
    """Median (and best) ms per call at batch 1 and at len(images), one intra-op thread, for
    each file. The files take turns over `rounds` rounds, so load from other work on the
    shared cores falls on all of them alike rather than on whichever ran during a burst."""
    sessions = {name: session(path, threads=1) for name, path in paths.items()}
    singles = [images[i : i + 1] for i in range(len(images))]
    times: dict[str, dict[str, list[np.ndarray]]] = {n: {"b1": [], "bn": []} for n in paths}
    for _ in range(rounds):
        for name, sess in sessions.items():
            times[name]["b1"].append(time_calls(
                lambda i, s=sess: s.run(None, {input_name: singles[i % len(singles)]}),
                max(1, reps_b1 // rounds), warmup))
            times[name]["bn"].append(time_calls(
                lambda i, s=sess: s.run(None, {input_name: images}),
                max(1, reps_b32 // rounds), 1))
    out = {}
    for name, t in times.items():
        b1, bn = np.concatenate(t["b1"]), np.concatenate(t["bn"])
        out[name] = {"ms_b1": p50(b1), "ms_b32": p50(bn),
                     "best_ms_b1": float(b1.min()), "best_ms_b32": float(bn.min())}
    return out


def _outputs(path: Path, images: np.ndarray, input_name: str) -> tuple[np.ndarray, np.ndarray]:
    probs, embs = session(path, threads=2).run(["probabilities", "embedding"],
                                                {input_name: images})
    return probs, embs


# -- the make bench section ---------------------------------------------------------------


def run(bench: Bench) -> dict[str, Any]:
    from artlens.image import scale

    card, sizes = bench.card, bench.sizes
    n_cal = 16 if sizes.quick else CALIBRATION_PICTURES
    # the pool is decoded by load_image + resize at the card's size: serving's own inputs
    calibration = scale(bench.pool.pixels[-n_cal:])
    images = bench.model_inputs(32)
    check = bench.model_inputs(min(len(bench.pool.pixels), 256))
    fp_p, fp_e = _outputs(card.onnx_path, check, card.input_name)
    files, seconds = {"fp32": card.onnx_path}, {}
    for variant in VARIANTS:
        started = time.perf_counter()
        files[variant] = quantize(card.onnx_path, bench.workdir / "int8" / f"model-{variant}.onnx",
                                  calibration, card.input_name, variant)
        seconds[variant] = time.perf_counter() - started
    timed = latency(files, images, sizes.onnx_reps_b1, sizes.onnx_reps_b32, sizes.warmup,
                    card.input_name)
    results: dict[str, Any] = {
        "fp32_ms_b1": timed["fp32"]["ms_b1"], "fp32_ms_b32": timed["fp32"]["ms_b32"],
        "fp32_mb": card.onnx_path.stat().st_size / 1e6,
    }
    for variant in VARIANTS:
        path, q = files[variant], timed[variant]
        q_p, q_e = _outputs(path, check, card.input_name)
        # variant all keeps the plain keys (int8_ms_b1 ...), the other is suffixed
        tag = "int8" if variant == "all" else f"int8_{variant}"
        results |= {
            f"{tag}_ms_b1": q["ms_b1"], f"{tag}_ms_b32": q["ms_b32"],
            f"{tag}_mb": path.stat().st_size / 1e6,
            f"{tag}_type_agreement": float((q_p.argmax(1) == fp_p.argmax(1)).mean()),
            f"{tag}_max_abs_diff_probabilities": float(np.abs(q_p - fp_p).max()),
            f"{tag}_embedding_cosine_mean": float((q_e * fp_e).sum(1).mean()),
            f"{tag}_quantize_seconds": seconds[variant],
        }
    results["timings_ms"] = timed
    results |= {
        "agreement_pictures": int(len(check)),
        "calibration_pictures": n_cal,
        "method": _method(),
        "statistic": "median wall ms per call after warm-up, 1 intra-op thread",
    }
    if INT8_RESULTS.exists():  # the full comparison (make bench-int8), when it has been run
        full = json.loads(INT8_RESULTS.read_text())
        results["int8_decision"] = full.get("decision", {})
    return results


def _method() -> str:
    return ("ONNX Runtime static QDQ: per-channel int8 weights, uint8 activations, MinMax "
            "calibration; " + "; ".join(f"variant {k} = {v}" for k, v in VARIANTS.items()))


# -- the full comparison (make bench-int8) ------------------------------------------------


def _scores(result: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    t = result["test"]
    recalls = {c: t["per_class"][c]["recall"] for c in classes}
    xs = result.get("cross_source") or {}
    return {
        "accuracy": t["accuracy"],
        "macro_f1": t["macro_f1"],
        "min_recall": min(recalls.values()),
        "min_recall_type": min(recalls, key=recalls.__getitem__),
        "recall": recalls,
        "ece": result["calibration"]["ece_15_bins"],
        "type_p_at_5": result["retrieval"]["type_precision_at_5"],
        "copy_recall_at_1": result["retrieval"]["copy_recall_at_1"],
        "copy_queries": result["retrieval"]["copy_queries"],
        "gallery": result["retrieval"]["gallery_for_copies"],
        **{f"cross_source_{c}": xs[c]["accuracy"] for c in ("drawings", "engraving") if c in xs},
        "cross_source_n": {c: v["n"] for c, v in xs.items()},
        "confusion_matrix": t["confusion_matrix"],
    }


def _met(value: float, op: str, bound: float) -> bool:
    return value >= bound if op == ">=" else value <= bound


def decide(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    """Each target row: does it still hold for int8? A target fp32 meets must be met by int8;
    one fp32 already misses must not get worse; latency must not get worse (no bound: nan)."""
    rows = []
    for key, label, op, bound in TARGETS:
        if key not in fp32 or key not in int8:
            continue
        a, b = fp32[key], int8[key]
        if bound != bound:  # nan: no absolute bound, int8 only has to be no slower
            holds, why = b <= a, "no slower than fp32"
        elif _met(a, op, bound):
            holds, why = _met(b, op, bound), f"target {op} {bound:g}"
        else:
            holds = _met(b, op, a)
            why = f"fp32 misses {op} {bound:g}; int8 must be no worse than fp32"
        rows.append({"metric": key, "label": label, "fp32": a, "int8": b, "op": op,
                     "target": None if bound != bound else bound, "holds": bool(holds),
                     "rule": why})
    broken = [r["label"] for r in rows if not r["holds"]]
    return {"ship": not broken, "broken": broken, "rows": rows}


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it (results are committed)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def overall(decisions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ship int8 if some variant keeps every metric (the first such, in VARIANTS order)."""
    shippable = [v for v, d in decisions.items() if d["ship"]]
    return {"ship": bool(shippable), "variant": shippable[0] if shippable else None,
            "broken": {v: d["broken"] for v, d in decisions.items()}}


def evaluate(card_path: Path, data: Path, cross_source: Path | None, out_dir: Path,
             calibration_pictures: int = CALIBRATION_PICTURES, reps_b1: int = 300,
             reps_b32: int = 30) -> dict[str, Any]:
    from artlens.models.card import ModelCard
    from training import data as data_mod
    from training import v2

    card = ModelCard.load(card_path)
    raw = card.raw
    size, classes = card.input_size, list(card.classes)
    training = raw.get("training", {})
    split = raw["metrics"]["test_split"]
    seed, fraction = int(training.get("seed", 0)), float(split["fraction"])
    cache_dir = REPO / ".artlens" / "cache"
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", flush=True)

    pool = data_mod.load_pool(data, cache_dir=cache_dir, progress=False, size=size)
    card_checksum = training.get("data", {}).get("checksum")
    same_data = pool.report["data_checksum"] == card_checksum
    rows = v2.main_rows(pool.labels, len(classes), training.get("per_class_limit"), seed)
    pixels, labels = pool.pixels[rows], pool.labels[rows]
    paths = [pool.paths[i] for i in rows]
    train_idx, test_idx = data_mod.stratified_split(labels, fraction, seed)
    log(f"split: {len(train_idx)} train, {len(test_idx)} test (card: {split['pictures']} test; "
        f"data checksum {'= card' if same_data else 'DIFFERS from the card'})")

    rng = np.random.default_rng(seed)
    cal_rows = np.sort(rng.choice(train_idx, size=min(calibration_pictures, len(train_idx)),
                                  replace=False))
    calibration = calibration_inputs(data, paths, cal_rows, size)
    files, quantize_s = {"fp32": card.onnx_path}, {}
    for variant in VARIANTS:
        q_started = time.perf_counter()
        files[variant] = quantize(card.onnx_path,
                                  out_dir / f"{card.onnx_path.stem}-int8-{variant}.onnx",
                                  calibration, card.input_name, variant)
        quantize_s[variant] = time.perf_counter() - q_started
        log(f"int8 {variant}: quantized on {len(cal_rows)} training-split pictures in "
            f"{quantize_s[variant]:.1f} s: {files[variant]}")

    copy_px = v2.copies_of(data, paths, test_idx, size)
    xs_px = xs_y = None
    if cross_source is not None and cross_source.exists():
        args = SimpleNamespace(cross_source=cross_source, cache_dir=cache_dir)
        xv, known, xs_y = v2.cross_source_split(args, size, "validation_set", classes)
        xs_px = xv.pixels[known]
    log(f"{len(copy_px)} user-style copies made")

    scores = {}
    for name, path in files.items():
        result, _, _ = v2.evaluate_artifact(
            path, pixels[test_idx], labels[test_idx], pixels[train_idx], labels[train_idx],
            copy_px, xs_px, xs_y, classes,
        )
        scores[name] = _scores(result, classes)
        log(f"{name}: scored")
    images = (pixels[test_idx][:32].astype(np.float32) / np.float32(255.0))
    timed = latency(files, images, reps_b1, reps_b32, 5, card.input_name)
    for name, path in files.items():
        scores[name] |= timed[name]
        scores[name]["file_mb"] = path.stat().st_size / 1e6
    log("timed")
    import os

    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_version": card.version,
        "method": _method(),
        "calibration": {"pictures": int(len(cal_rows)), "from": "training split, seeded",
                        "decode": "artlens.image.load_image + preprocess at the card's size"},
        "quantize_seconds": quantize_s,
        "int8_files": {k: _shown(v) for k, v in files.items() if k != "fp32"},
        "test_split": {"pictures": int(len(test_idx)), "card_pictures": split["pictures"],
                       "seed": seed, "fraction": fraction, "same_data_as_card": same_data},
        "fp32": scores["fp32"],
        "int8": {v: scores[v] for v in VARIANTS},
        "decisions": {v: decide(scores["fp32"], scores[v]) for v in VARIANTS},
        "decision": overall({v: decide(scores["fp32"], scores[v]) for v in VARIANTS}),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "seconds": time.perf_counter() - started,
    }


# -- the table ----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return str(value)


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    fp, variants = results["fp32"], results["int8"]
    by_metric: dict[str, list[str]] = {}
    order = []
    for decision in results["decisions"].values():
        for row in decision["rows"]:
            if row["metric"] not in by_metric:
                target = "" if row["target"] is None else f"{row['op']} {row['target']:g}"
                by_metric[row["metric"]] = [row["label"], _cell(row["fp32"])]
                order.append((row["metric"], target))
            mark = "" if row["holds"] else " (NO)"
            by_metric[row["metric"]].append(_cell(row["int8"]) + mark)
    rows = [by_metric[m] + [t] for m, t in order]
    rows.append(["file size (MB)", _cell(fp["file_mb"]),
                 *(_cell(variants[v]["file_mb"]) for v in results["decisions"]), ""])
    return rows


def _header(results: dict[str, Any]) -> list[str]:
    return ["metric", "fp32 (shipped)", *(f"int8 {v}" for v in results["decisions"]), "target"]


def _verdict(results: dict[str, Any]) -> str:
    d = results["decision"]
    if d["ship"]:
        holding = [v for v, broken in d["broken"].items() if not broken]
        # The rule allows shipping; whether to is the lead's call (docs/performance.md).
        return f"every metric holds for int8 {' and '.join(holding)}: it may ship"
    return "do not ship: " + "; ".join(
        f"{v} breaks {', '.join(broken)}" for v, broken in d["broken"].items())


def text_table(results: dict[str, Any]) -> str:
    header, body = _header(results), table_rows(results)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body), "",
                      f"decision: {_verdict(results)}"])


def markdown_table(results: dict[str, Any]) -> str:
    header = _header(results)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    split = results["test_split"]
    out += [
        "",
        f"Model {results['model_version']}; {results['method']}; calibrated on "
        f"{results['calibration']['pictures']} training-split pictures. Test split: "
        f"{split['pictures']} pictures (card: {split['card_pictures']}); copies: "
        f"{results['fp32']['copy_queries']} queries among {results['fp32']['gallery']} "
        f"pictures; cross-source n = {results['fp32']['cross_source_n'].get('drawings')} "
        f"drawings, {results['fp32']['cross_source_n'].get('engraving')} engravings. "
        f"(NO) = no longer holds. Latency: median ms, 1 intra-op thread. Generated "
        f"{results['generated_at']} by `make bench-int8`; 1-minute load average "
        f"{results['load_average_at_end'][0]} at end (2 cores shared with other work).",
        f"Decision: **{_verdict(results)}**.",
    ]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--card", type=Path, default=SHIPPED_CARD)
    p.add_argument("--data", type=Path, default=DATA, help="the training data (card's root)")
    p.add_argument("--cross-source", type=Path, default=CROSS_SOURCE)
    p.add_argument("--out-dir", type=Path, default=INT8_DIR,
                   help="where the int8 file goes (default .artlens/int8/, git-ignored)")
    p.add_argument("--results", type=Path, default=INT8_RESULTS)
    p.add_argument("--calibration-pictures", type=int, default=CALIBRATION_PICTURES)
    p.add_argument("--reps-b1", type=int, default=300)
    p.add_argument("--reps-b32", type=int, default=30)
    p.add_argument("--table-only", action="store_true",
                   help="print the table of an existing --results file and refresh the doc")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bench import report

    args = parse_args(argv)
    if args.table_only:
        results = json.loads(args.results.read_text())
    else:
        if (args.out_dir.resolve() / "x").is_relative_to((REPO / "models").resolve()):
            raise SystemExit("refusing to write the int8 file into models/ (a new model version "
                             "is shipped by the training job, not by the bench)")
        results = evaluate(args.card, args.data, args.cross_source, args.out_dir,
                           args.calibration_pictures, args.reps_b1, args.reps_b32)
        # unrounded: 0.9797 and 0.98 sit on either side of a target
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.results}")
    print(text_table(results))
    if report.update_doc(results, markdown=markdown_table(results), markers=report.INT8_MARKERS):
        print(f"updated the int8 table in {report.DOC.relative_to(REPO)}")
    return 0  # "do not ship" is a verdict, not a failed run


if __name__ == "__main__":
    sys.exit(main())
