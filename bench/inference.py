"""ONNX Runtime (as served) vs Keras on the same model file pair and the same pictures.

The study served the Keras model with `model.predict`; that is the baseline. `model(x)` (the
direct call, no per-call tf.data/step-function set-up) is reported too, to be fair to Keras.
ONNX Runtime runs with ONE intra-op thread, as the predict Lambda does (ORT_THREADS=1);
Keras uses every core. The figure with all cores for ORT is reported beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.common import Bench, p50, ratio, time_calls


def run(bench: Bench) -> dict[str, Any]:
    from artlens.models.classifier import OnnxClassifier as Classifier

    sizes = bench.sizes
    images = bench.model_inputs(32)
    singles = [images[i : i + 1] for i in range(len(images))]

    served = Classifier(bench.card, threads=1)
    all_cores = Classifier(bench.card, threads=bench.threads)
    onnx_b1 = time_calls(
        lambda i: served.predict(singles[i % 32]), sizes.onnx_reps_b1, sizes.warmup
    )
    onnx_b32 = time_calls(lambda i: served.predict(images), sizes.onnx_reps_b32, sizes.warmup)
    onnx_b1_all = time_calls(
        lambda i: all_cores.predict(singles[i % 32]), sizes.onnx_reps_b1, sizes.warmup
    )
    onnx_b32_all = time_calls(lambda i: all_cores.predict(images), sizes.onnx_reps_b32, 2)

    import keras

    model = keras.models.load_model(bench.model.keras_path, compile=False)
    keras_b1 = time_calls(
        lambda i: model.predict(singles[i % 32], verbose=0), sizes.keras_reps_b1, sizes.warmup
    )
    keras_b32 = time_calls(lambda i: model.predict(images, verbose=0), sizes.keras_reps_b32, 2)
    call_b1 = time_calls(
        lambda i: model(singles[i % 32], training=False), sizes.keras_reps_b1, sizes.warmup
    )
    call_b32 = time_calls(lambda i: model(images, training=False), sizes.keras_reps_b32, 2)

    onnx_probs = served.predict(images).probabilities
    keras_probs = np.asarray(model(images, training=False)[0])

    results = {
        "onnx_ms_b1": p50(onnx_b1),
        "keras_ms_b1": p50(keras_b1),
        "ratio_b1": ratio(p50(keras_b1), p50(onnx_b1)),
        "onnx_ms_b32": p50(onnx_b32),
        "keras_ms_b32": p50(keras_b32),
        "ratio_b32": ratio(p50(keras_b32), p50(onnx_b32)),
        "keras_call_ms_b1": p50(call_b1),
        "keras_call_ms_b32": p50(call_b32),
        "ratio_call_b1": ratio(p50(call_b1), p50(onnx_b1)),
        "onnx_all_cores_ms_b1": p50(onnx_b1_all),
        "onnx_all_cores_ms_b32": p50(onnx_b32_all),
        "onnx_ms_per_image_b32": p50(onnx_b32) / 32,
        "max_abs_diff_probabilities": float(np.max(np.abs(onnx_probs - keras_probs))),
        "onnx_threads": 1,
        "keras_threads": "TensorFlow default (all cores)",
        "repetitions": {
            "onnx_b1": sizes.onnx_reps_b1, "onnx_b32": sizes.onnx_reps_b32,
            "keras_b1": sizes.keras_reps_b1, "keras_b32": sizes.keras_reps_b32,
        },
        "statistic": "median wall ms per call, after warm-up",
    }
    return results
