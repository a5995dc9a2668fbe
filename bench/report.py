"""The results table: the same rows in the terminal and in docs/performance.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
BEGIN, END = "<!-- bench:table:begin -->", "<!-- bench:table:end -->"
# the int8 comparison (python -m bench.quantize, make bench-int8) keeps its own table
INT8_MARKERS = ("<!-- bench:int8:begin -->", "<!-- bench:int8:end -->")

# (section, key, label, unit, baseline key, baseline label, target (op, value) or None)
ROWS: tuple[tuple[str, str, str, str, str | None, str, tuple[str, float] | None], ...] = (
    ("inference", "onnx_ms_b1", "inference, batch 1", "ms", "keras_ms_b1",
     "Keras model.predict", None),
    ("inference", "ratio_b1", "  speed-up, batch 1", "x", None, "", (">=", 50)),
    ("inference", "onnx_ms_b1", "inference, batch 1 (vs direct call)", "ms", "keras_call_ms_b1",
     "Keras model(x)", None),
    ("inference", "onnx_ms_b32", "inference, batch 32", "ms", "keras_ms_b32",
     "Keras model.predict", None),
    ("flops", "model_gflop_per_image", "model arithmetic (ONNX graph count)", "GFLOP/img", None,
     "", None),
    ("flops", "gflops_b1", "ORT GFLOP/s, batch 1, 1 thread", "GFLOP/s", "peak_gflops_1core",
     "1-core peak (sgemm)", None),
    ("flops", "gflops_b32", "ORT GFLOP/s, batch 32, 1 thread", "GFLOP/s", "peak_gflops_1core",
     "1-core peak (sgemm)", None),
    ("flops", "best_gflops_b1", "  same, fastest call", "GFLOP/s", "peak_gflops_1core",
     "1-core peak (sgemm)", None),
    ("flops", "best_gflops_b32", "  same at batch 32, fastest call", "GFLOP/s",
     "peak_gflops_1core", "1-core peak (sgemm)", None),
    ("flops", "gflops_b1_2t", "ORT GFLOP/s, batch 1, 2 threads", "GFLOP/s",
     "peak_gflops_2cores", "2 x 1-core peak", None),
    ("flops", "gflops_b32_2t", "ORT GFLOP/s, batch 32, 2 threads", "GFLOP/s",
     "peak_gflops_2cores", "2 x 1-core peak", None),
    ("quantize", "int8_ms_b1", "int8 (all ops), batch 1", "ms", "fp32_ms_b1", "fp32 graph",
     None),
    ("quantize", "int8_ms_b32", "int8 (all ops), batch 32", "ms", "fp32_ms_b32",
     "fp32 graph", None),
    ("quantize", "int8_trunk_ms_b1", "int8 (trunk), batch 1", "ms", "fp32_ms_b1",
     "fp32 graph", None),
    ("quantize", "int8_trunk_ms_b32", "int8 (trunk), batch 32", "ms", "fp32_ms_b32",
     "fp32 graph", None),
    ("quantize", "int8_mb", "int8 (all ops) ONNX file", "MB", "fp32_mb", "fp32 graph", None),
    ("quantize", "int8_type_agreement", "int8 (all ops) type = fp32 type", "", None, "", None),
    ("quantize", "int8_trunk_type_agreement", "int8 (trunk) type = fp32 type", "", None, "", None),
    ("request", "small_p50_ms", "predict request, 256 px, p50", "ms", "keras_small_p50_ms",
     "same handler, Keras", ("<=", 10)),
    ("request", "small_p99_ms", "predict request, 256 px, p99", "ms", None, "", None),
    ("request", "large_p50_ms", "predict request, 6 MP, p50", "ms", "large_nodraft_p50_ms",
     "no JPEG draft", ("<=", 30)),
    ("request", "large_p99_ms", "predict request, 6 MP, p99", "ms", None, "", None),
    ("request", "s3_small_p50_ms", "predict request, 256 px, S3 latency, p50", "ms",
     "s3_small_inline_keep_p50_ms", "upload kept inline", None),
    ("cold_start", "runtime_s", "cold start to first answer", "s", "tensorflow_s",
     "Keras runtime", ("<=", 0.5)),
    ("cold_start", "authorizer_import_s", "authorizer handler import", "s", "predict_import_s",
     "predict handler import", None),
    ("cold_start", "runtime_install_mb", "runtime install size", "MB", "tensorflow_install_mb",
     "Keras runtime", ("<=", 250)),
    ("ingest", "images_per_s", "ingest, 256 px JPEGs", "img/s", "batch1_images_per_s",
     "batch size 1", (">=", 300)),
    ("ingest", "images_per_s", "ingest, 256 px JPEGs (vs no pool)", "img/s",
     "sequential_images_per_s", "no thread pool", None),
    ("ingest", "images_per_s", "ingest, 256 px JPEGs (vs the S3-sized pool)", "img/s",
     "lambda_pool_images_per_s", "10 lake workers", None),
    ("ingest", "s3_images_per_s", "ingest per function, S3 latency", "img/s",
     "s3_sequential_images_per_s", "sequential calls", None),
    ("ingest", "s3_sqs_batch_images_per_s", "  same, SQS-sized calls", "img/s",
     "s3_sequential_images_per_s", "sequential calls", None),
    ("ingest", "backfill_1m_hours", "1 M-picture backfill, projected", "h",
     "backfill_1m_sequential_hours", "sequential calls", None),
)
KNN_ROWS = (
    ("hnsw_p50_ms", "kNN p50", "ms", "exact_p50_ms", "exact scan", ("<=", 3)),
    ("hnsw_p99_ms", "kNN p99", "ms", None, "", None),
    ("recall_at_5", "kNN recall@5", "", None, "", (">=", 0.99)),
    ("filtered_hnsw_p50_ms", "kNN p50, class filter", "ms", "exact_filtered_p50_ms",
     "exact scan", None),
    ("filtered_recall_at_5", "kNN recall@5, class filter", "", None, "", None),
    ("build_s", "HNSW build", "s", None, "", None),
)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) < 10:
            text = f"{value:.3f}"
        else:
            text = f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def _met(value: float, target: tuple[str, float]) -> str:
    op, bound = target
    ok = value >= bound if op == ">=" else value <= bound
    return ("yes" if ok else "NO") + f" ({op} {bound:g})"


def rows(results: dict[str, Any]) -> list[list[str]]:
    table = []
    for section, key, label, unit, base_key, base_label, target in ROWS:
        data = results.get(section)
        if not data or key not in data:
            continue
        value = data[key]
        base = data.get(base_key) if base_key else None
        speed = f"{base / value:.1f}x" if base and value and unit in ("ms", "s", "MB", "h") else (
            f"{value / base:.1f}x" if base and value else "")
        if unit == "GFLOP/s" and base:  # a share of the peak, not a speed-up
            speed = f"{100 * value / base:.0f}% of peak"
        table.append([
            label, _fmt(value, unit), f"{base_label}: {_fmt(base, unit)}" if base_key else "",
            speed, _met(value, target) if target else "",
        ])
    knn = results.get("knn", {})
    for count in sorted((k for k in knn if k.isdigit()), key=int):
        data = knn[count]
        for key, label, unit, base_key, base_label, target in KNN_ROWS:
            value = data[key]
            base = data.get(base_key) if base_key else None
            speed = f"{base / value:.1f}x" if base and value else ""
            target_here = target if count == "100000" else None
            table.append([
                f"{label}, {int(count):,} rows", _fmt(value, unit),
                f"{base_label}: {_fmt(base, unit)}" if base_key else "", speed,
                _met(value, target_here) if target_here else "",
            ])
    return table


HEADER = ["figure", "ArtLens", "baseline (same run)", "gain", "target met"]


def text_table(results: dict[str, Any]) -> str:
    body = rows(results)
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(HEADER), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(results: dict[str, Any]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(r) + " |" for r in rows(results)]
    machine = results.get("machine", {})
    versions = results.get("versions", {})
    knn = results.get("knn", {}).get("params") or {}
    out += [
        "",
        f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, "
        f"{machine.get('memory_gb')} GB; Python {machine.get('python')}; model: "
        f"{results.get('model', {}).get('source')} ({results.get('model', {}).get('version')}).",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
    ]
    ingest = results.get("ingest") or {}
    if "s3_latency_ms_per_call" in ingest:
        out.append(
            f"Ingest per function on S3: {ingest['s3_latency_ms_per_call']:g} ms added to every "
            f"lake call (bench/slow_lake.py), {ingest.get('s3_workers')} lake threads, "
            f"{ingest.get('s3_decoders')} decoders; SQS-sized calls = "
            f"{ingest.get('s3_sqs_batch_size')} keys each; backfill projected at "
            f"{ingest.get('backfill_concurrency')} concurrent functions "
            f"({ingest.get('backfill_concurrency_source')})."
        )
    if knn:
        out.append(
            f"HNSW parameters chosen by the bench: m = {knn.get('m')}, ef_construction = "
            f"{knn.get('ef_construction')}, ef_search = {knn.get('ef_search')} "
            f"(chosen at {knn.get('chosen_at_rows'):,} rows)."
        )
    start = machine.get("load_average_at_start") or ["?"]
    end = machine.get("load_average_at_end") or ["?"]
    busy = isinstance(end[0], int | float) and end[0] > (machine.get("cores") or 1)
    out.append(f"Generated {results.get('generated_at')} by `make bench` in "
               f"{results.get('bench_seconds', 0):.0f} s; 1-minute load average "
               f"{start[0]} at start, {end[0]} at end"
               + (" — other work shared the cores, so the figures are inflated; rerun on a "
                  "quiet machine." if busy else "."))
    return "\n".join(out)


def update_doc(results: dict[str, Any], doc: Path = DOC, markdown: str | None = None,
               markers: tuple[str, str] = (BEGIN, END)) -> bool:
    """Replace the table between the markers in docs/performance.md (the bench table, or
    `markdown` between other `markers`); False if no markers."""
    if not doc.exists():
        return False
    text = doc.read_text()
    begin, end = markers
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return False
    block = f"{begin}\n{markdown if markdown is not None else markdown_table(results)}\n{end}"
    doc.write_text(pattern.sub(lambda _: block, text))
    return True
