"""Cold start (fresh process -> first answer) and install size: our runtime vs a Keras runtime.

Cold start: the wall time from spawning a new interpreter to its first answer (imports, model
load, database connect, one predict + nearest-5), with a warm OS page cache, as a Lambda
container that is reused after a deploy sees it. Median over a few runs.

Handler imports: the wall time of `import lambdas.<handler>` in a fresh interpreter, for the
authorizer (which runs before every uncached request and must stay free of numpy and psycopg2)
beside the predict handler (the whole serving stack) as its baseline. Median over a few runs.

Install size: what each runtime carries, measured from the installed distributions in this
virtualenv (every file their RECORD lists, .pyc included), over the dependency closure of the
roots. Our runtime's roots are requirements/runtime.txt; the Keras runtime's are the same with
onnxruntime replaced by tensorflow-cpu + keras. (`pip install --target` needs the package index,
which this machine cannot reach; the installed files are the same wheels' contents.)
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    REPO,
    URL_KEY,
    Bench,
    build_index,
    child_env,
    copy_rows,
    p50,
    ratio,
    ready_store,
)

RUNTIME_REQUIREMENTS = REPO / "requirements" / "runtime.txt"
TF_SWAP = ("onnxruntime", ("tensorflow-cpu", "keras"))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_roots(path: Path) -> list[str]:
    roots = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            roots.append(_normalise(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]))
    return roots


def dependency_closure(roots: list[str]) -> set[str]:
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = _normalise(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for spec in dist.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def installed_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        dist = metadata.distribution(name)
        for file in dist.files or []:
            located = Path(dist.locate_file(file))
            if located.is_file():
                total += located.stat().st_size
    return total / 1e6


def install_sizes() -> dict[str, Any]:
    runtime_roots = requirement_roots(RUNTIME_REQUIREMENTS)
    swapped, extra = TF_SWAP
    tf_roots = [r for r in runtime_roots if r != swapped] + list(extra)
    runtime = dependency_closure(runtime_roots)
    tensorflow = dependency_closure(tf_roots)
    return {
        "runtime_install_mb": installed_mb(runtime),
        "tensorflow_install_mb": installed_mb(tensorflow),
        "onnxruntime_only_mb": installed_mb(dependency_closure(["onnxruntime"])),
        "tensorflow_keras_only_mb": installed_mb(dependency_closure(list(extra))),
        "install_method": "sum of installed files (dist RECORD) over the dependency closure in "
        ".venv; runtime = requirements/runtime.txt, tensorflow = the same with onnxruntime "
        "replaced by tensorflow-cpu + keras",
        "runtime_distributions": len(runtime),
        "tensorflow_distributions": len(tensorflow),
    }


def one_cold_start(kind: str, picture: Path, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.cold_child", kind, str(picture)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert child.stdout is not None
    answer = None
    for line in child.stdout:
        if line.startswith("ANSWER "):
            answer = line
            break
    elapsed = time.perf_counter() - started
    child.stdout.close()
    child.wait(timeout=120)
    if answer is None:
        raise RuntimeError(f"cold start ({kind}) gave no answer; exit code {child.returncode}")
    import json

    result = json.loads(answer.removeprefix("ANSWER "))
    if result["status"] != 200:
        raise RuntimeError(f"cold start ({kind}) answered {result}")
    return {"wall_s": elapsed, **result}


IMPORT_PROBE = (
    "import sys, time; started = time.perf_counter(); "
    "import importlib; importlib.import_module(sys.argv[1]); "
    "print(time.perf_counter() - started)"
)


def handler_import_s(module: str, runs: int) -> float:
    """Median seconds to import one handler module in a fresh interpreter (warm page cache:
    one unmeasured import first). Importing builds nothing: the handlers start lazily."""
    env = child_env(LOG_LEVEL="WARNING")

    def once() -> float:
        completed = subprocess.run(
            [sys.executable, "-c", IMPORT_PROBE, module], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=120, check=True,
        )
        return float(completed.stdout.strip().splitlines()[-1])

    once()
    return p50([once() for _ in range(runs)])


def handler_imports(runs: int) -> dict[str, Any]:
    authorizer = handler_import_s("lambdas.authorizer", runs)
    predict = handler_import_s("lambdas.predict", runs)
    return {
        "authorizer_import_s": authorizer,
        "predict_import_s": predict,
        "authorizer_import_ratio": ratio(predict, authorizer),
    }


def run(bench: Bench) -> dict[str, Any]:
    dsn = bench.pg.new_database("cold")
    store = ready_store(dsn, bench.card.version, bench.card.embedding_size)
    store.close()
    embedded = bench.embedded
    copy_rows(dsn, bench.card.version, embedded.embeddings, embedded.labels)
    from artlens.index.embeddings import HNSW_EF_CONSTRUCTION, HNSW_M

    build_index(dsn, HNSW_M, HNSW_EF_CONSTRUCTION)
    picture = bench.workdir / "cold.jpg"
    picture.write_bytes(bench.small_jpegs[0])
    env = child_env(
        MODEL_CARD_PATH=str(bench.model.card_path), DATABASE_URL=dsn,
        LOCAL_LAKE_DIR=str(bench.workdir / "cold-lake"), LOCAL_URL_KEY=URL_KEY,
        CORS_ORIGIN="*", ORT_THREADS="1", LOG_LEVEL="WARNING",
    )
    runs = bench.sizes.cold_start_runs
    warm = not bench.sizes.quick
    if warm:
        one_cold_start("runtime", picture, env)  # fills the page cache for both kinds alike
    runtime = [one_cold_start("runtime", picture, env) for _ in range(runs)]
    if warm:
        one_cold_start("tensorflow", picture, env)
    tensorflow = [one_cold_start("tensorflow", picture, env) for _ in range(runs)]

    runtime_s = p50([r["wall_s"] for r in runtime])
    tensorflow_s = p50([r["wall_s"] for r in tensorflow])
    return {
        "runtime_s": runtime_s,
        "tensorflow_s": tensorflow_s,
        "ratio": ratio(tensorflow_s, runtime_s),
        "runtime_imports_s": p50([r["imports_s"] for r in runtime]),
        "runtime_onnxruntime_import_s": p50([r["onnxruntime_import_s"] for r in runtime]),
        "runtime_first_request_s": p50([r["first_request_s"] for r in runtime]),
        "tensorflow_imports_s": p50([r["imports_s"] for r in tensorflow]),
        "runtime_interpreter_s": float(
            np.median([r["wall_s"] - r["in_process_s"] for r in runtime])
        ),
        "runs": runs,
        "index_rows": len(embedded.embeddings),
        "statistic": "median wall seconds from spawn to first answer, warm page cache",
        **handler_imports(max(runs, 3)),
        **install_sizes(),
    }
