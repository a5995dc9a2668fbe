"""The model's arithmetic, counted from the ONNX graph, and the GFLOP/s ONNX Runtime reaches.

FLOPs: 2 x multiply-accumulates of every Conv, Gemm and MatMul, with shapes from the `onnx`
package's shape inference at a fixed batch; a grouped convolution multiplies only C_in/group
input channels per output (a depthwise 3x3 is 9 MACs per output value, not 9 x C_in).
Element-wise ops, pooling and softmax are left out: they are memory-bound and small here.

Peak: a well-known dense kernel, numpy's float32 matmul (OpenBLAS sgemm) of 2048 x 2048, on one
thread (OPENBLAS/OMP/MKL threads = 1, in a child process so this process's BLAS pool is not
touched), best of several runs. ONNX Runtime's own MatMul of the same size is reported beside it.
The ratio achieved / peak says how much of one core the served model uses, batch 1 and 32.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Bench, child_env, p50, time_calls

DENSE_OPS = ("Conv", "Gemm", "MatMul")
PEAK_SIZE = 2048
PEAK_RUNS = 7
BATCHES = (1, 32)


# -- counting -----------------------------------------------------------------------------


def _fixed_batch(model: Any, batch: int) -> Any:
    """A copy of the model whose inputs have `batch` as their first dimension, shape-inferred."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):  # a fixed first dim is not a batch
            dims[0].Clear()
            dims[0].dim_value = batch
    # data_prop: the layout branch reshapes by a computed Shape -> Concat, which plain
    # inference leaves unknown
    return onnx.shape_inference.infer_shapes(fixed, strict_mode=True, data_prop=True)


def _shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor whose shape is fully known: initializers, inputs, inferred values, outputs."""
    shapes: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in model.graph.initializer}
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def _attr(node: Any, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


def _need(shapes: dict[str, tuple[int, ...]], name: str, node: Any) -> tuple[int, ...]:
    if name not in shapes:
        raise ValueError(f"{node.op_type} {node.name!r}: shape of {name!r} not inferred")
    return shapes[name]


def node_flops(node: Any, shapes: dict[str, tuple[int, ...]]) -> tuple[str, int]:
    """(kind, FLOPs) of one Conv, Gemm or MatMul node: 2 x its multiply-accumulates."""
    if node.op_type == "Conv":
        weight = _need(shapes, node.input[1], node)  # [M, C_in / group, *kernel]
        out = _need(shapes, node.output[0], node)  # [N, M, *spatial]
        group = _attr(node, "group", 1)
        macs = int(np.prod(out, dtype=np.int64)) * int(np.prod(weight[1:], dtype=np.int64))
        # depthwise: one input channel per group, as many groups as channels
        kind = "Conv (depthwise)" if group > 1 and weight[1] == 1 else (
            "Conv (grouped)" if group > 1 else "Conv")
        return kind, 2 * macs
    if node.op_type == "Gemm":
        a = _need(shapes, node.input[0], node)
        b = _need(shapes, node.input[1], node)
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _attr(node, "transB", 0) else b[1]
        return "Gemm", 2 * m * n * k
    if node.op_type == "MatMul":
        a = _need(shapes, node.input[0], node)
        out = _need(shapes, node.output[0], node)
        # every output value is a dot product over A's last axis (broadcast batches included)
        return "MatMul", 2 * int(np.prod(out, dtype=np.int64)) * int(a[-1])
    raise ValueError(f"not a dense op: {node.op_type}")


def graph_flops(model: Any, batch: int = 1) -> dict[str, Any]:
    """FLOPs of one forward pass of `model` (an onnx.ModelProto) at `batch`, by kind of op."""
    inferred = _fixed_batch(model, batch)
    shapes = _shapes(inferred)
    by_kind: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for node in inferred.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in DENSE_OPS:
            continue
        kind, flops = node_flops(node, shapes)
        by_kind[kind] += flops
        nodes[kind] += 1
    return {"batch": batch, "flops": int(sum(by_kind.values())), "by_kind": dict(by_kind),
            "nodes": dict(nodes)}


def file_flops(path: Path, batch: int = 1) -> dict[str, Any]:
    import onnx

    return graph_flops(onnx.load(str(path)), batch)


# -- the CPU's peak -----------------------------------------------------------------------

# Run in a child whose BLAS pools are pinned to one thread before numpy loads.
_PEAK_CHILD = """
import json, sys, time
import numpy as np
n, runs = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
c = np.empty((n, n), np.float32)
np.matmul(a, b, out=c)
best = []
for _ in range(runs):
    t = time.perf_counter(); np.matmul(a, b, out=c); best.append(time.perf_counter() - t)
