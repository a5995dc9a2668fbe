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
Each variant is scored twice: as ONNX Runtime computes it here (a CPU with AVX-512 VNNI) and
as it computes it on an x86 CPU without VNNI (`without_vnni`: there the uint8 x int8 products
are summed in pairs saturated to int16). AWS Lambda's x86_64 fleet does not promise VNNI, and
the same function may run on either kind, so a variant must hold on both, and the drift of one
picture's embedding between the two kinds of machine is reported. It prints the side-by-side
table, writes bench/int8_results.json and the table in docs/performance.md. It never touches
models/: the int8 file goes to .artlens/int8/ (ignored), and shipping it would be a new model
version, the lead's call.

How it quantizes: static QDQ (the format ORT's guide recommends for CNNs), per-channel int8
weights, uint8 activations, MinMax calibration on training-split pictures decoded as serving
decodes them (artlens.image.load_image + preprocess at the card's input size). Two variants,
both scored (VARIANTS): `all`, every op ORT can quantize, outputs included; and `trunk`, only
the backbone up to the global average pool, so the head (temperature, softmax, whitening, L2
normalisation) and the 8x8 layout branch stay float32 and the outputs are not rounded to uint8
steps. Also measured and dropped (docs/performance.md): Conv nodes only (the quantized tensor is
then the conv output before ReLU6, a wider range: copy recall 0.957) and dynamic quantization
(ConvInteger: 7x slower than fp32 here); and, against the saturation, 7-bit weights in the
convolutions that saturate (`reduce_range` there: lowest recall 0.89, cross-source engraving
0.4) or everywhere (accuracy 0.95), 7-bit activations into them (accuracy 0.969), and uint8
weights (U8U8: keeps the metrics, but is no faster than fp32 here). int8 ships only if some
variant keeps every metric on both kinds of CPU.
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


# -- the same graph as a CPU without VNNI runs it -----------------------------------------

INT16_MIN, INT16_MAX = -32768, 32767


def without_vnni(src: Path, dst: Path) -> dict[str, int]:
    """A float copy of the int8 graph `src` that computes what ONNX Runtime computes on an
    x86 CPU without VNNI (AVX2, AVX-512 without VNNI), written to `dst`.

    There MLAS multiplies the uint8 activations by the int8 weights with VPMADDUBSW: each
    pair of neighbouring products along the GEMM's K axis (channels (2p, 2p+1) of a 1x1
    convolution; (row, column, channel) order for larger kernels, as ORT's NHWC im2col lays
    them out) is summed and SATURATED to int16 before the int32 accumulation. VNNI's VPDPBUSD
    (this machine) does not saturate, so a measurement here says nothing about those CPUs
    unless the saturation is put back: every quantized convolution with group 1 becomes
    Cast -> Pad (with the activation zero point) -> a convolution that yields each pair's sum
    (a grouped 1x1 convolution, or one kernel per pair) -> Clip to int16 -> ReduceSum over the
    pairs -> the zero-point correction, scales and bias. Depthwise convolutions are left as
    they are: MLAS widens them to 16 bits before multiplying, so they never saturate.
    Returns how many convolutions were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    nodes, added, rewritten = [], [], 0

    def const(name: str, value: np.ndarray) -> str:
        added.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dx, dw = producer.get(node.input[0]), (producer.get(node.input[1])
                                               if len(node.input) > 1 else None)
        if (node.op_type != "Conv" or group != 1 or dx is None or dw is None
                or dx.op_type != "DequantizeLinear" or dw.op_type != "DequantizeLinear"
                or dw.input[0] not in inits):
            nodes.append(node)
            continue
        rewritten += 1
        tag = f"novnni{rewritten}"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError(f"{node.name}: auto_pad is not supported here; pads must be given")
        w = numpy_helper.to_array(inits[dw.input[0]]).astype(np.float32)  # Cout, Cin, kh, kw
        w_scale = numpy_helper.to_array(inits[dw.input[1]]).astype(np.float32).reshape(-1)
        x_scale = float(numpy_helper.to_array(inits[dx.input[1]]))
        x_zero = float(numpy_helper.to_array(inits[dx.input[2]]))
        cout, cin, kh, kw = w.shape
        order = [(i, j, c) for i in range(kh) for j in range(kw) for c in range(cin)]
        pairs = [order[k : k + 2] for k in range(0, len(order), 2)]
        if kh == kw == 1 and cin % 2 == 0:  # pair p = channels (2p, 2p+1): a grouped conv
            pair_w = w.reshape(cout, cin // 2, 2).transpose(1, 0, 2).reshape(-1, 2, 1, 1)
            pair_group = cin // 2
        else:
            pair_w = np.zeros((len(pairs) * cout, cin, kh, kw), np.float32)
            for p, pair in enumerate(pairs):
                for i, j, c in pair:
                    pair_w[p * cout : (p + 1) * cout, c, i, j] = w[:, c, i, j]
            pair_group = 1
        pads = list(attrs.get("pads", [0] * 4))
        half = len(pads) // 2
        nodes += [
            helper.make_node("Cast", [dx.input[0]], [f"{tag}_x"], to=onnx.TensorProto.FLOAT),
            # ORT pads a quantized input with its zero point (which contributes nothing)
            helper.make_node("Pad", [f"{tag}_x", const(f"{tag}_pads", np.array(
                [0, 0, *pads[:half], 0, 0, *pads[half:]], np.int64)),
                const(f"{tag}_zero", np.array(x_zero, np.float32))], [f"{tag}_xp"]),
            helper.make_node("Conv", [f"{tag}_xp", const(f"{tag}_w", pair_w)], [f"{tag}_pairs"],
                             group=pair_group, strides=attrs.get("strides", [1, 1]),
                             dilations=attrs.get("dilations", [1, 1]),
                             kernel_shape=[kh, kw]),
            helper.make_node("Clip", [f"{tag}_pairs",
                                      const(f"{tag}_lo", np.array(INT16_MIN, np.float32)),
                                      const(f"{tag}_hi", np.array(INT16_MAX, np.float32))],
                             [f"{tag}_sat"]),
            # (N, P x Cout, H, W) -> (N, P, Cout, H, W): H and W from the tensor itself
            helper.make_node("Shape", [f"{tag}_sat"], [f"{tag}_dims"], start=2),
            helper.make_node("Concat", [const(f"{tag}_lead", np.array(
                [0, len(pairs) if pair_group == 1 else cin // 2, cout], np.int64)),
                f"{tag}_dims"], [f"{tag}_shape"], axis=0),
            helper.make_node("Reshape", [f"{tag}_sat", f"{tag}_shape"], [f"{tag}_split"]),
            helper.make_node("ReduceSum", [f"{tag}_split",
                                           const(f"{tag}_axis", np.array([1], np.int64))],
                             [f"{tag}_raw"], keepdims=0),
            # (sum x w - zero_x sum w) x_scale w_scale + bias: what MLAS does with the sums
            helper.make_node("Sub", [f"{tag}_raw", const(f"{tag}_zsum", (
                x_zero * w.sum(axis=(1, 2, 3))).reshape(1, cout, 1, 1))], [f"{tag}_centred"]),
            helper.make_node("Mul", [f"{tag}_centred", const(f"{tag}_scale", (
                x_scale * w_scale).reshape(1, cout, 1, 1))],
                [f"{tag}_out" if len(node.input) > 2 else node.output[0]]),
        ]
        if len(node.input) > 2:  # the bias (dequantized already), per output channel
            nodes += [
                helper.make_node("Reshape", [node.input[2], const(
                    f"{tag}_bshape", np.array([1, cout, 1, 1], np.int64))], [f"{tag}_bias"]),
                helper.make_node("Add", [f"{tag}_out", f"{tag}_bias"], [node.output[0]]),
            ]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return {"convolutions_rewritten": rewritten}


def embedding_drift(here: tuple[np.ndarray, np.ndarray],
                    no_vnni: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """How far one picture's outputs (probabilities, embeddings) move between a CPU with VNNI
    (this one) and one without: the same picture embedded by two Lambda instances on the two
    kinds of machine."""
    (p_here, e_here), (p_other, e_other) = here, no_vnni
    cosine = (e_here * e_other).sum(axis=1)  # both L2-normalised
    return {"pictures": int(len(e_here)),
            "type_agreement": float((p_here.argmax(1) == p_other.argmax(1)).mean()),
            "embedding_cosine_min": float(cosine.min()),
            "embedding_cosine_p1": float(np.percentile(cosine, 1)),
            "embedding_cosine_median": float(np.median(cosine))}


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


NO_VNNI = ", no VNNI"  # the suffix of a variant as a CPU without VNNI computes it


def overall(decisions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ship int8 if some variant keeps every metric (the first such, in VARIANTS order): as
    computed here and, where it was scored, as a CPU without VNNI computes it (AWS Lambda's
    x86_64 machines do not all have VNNI, and one function may run on either kind)."""
    shippable = [v for v, d in decisions.items()
                 if not v.endswith(NO_VNNI) and d["ship"]
                 and decisions.get(v + NO_VNNI, {"ship": True})["ship"]]
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

    emulated = {variant + NO_VNNI: out_dir / f"{card.onnx_path.stem}-int8-{variant}-novnni.onnx"
                for variant in VARIANTS}
    for variant in VARIANTS:
        without_vnni(files[variant], emulated[variant + NO_VNNI])
    scores, test_outputs = {}, {}
    for name, path in {**files, **emulated}.items():
        result, test_emb, test_probs = v2.evaluate_artifact(
            path, pixels[test_idx], labels[test_idx], pixels[train_idx], labels[train_idx],
            copy_px, xs_px, xs_y, classes,
        )
        scores[name] = _scores(result, classes)
        test_outputs[name] = (test_probs, test_emb)
        log(f"{name}: scored")
    images = (pixels[test_idx][:32].astype(np.float32) / np.float32(255.0))
    timed = latency(files, images, reps_b1, reps_b32, 5, card.input_name)
    for name, path in files.items():
        scores[name] |= timed[name]
        scores[name]["file_mb"] = path.stat().st_size / 1e6
    for variant in VARIANTS:  # the same file; its emulation is not timed (float, slow)
        scores[variant + NO_VNNI]["file_mb"] = scores[variant]["file_mb"]
    log("timed")
    drift = {variant: embedding_drift(test_outputs[variant], test_outputs[variant + NO_VNNI])
             for variant in VARIANTS}
    import os

    decisions = {v: decide(scores["fp32"], scores[v]) for v in scores if v != "fp32"}
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
        "int8": {v: scores[v] for v in scores if v != "fp32"},
        "decisions": decisions,
        "decision": overall(decisions),
        "no_vnni_drift": drift,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "seconds": time.perf_counter() - started,
    }


# -- the table ----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return str(value)


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    fp, variants, decisions = results["fp32"], results["int8"], results["decisions"]
    first: dict[str, dict[str, Any]] = {}  # metric -> its first row (label, fp32, target)
    cells: dict[tuple[str, str], str] = {}  # (metric, variant) -> int8 cell
    for variant, decision in decisions.items():
        for row in decision["rows"]:
            first.setdefault(row["metric"], row)
            mark = "" if row["holds"] else " (NO)"
            cells[row["metric"], variant] = _cell(row["int8"]) + mark
    rows = [
        [row["label"], _cell(row["fp32"]),
         # a variant without the metric (an emulation is not timed): "-"
         *(cells.get((metric, v), "-") for v in decisions),
         "" if row["target"] is None else f"{row['op']} {row['target']:g}"]
        for metric, row in first.items()
    ]
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
    holding = [f"int8 {v}" for v, broken in d["broken"].items() if not broken]
    return "do not ship: " + "; ".join(
        [f"int8 {v} breaks {', '.join(broken)}" for v, broken in d["broken"].items() if broken]
        + ([f"{' and '.join(holding)} keep every target as computed where they were scored"]
           if holding else []))


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
        *(
            f"The same picture embedded by int8 {v} on a CPU with VNNI and on one without: "
            f"embedding cosine median {d['embedding_cosine_median']:.3f}, 1st percentile "
            f"{d['embedding_cosine_p1']:.3f}, lowest {d['embedding_cosine_min']:.3f} "
            f"({d['pictures']} test pictures); type agreement {d['type_agreement']:.3f}."
            for v, d in results.get("no_vnni_drift", {}).items()
        ),
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
