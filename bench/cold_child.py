"""python -m bench.cold_child runtime|tensorflow PICTURE: one cold start, then exit.

Run by bench.cold_start in a fresh interpreter. Prints one JSON line as soon as the first
answer exists; the parent takes the wall time from spawning to that line. Nothing heavy is
imported at the top so that the measured imports are those of the serving path.

runtime:    the predict handler as the Lambda runs it (environment from the parent).
tensorflow: the study's way: import TensorFlow/Keras, load artlens.keras, model.predict, then the
            same database query through artlens.index.
"""

from __future__ import annotations

import sys
import time

STARTED = time.perf_counter()


def _runtime(picture: bytes) -> dict:
    import base64

    from lambdas import predict

    imported = time.perf_counter()
    event = {
        "httpMethod": "POST", "resource": "/predict", "path": "/predict",
        "headers": {"content-type": "image/jpeg"}, "queryStringParameters": None,
        "body": base64.b64encode(picture).decode(), "isBase64Encoded": True,
        "requestContext": {"requestId": "cold", "authorizer": {"principalId": "bench"}},
    }

    class Context:
        function_name = "artlens-predict"
        memory_limit_in_mb = 1024
        invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:artlens-predict"
        aws_request_id = "cold"

    # Imported by the first request anyway (the ONNX session); done here to time it apart.
    import onnxruntime  # noqa: F401

    runtime_imported = time.perf_counter()
    response = predict.handler(event, Context())
    return {
        "status": response["statusCode"],
        "imports_s": imported - STARTED,
        "onnxruntime_import_s": runtime_imported - imported,
        "first_request_s": time.perf_counter() - runtime_imported,  # session, DB, one predict
    }


def _tensorflow(picture: bytes) -> dict:
    import os

    import keras
    import numpy as np
    import tensorflow  # noqa: F401  (the Keras backend; imported as the study's server did)

    from artlens.image import image_to_input
    from artlens.index.embeddings import EmbeddingStore

    imported = time.perf_counter()
    card_dir = os.path.dirname(os.environ["MODEL_CARD_PATH"])
    model = keras.models.load_model(os.path.join(card_dir, "artlens.keras"), compile=False)
    store = EmbeddingStore(os.environ["DATABASE_URL"])
    size = int(model.input_shape[1])  # the model's own input size (v1 150, v2 160)
    batch = image_to_input(picture, size=size)[np.newaxis]
    probabilities, embeddings = model.predict(batch, verbose=0)
    neighbours = store.nearest(embeddings[0], k=5)
    return {"status": 200 if len(neighbours) == 5 else 500, "imports_s": imported - STARTED}


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    with open(path, "rb") as fh:
        data = fh.read()
    result = (_runtime if kind == "runtime" else _tensorflow)(data)
    result["in_process_s"] = time.perf_counter() - STARTED
    import json

    print("ANSWER " + json.dumps(result), flush=True)