numpy_s = min(best)
import onnxruntime as ort
from onnx import TensorProto, helper
g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
    [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
    [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
s.run(None, {"a": a, "b": b})
took = []
for _ in range(runs):
    t = time.perf_counter(); s.run(None, {"a": a, "b": b}); took.append(time.perf_counter() - t)
flops = 2.0 * n ** 3
print(json.dumps({"numpy_gflops": flops / numpy_s / 1e9, "numpy_s": best,
                  "ort_matmul_gflops": flops / min(took) / 1e9}))
"""


def single_core_peak(size: int = PEAK_SIZE, runs: int = PEAK_RUNS) -> dict[str, Any]:
    """Best-of-`runs` GFLOP/s of a float32 size x size matmul on one thread (numpy and ORT)."""
    one = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, str(size), str(runs)],
        env=child_env(**one), capture_output=True, text=True, check=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "kernel": f"numpy float32 matmul {size}x{size} (OpenBLAS sgemm), 1 thread, best of {runs}",
        "gflops": out["numpy_gflops"],
        "ort_matmul_gflops": out["ort_matmul_gflops"],
        "runs_s": out["numpy_s"],
    }


# -- the section --------------------------------------------------------------------------


def run(bench: Bench) -> dict[str, Any]:
    from artlens.models.classifier import OnnxClassifier

    sizes = bench.sizes
    counted = file_flops(bench.card.onnx_path, batch=1)
    per_image = counted["flops"]
    check = file_flops(bench.card.onnx_path, batch=BATCHES[-1])["flops"]
    if check != per_image * BATCHES[-1]:  # the graph has no batch-coupled ops; say so if not
        raise AssertionError(f"FLOPs at batch 32 ({check}) != 32 x batch 1 ({per_image})")
    peak = single_core_peak(runs=3 if sizes.quick else PEAK_RUNS)

    images = bench.model_inputs(BATCHES[-1])
    singles = [images[i : i + 1] for i in range(len(images))]
    results: dict[str, Any] = {
        "model_gflop_per_image": per_image / 1e9,
        "model_gflop_by_kind": {k: v / 1e9 for k, v in counted["by_kind"].items()},
        "model_dense_nodes": counted["nodes"],
        "peak_gflops_1core": peak["gflops"],
        "peak_gflops_2cores": 2 * peak["gflops"],  # what 2 threads could reach at most
        "peak_kernel": peak["kernel"],
        "peak_runs_s": peak["runs_s"],
        "ort_matmul_gflops_1core": peak["ort_matmul_gflops"],
    }
    for threads in sorted({1, min(2, bench.threads)}):
        classifier = OnnxClassifier(bench.card, threads=threads)
        b1 = time_calls(lambda i, c=classifier: c.predict(singles[i % len(singles)]),
                        sizes.onnx_reps_b1, sizes.warmup)
        b32 = time_calls(lambda i, c=classifier: c.predict(images), sizes.onnx_reps_b32, 2)
        suffix = "" if threads == 1 else f"_{threads}t"
        for batch, ms in ((1, b1), (BATCHES[-1], b32)):
            gflops = per_image * batch / (p50(ms) / 1000.0) / 1e9
            results[f"ms_b{batch}{suffix}"] = p50(ms)
            results[f"gflops_b{batch}{suffix}"] = gflops
            # against one core's peak per thread: 2 threads can reach at most 2 x peak
            results[f"pct_peak_b{batch}{suffix}"] = 100.0 * gflops / (peak["gflops"] * threads)
            # the best call, like the peak's best run: what a core does when nothing preempts it
            best = per_image * batch / (float(ms.min()) / 1000.0) / 1e9
            results[f"best_gflops_b{batch}{suffix}"] = best
            results[f"best_pct_peak_b{batch}{suffix}"] = 100.0 * best / (peak["gflops"] * threads)
    results["statistic"] = ("median wall ms per call after warm-up (best_*: the fastest call); "
                            "GFLOP/s = counted FLOPs / that time; % of peak = against threads x "
                            "single-core peak")
    return results


def main(argv: list[str] | None = None) -> int:
    """python -m bench.flops [ONNX]: print the counted FLOPs of a graph (default: shipped)."""
    from bench.common import SHIPPED_CARD

    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else SHIPPED_CARD.with_name(
        json.loads(SHIPPED_CARD.read_text())["onnx_file"])
    counted = file_flops(path)
    print(f"{path}: {counted['flops'] / 1e9:.4f} GFLOP per image")
    for kind, flops in sorted(counted["by_kind"].items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<18} {flops / 1e9:8.4f} GFLOP in {counted['nodes'][kind]} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
