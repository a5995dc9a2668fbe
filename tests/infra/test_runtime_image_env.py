"""The serving image's Python environment, proven without Docker.

`pip install --require-hashes -r requirements/runtime.lock --target DIR` exactly as
lambdas/Dockerfile does (on this machine's Python 3.11; test_platforms.py resolves the same lock
for the functions' real platform, Python 3.12 on Amazon Linux 2023), then
a Python that cannot see this project's virtualenv (`-S`: no site-packages) imports the predict
and embed handlers from DIR + the layer code + the repo root (the image's task root has the
same three), serves a real POST /predict on the tiny model against a real PostgreSQL, and proves
TensorFlow and Keras are not there. The environment's size is reported (and bounded).
The authorizer's cold import is measured the same way, and its import closure kept small.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.conftest import REPO_ROOT

pytestmark = pytest.mark.slow
SIZE_LIMIT_MB = 250  # Lambda's unzipped limit for zip+layers; the image should stay as lean

PROBE = r"""
import base64, io, json, os, sys
sys.path[:0] = json.loads(os.environ["PROBE_PATH"])
assert not any(".venv" in p or "site-packages" in p for p in sys.path), sys.path

for name in ("tensorflow", "keras", "tf2onnx"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} is importable in the serving environment")

from PIL import Image
from artlens.index.embeddings import EmbeddingStore
from artlens.models.classifier import get_classifier
from artlens.models.versions import ensure_model_version

classifier = get_classifier(os.environ["MODEL_CARD_PATH"], 1)
store = EmbeddingStore(os.environ["DATABASE_URL"])
store.migrate()
ensure_model_version(store, classifier)

from lambdas import embed, predict  # embed builds its clients at import: settings must hold

buffer = io.BytesIO()
Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, "PNG")
event = {
    "httpMethod": "POST", "resource": "/predict", "path": "/predict",
    "headers": {"Content-Type": "image/png"}, "queryStringParameters": {"neighbors": "3"},
    "body": base64.b64encode(buffer.getvalue()).decode(), "isBase64Encoded": True,
}

class Context:
    function_name = "artlens-predict"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:artlens-predict"
    aws_request_id = "probe"

answer = predict.handler(event, Context())
modules = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"answer": answer, "modules": modules,
                  "embed_handler": callable(embed.handler)}))
"""


@pytest.fixture(scope="module")
def runtime_env(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("image-task-root")
    # The Dockerfile's RUN line, with pip's cache allowed here (the image disables it).
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--require-hashes",
         "--only-binary=:all:", "-r", str(REPO_ROOT / "requirements" / "runtime.lock"),
         "--target", str(target)],
        check=True, timeout=600,
    )
    return target


def probe_path(runtime_env: Path) -> str:
    """The image's task root holds the requirements, artlens and lambdas/ side by side."""
    return json.dumps([str(runtime_env), str(REPO_ROOT / "layers" / "python"), str(REPO_ROOT)])


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def test_image_environment_serves_predict_without_tensorflow(
    runtime_env, tiny_model_card, pg_dsn, tmp_path
):
    size = size_mb(runtime_env)
    print(f"\nserving environment (pip --target, as in lambdas/Dockerfile): {size:.1f} MB")
    assert size < SIZE_LIMIT_MB
    assert not list(runtime_env.glob("tensorflow*")) and not list(runtime_env.glob("keras*"))

    env = {
        "PATH": "/usr/bin:/bin",
        "PROBE_PATH": probe_path(runtime_env),
        "MODEL_CARD_PATH": str(tiny_model_card),
        "DATABASE_URL": pg_dsn,
        "LOCAL_LAKE_DIR": str(tmp_path / "lake"),
        "LOCAL_URL_KEY": "probe-url-signing-key",
        "CORS_ORIGIN": "https://art.example",
        "POWERTOOLS_SERVICE_NAME": "artlens-probe",
    }
    completed = subprocess.run(
        [sys.executable, "-S", "-c", PROBE],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    answer = result["answer"]
    assert answer["statusCode"] == 200, answer
    body = json.loads(answer["body"])
    assert body["label"] in {"drawings", "engraving", "iconography", "painting", "sculpture"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-3
    assert answer["headers"]["Access-Control-Allow-Origin"] == "https://art.example"
    assert result["embed_handler"] is True
    assert "onnxruntime" in result["modules"] and "tensorflow" not in result["modules"]


AUTHORIZER_PROBE = r"""
import json, os, sys, time
sys.path[:0] = json.loads(os.environ["PROBE_PATH"])
started = time.perf_counter()
import lambdas.authorizer
elapsed_ms = (time.perf_counter() - started) * 1000
print(json.dumps({"ms": elapsed_ms, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""
# What the authorizer must not load on a cold start: model inference, image decoding, the
# database driver and arrays belong to predict/embed (they cost most of a cold start).
HEAVY_MODULES = {"onnxruntime", "numpy", "PIL", "psycopg2", "pgvector"}


def test_authorizer_cold_import_stays_small(runtime_env, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PROBE_PATH": probe_path(runtime_env),
           "POWERTOOLS_SERVICE_NAME": "artlens-authorizer", "PYTHONDONTWRITEBYTECODE": "1"}
    runs = []
    for _ in range(2):  # the first run also writes nothing (no bytecode cache): both are cold
        completed = subprocess.run(
            [sys.executable, "-S", "-c", AUTHORIZER_PROBE],
            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )
        assert completed.returncode == 0, completed.stderr[-4000:]
        runs.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    loaded = set(runs[-1]["modules"])
    print(f"\nauthorizer cold import: {min(r['ms'] for r in runs):.0f} ms, "
          f"{len(loaded)} top-level modules")
    assert not HEAVY_MODULES & loaded, sorted(HEAVY_MODULES & loaded)
    assert "artlens" in loaded and "aws_lambda_powertools" in loaded
