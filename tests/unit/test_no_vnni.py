"""bench.quantize.without_vnni: the int8 graph as an x86 CPU without VNNI computes it (VPMADDUBSW
saturates each pair of products to int16). Checked against a numpy model of that arithmetic on
small quantized convolutions built here, run by ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.quantize import INT16_MAX, INT16_MIN, without_vnni

X_SCALE, X_ZERO = 0.05, 3


def qdq_conv(weights: np.ndarray, pads: list[int], group: int = 1):
    """x -> QuantizeLinear/DequantizeLinear (uint8) -> Conv with per-channel int8 weights."""
    cout = weights.shape[0]
    w_scale = np.linspace(0.01, 0.02, cout).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(X_SCALE, np.float32), "xs"),
        numpy_helper.from_array(np.array(X_ZERO, np.uint8), "xz"),
        numpy_helper.from_array(weights.astype(np.int8), "wq"),
        numpy_helper.from_array(w_scale, "ws"),
        numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
        numpy_helper.from_array(np.arange(cout, dtype=np.float32) / 10, "bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd", "bias"], ["y"], pads=pads, group=group,
                         kernel_shape=list(weights.shape[2:])),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w_scale


def run(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def saturating_reference(q: np.ndarray, weights: np.ndarray, w_scale, pads) -> np.ndarray:
    """The convolution as MLAS's U8S8 kernel computes it without VNNI: im2col in (row, column,
    channel) order, padded with the zero point; neighbouring products summed in pairs and
    clamped to int16; then the zero-point correction, scales and bias."""
    n, cin, h, w = q.shape
    cout, _, kh, kw = weights.shape
    top, left, bottom, right = pads
    padded = np.pad(q.astype(np.int64), ((0, 0), (0, 0), (top, bottom), (left, right)),
                    constant_values=X_ZERO)
    out_h, out_w = padded.shape[2] - kh + 1, padded.shape[3] - kw + 1
    k = weights.transpose(0, 2, 3, 1).reshape(cout, -1).astype(np.int64)  # (row, col, channel)
    y = np.zeros((n, cout, out_h, out_w), np.float64)
    for b in range(n):
        for i in range(out_h):
            for j in range(out_w):
                a = padded[b, :, i : i + kh, j : j + kw].transpose(1, 2, 0).reshape(-1)
                products = a * k
                if products.shape[1] % 2:
                    products = np.concatenate([products, np.zeros((cout, 1), np.int64)], 1)
                pairs = np.clip(products[:, 0::2] + products[:, 1::2], INT16_MIN, INT16_MAX)
                raw = pairs.sum(axis=1) - X_ZERO * k.sum(axis=1)
                y[b, :, i, j] = raw * X_SCALE * w_scale + np.arange(cout) / 10
    return y.astype(np.float32)


@pytest.mark.parametrize(("kernel", "pads"), [((1, 1), [0, 0, 0, 0]), ((3, 3), [0, 0, 1, 1])])
def test_pairs_of_large_products_saturate_to_int16_as_without_vnni(tmp_path, kernel, pads):
    rng = np.random.default_rng(7)
    cin, cout = 6, 4
    weights = rng.integers(-127, 128, (cout, cin, *kernel))
    weights[0] = 127  # with inputs near 255, the pairs of this channel exceed int16
    q = rng.integers(0, 256, (2, cin, 5, 5)).astype(np.uint8)
    q[:, :, :2] = 255
    x = ((q.astype(np.float32) - X_ZERO) * X_SCALE).astype(np.float32)
    model, w_scale = qdq_conv(weights, pads)
    exact = tmp_path / "exact.onnx"
    exact.write_bytes(model.SerializeToString())
    emulated = tmp_path / "novnni.onnx"

    assert without_vnni(exact, emulated) == {"convolutions_rewritten": 1}
    expected = saturating_reference(q, weights, w_scale, pads)
    got = run(emulated, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    # The premise: ORT here (VNNI, or exact integer sums) does not saturate that channel.
    assert np.abs(run(exact, x)[:, 0] - got[:, 0]).max() > 1.0


def test_without_saturation_the_copy_computes_what_the_int8_graph_computes(tmp_path):
    rng = np.random.default_rng(8)
    weights = rng.integers(-60, 61, (5, 8, 1, 1))  # |pair| <= 255 x 120 < 32767
    q = rng.integers(0, 256, (2, 8, 6, 6)).astype(np.uint8)
    x = ((q.astype(np.float32) - X_ZERO) * X_SCALE).astype(np.float32)
    model, _ = qdq_conv(weights, [0, 0, 0, 0])
    exact = tmp_path / "exact.onnx"
    exact.write_bytes(model.SerializeToString())
    without_vnni(exact, tmp_path / "novnni.onnx")
    np.testing.assert_allclose(run(tmp_path / "novnni.onnx", x), run(exact, x), rtol=1e-5,
                               atol=1e-3)


def test_depthwise_convolutions_are_left_alone(tmp_path):
    weights = np.full((3, 1, 3, 3), 127)
    model, _ = qdq_conv(weights, [1, 1, 1, 1], group=3)
    path = tmp_path / "dw.onnx"
    path.write_bytes(model.SerializeToString())
    assert without_vnni(path, tmp_path / "out.onnx") == {"convolutions_rewritten": 0}
