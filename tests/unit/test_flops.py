"""bench.flops counts FLOPs from an ONNX graph: 2 x MACs of Conv (grouped convs per group),
Gemm and MatMul, at the batch asked for. Checked on small graphs with hand-computed numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.flops import file_flops, graph_flops


def _weights(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def conv_gemm_model() -> onnx.ModelProto:
    """x [N,3,8,8] -> Conv 3x3, 3->4, stride 1, pad 1 -> [N,4,8,8]
    -> depthwise Conv 3x3, group 4, stride 2, pad 1 -> [N,4,4,4] -> Flatten [N,64]
    -> Gemm with B [10,64] (transB) -> [N,10] -> MatMul with [10,5] -> [N,5]."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[2, 2], group=4),
        helper.make_node("Flatten", ["c2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "wm"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        initializer=[_weights("w1", (4, 3, 3, 3)), _weights("b1", (4,)),
                     _weights("w2", (4, 1, 3, 3)), _weights("wg", (10, 64)),
                     _weights("bg", (10,)), _weights("wm", (10, 5))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


# per picture: 2 x MACs
CONV = 2 * (4 * 8 * 8) * (3 * 3 * 3)  # 256 outputs x 27 MACs = 13,824
DEPTHWISE = 2 * (4 * 4 * 4) * (1 * 3 * 3)  # 64 outputs x 9 MACs (one channel each) = 1,152
GEMM = 2 * 10 * 64  # 1,280
MATMUL = 2 * 5 * 10  # 100


def test_conv_gemm_matmul_flops_are_exact_at_batch_1():
    counted = graph_flops(conv_gemm_model(), batch=1)
    assert counted["by_kind"] == {"Conv": CONV, "Conv (depthwise)": DEPTHWISE,
                                  "Gemm": GEMM, "MatMul": MATMUL}
    assert counted["flops"] == CONV + DEPTHWISE + GEMM + MATMUL == 16_356
    assert counted["nodes"] == {"Conv": 1, "Conv (depthwise)": 1, "Gemm": 1, "MatMul": 1}


def test_flops_scale_with_the_batch_and_the_model_is_left_untouched():
    model = conv_gemm_model()
    before = model.SerializeToString()
    assert graph_flops(model, batch=32)["flops"] == 32 * 16_356
    # the batch is fixed on a copy: the caller's graph keeps its symbolic batch
    assert model.SerializeToString() == before


def test_transposed_gemm_operands_and_a_file_on_disk(tmp_path):
    # A stored [K, M] with transA: M = 6, K = 4; B [4, 3]: 2 x 6 x 3 x 4 = 144
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a", "b"], ["y"], transA=1)], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 3])],
        initializer=[_weights("b", (4, 3))],
    )
    path = tmp_path / "gemm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert file_flops(path)["flops"] == 144


def test_a_shape_inference_cannot_resolve_is_an_error_not_a_silent_zero():
    # Reshape by a shape fed at run time: the MatMul's operands have no static shape
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["a", "s"], ["r"]),
         helper.make_node("MatMul", ["r", "w"], ["y"])], "unknown",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[_weights("w", (4, 3))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="not inferred"):
        graph_flops(model, batch=2)


# -- the int8 rule and the table rows that carry these figures ---------------------------


def test_int8_ships_only_if_every_metric_still_holds():
    from bench.quantize import decide, overall

    fp32 = {"accuracy": 0.986, "macro_f1": 0.98, "min_recall": 0.97, "ece": 0.009,
            "type_p_at_5": 0.986, "copy_recall_at_1": 0.9797, "cross_source_drawings": 0.3,
            "ms_b1": 3.7, "ms_b32": 140.0}
    good = dict(fp32, accuracy=0.975, ece=0.02, copy_recall_at_1=0.9797, cross_source_drawings=0.3,
                ms_b1=1.8, ms_b32=57.0)
    assert decide(fp32, good)["ship"]
    # a target fp32 meets must stay met: 0.969 < 0.97
    assert decide(fp32, dict(good, accuracy=0.969))["broken"] == ["accuracy"]
    # a target fp32 already misses (copy recall 0.9797 < 0.98) must not get worse
    worse = decide(fp32, dict(good, copy_recall_at_1=0.9744))
    assert worse["broken"] == ["copy recall@1"] and not worse["ship"]
    # and int8 must not be slower
    assert decide(fp32, dict(good, ms_b32=150.0))["broken"] == ["inference, batch 32, 1 thread"]
    verdict = overall({"all": worse, "trunk": decide(fp32, good)})
    assert verdict["ship"] and verdict["variant"] == "trunk"
    assert not overall({"all": worse})["ship"]
    # a variant ships only if it also holds as a CPU without VNNI computes it, where scored
    assert not overall({"trunk": decide(fp32, good), "trunk, no VNNI": worse})["ship"]
    assert overall({"trunk": decide(fp32, good), "trunk, no VNNI": decide(fp32, good)})["ship"]


def test_gflops_rows_show_a_share_of_the_peak_and_int8_rows_a_speed_up():
    from bench import report

    results = {
        "flops": {"model_gflop_per_image": 0.306, "gflops_b1": 82.5, "peak_gflops_1core": 102.6,
                  "gflops_b1_2t": 115.0, "peak_gflops_2cores": 205.2},
        "quantize": {"int8_ms_b1": 1.8, "fp32_ms_b1": 3.6, "int8_mb": 2.5, "fp32_mb": 10.0},
    }
    table = {row[0]: row for row in report.rows(results)}
    assert table["ORT GFLOP/s, batch 1, 1 thread"][3] == "80% of peak"
    assert table["ORT GFLOP/s, batch 1, 2 threads"][3] == "56% of peak"
    assert table["int8 (all ops), batch 1"][3] == "2.0x"
    assert table["int8 (all ops) ONNX file"][3] == "4.0x"


def test_int8_table_has_its_own_markers(tmp_path):
    from bench import report

    doc = tmp_path / "performance.md"
    begin, end = report.INT8_MARKERS
    doc.write_text(f"{report.BEGIN}\nbench\n{report.END}\n{begin}\nold\n{end}\n")
    assert report.update_doc({}, doc, markdown="| new |", markers=report.INT8_MARKERS)
    assert doc.read_text() == f"{report.BEGIN}\nbench\n{report.END}\n{begin}\n| new |\n{end}\n"
