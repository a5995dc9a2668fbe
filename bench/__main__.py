"""python -m bench [--quick] [--out PATH] [--sections a,b] [--million] [--model-dir DIR]
[--ingest-images N]"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_REPO = Path(__file__).resolve().parents[1]
for _path in (str(_REPO / "layers" / "python"), str(_REPO)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench import common, report  # noqa: E402

# TensorFlow is imported by the last sections only, so it cannot sit in memory (or hold threads)
# while the ONNX Runtime, PostgreSQL and ingest figures are taken. flops: GFLOP/s against this
# CPU's single-core peak; quantize: int8 beside fp32 (the full metric check is make bench-int8).
SECTIONS = ("cold_start", "knn", "ingest", "request", "flops", "quantize", "inference")
DEFAULT_OUT = _REPO / "bench" / "results.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: few repetitions, 1,000 rows, a stand-in model")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results JSON (default {DEFAULT_OUT.relative_to(_REPO)}; "
                        "--quick needs it named)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--million", action="store_true",
                        help="also run kNN at 1,000,000 rows (long on 2 cores)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="folder with artlens.json + artlens.keras (default models/)")
    parser.add_argument("--ingest-images", type=int, default=None, metavar="N",
                        help="pictures of the ingest section (both its local and its S3-latency "
                        "runs), for a short run of that section alone")
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of an existing results file (--out) and refresh "
                        "docs/performance.md from it; measures nothing")
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    if args.quick and args.out is None and not args.table_only:
        parser.error("--quick writes a smoke result; name it with --out (results.json is "
                     "the record of a full run)")
    return args


def _input_size(model: common.ModelFiles) -> int:
    from artlens.models.card import ModelCard

    return ModelCard.load(model.card_path).input_size


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_only:
        import json

        results = json.loads((args.out or DEFAULT_OUT).read_text())
        print(report.text_table(results))
        if results.get("mode") == "full" and report.update_doc(results):
            print(f"updated the table in {report.DOC.relative_to(_REPO)}")
        return 0
    started = time.perf_counter()
    sizes = common.Sizes.for_mode(args.quick, args.million)
    if args.ingest_images:
        sizes = dataclasses.replace(sizes, ingest_images=args.ingest_images,
                                    s3_images=args.ingest_images)
    wanted = [s for s in SECTIONS if s in args.sections.split(",")]
    out_path = args.out or DEFAULT_OUT
    failed: list[str] = []

    with tempfile.TemporaryDirectory(prefix="artlens-bench-") as tmp:
        workdir = Path(tmp)
        print(f"bench: preparing ({'quick' if args.quick else 'full'} mode)", flush=True)
        model = common.prepare_model(workdir, args.quick, args.model_dir)
        pg = common.Postgres(workdir / "pg")
        try:
            bench = common.Bench(
                sizes=sizes, workdir=workdir, model=model,
                pool=common.load_pool(args.quick, sizes.pool_limit, _input_size(model)), pg=pg,
                threads=common.cores(),
            )
            results: dict = {
                "mode": "quick" if args.quick else "full",
                "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": common.machine(),
                "versions": {**common.library_versions(), **pg.versions()},
                "model": {"source": model.source, "version": bench.card.version,
                          "name": bench.card.name, "card": str(model.card_path)},
                "pictures": bench.pool.source,
            }
            for name in wanted:
                section_started = time.perf_counter()
                print(f"bench: {name} ...", flush=True)
                module = importlib.import_module(f"bench.{name}")
                try:
                    results[name] = module.run(bench)
                except Exception as exc:  # one broken section must not lose the others' figures
                    traceback.print_exc()
                    results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                    failed.append(name)
                results[name]["section_seconds"] = time.perf_counter() - section_started
                print(f"bench: {name} done in {results[name]['section_seconds']:.0f} s", flush=True)
        finally:
            pg.close()
    results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["bench_seconds"] = time.perf_counter() - started
    common.dump(out_path, results)
    print()
    print(report.text_table(results))
    print(f"\nwrote {out_path}")
    if failed:
        print(f"bench: sections failed: {', '.join(failed)} (see results 'error')")
        return 1
    full_record = (not args.quick and out_path == DEFAULT_OUT and set(wanted) == set(SECTIONS)
                   and not args.ingest_images)
    if full_record and report.update_doc(common.rounded(results)):
        print(f"updated the table in {report.DOC.relative_to(_REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
