"""Nearest-5 search in PostgreSQL: HNSW (pgvector) vs an exact sequential scan, same queries.

Rows are real embeddings (the model's embeddings of the pool) tiled with small Gaussian noise up
to the row count; queries are pool embeddings with fresh noise, so every query has near but not
identical rows. Both the index and the exact scan run the production query
(`EmbeddingStore.nearest`); the exact one on a connection with index scans disabled.

Parameters are chosen at the first (largest) row count: for each (m, ef_construction) build,
the smallest swept ef_search whose recall@5 reaches the target, then the build with the lowest
median latency there. Smaller row counts reuse the chosen parameters.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.common import (
    Bench,
    build_index,
    connect_with,
    copy_rows,
    index_scans,
    noise_scale,
    p50,
    p99,
    ratio,
    ready_store,
    tile,
)

RECALL_TARGET = 0.99
K = 5


def _search(
    store: Any, queries: np.ndarray, labels: list[str] | None
) -> tuple[list[set[str]], list[float]]:

    found, times = [], []
    for i, query in enumerate(queries):
        started = time.perf_counter()
        rows = store.nearest(query, k=K, label=labels[i] if labels else None)
        times.append((time.perf_counter() - started) * 1000.0)
        found.append({row.key for row in rows})
    return found, times


def _recall(found: list[set[str]], truth: list[set[str]]) -> float:
    return float(np.mean([len(f & t) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]))


def _index_scans_after(dsn: str, store: Any) -> int:
    """HNSW index scans so far, once `store`'s backend has reported its counters (it does so
    on exit)."""
    store.close()
    time.sleep(0.3)
    return index_scans(dsn)


def choose(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep point to ship: among builds whose smallest ef_search reaches the recall target,
    the fastest at that point, where latencies within 10 % count as a tie won by the cheaper
    build; if no build reaches the target, the highest recall."""
    reached = [p for p in sweep if p["recall_at_5"] >= RECALL_TARGET]
    if not reached:
        return max(sweep, key=lambda p: (p["recall_at_5"], -p["hnsw_p50_ms"]))
    first_per_build: dict[tuple[int, int], dict[str, Any]] = {}
    for point in reached:
        first_per_build.setdefault((point["m"], point["ef_construction"]), point)
    candidates = list(first_per_build.values())
    fastest = min(p["hnsw_p50_ms"] for p in candidates)
    near = [p for p in candidates if p["hnsw_p50_ms"] <= 1.1 * fastest]
    return min(near, key=lambda p: (p["build_s"], p["hnsw_p50_ms"]))


class _Measured:
    def __init__(self, store, queries, labels, truth, truth_filtered):
        self.store, self.queries, self.labels = store, queries, labels
        self.truth, self.truth_filtered = truth, truth_filtered

    def at(self, ef_search: int, filtered: bool = True) -> dict[str, float]:
        self.store.ef_search = ef_search
        _search(self.store, self.queries[:5], None)  # warm the index pages
        found, times = _search(self.store, self.queries, None)
        out = {"ef_search": ef_search, "recall_at_5": _recall(found, self.truth),
               "hnsw_p50_ms": p50(times), "hnsw_p99_ms": p99(times)}
        if filtered:
            found_f, times_f = _search(self.store, self.queries, self.labels)
            out |= {"filtered_recall_at_5": _recall(found_f, self.truth_filtered),
                    "filtered_hnsw_p50_ms": p50(times_f), "filtered_hnsw_p99_ms": p99(times_f)}
        return out


def _one_count(bench: Bench, n: int, queries, query_labels, sigma, rng, sweep_here: bool,
               chosen: dict[str, int] | None) -> dict[str, Any]:
    from artlens.index.embeddings import EmbeddingStore

    version = bench.card.version
    rows, labels = tile(bench.embedded, n, sigma, rng)
    dsn = bench.pg.new_database(f"knn{n}")
    ready_store(dsn, version, bench.card.embedding_size).close()
    load_s = copy_rows(dsn, version, rows, labels)

    exact_store = EmbeddingStore(connect_with(dsn, enable_indexscan="off"))
    _search(exact_store, queries[:3], None)
    truth, exact_times = _search(exact_store, queries, None)
    truth_f, exact_times_f = _search(exact_store, queries, query_labels)
    exact_scans = _index_scans_after(dsn, exact_store)

    builds = bench.sizes.hnsw_builds if sweep_here else ((chosen["m"], chosen["ef_construction"]),)
    store = EmbeddingStore(dsn)
    sweep = []
    for m, ef_construction in builds:
        build_s = build_index(dsn, m, ef_construction)
        store.close()  # new index: plans and caches start afresh
        measured = _Measured(store, queries, query_labels, truth, truth_f)
        efs = bench.sizes.ef_search_sweep if sweep_here else (chosen["ef_search"],)
        for ef in efs:
            point = {"m": m, "ef_construction": ef_construction, "build_s": build_s,
                     **measured.at(ef, filtered=False)}
            sweep.append(point)
            if point["recall_at_5"] >= RECALL_TARGET:
                break  # larger ef_search only costs time
    best = choose(sweep)
    params = {k: best[k] for k in ("m", "ef_construction", "ef_search")}
    build_s = best["build_s"]
    if (params["m"], params["ef_construction"]) != (m, ef_construction):
        build_s = build_index(dsn, params["m"], params["ef_construction"])
        store.close()
    scans_before = _index_scans_after(dsn, store)
    measured_final = _Measured(store, queries, query_labels, truth, truth_f)
    final = measured_final.at(params["ef_search"])
    if sweep_here:
        # 200 queries measure recall@5 to about +-0.005: a sweep point just over the target
        # can land under it when measured again. Step ef_search up until the final, reported
        # measurement itself reaches the target (the sweep's larger values, in order).
        for ef in (e for e in bench.sizes.ef_search_sweep if e > params["ef_search"]):
            if final["recall_at_5"] >= RECALL_TARGET:
                break
            params["ef_search"] = ef
            final = measured_final.at(ef)
    scans = _index_scans_after(dsn, store) - scans_before
    result = {
        "exact_p50_ms": p50(exact_times),
        "exact_filtered_p50_ms": p50(exact_times_f),
        "hnsw_p50_ms": final["hnsw_p50_ms"],
        "hnsw_p99_ms": final["hnsw_p99_ms"],
        "recall_at_5": final["recall_at_5"],
        "build_s": build_s,
        "filtered_recall_at_5": final["filtered_recall_at_5"],
        "filtered_hnsw_p50_ms": final["filtered_hnsw_p50_ms"],
        "filtered_hnsw_p99_ms": final["filtered_hnsw_p99_ms"],
        "speedup_vs_exact": ratio(p50(exact_times), final["hnsw_p50_ms"]),
        "load_s": load_s,
        "hnsw_index_scans": scans,  # > 0: the timed queries really used the index
        "exact_index_scans": exact_scans,  # 0: the baseline really scanned the table
        **params,
    }
    if sweep_here:
        result["sweep"] = sweep
    return result


def run(bench: Bench) -> dict[str, Any]:
    sizes = bench.sizes
    rng = np.random.default_rng(11)
    base = bench.embedded
    sigma = noise_scale(base.embeddings, rng)
    count = len(base.embeddings)
    pick = rng.choice(count, size=sizes.knn_queries, replace=count < sizes.knn_queries)
    noise = rng.normal(0, sigma, (len(pick), base.embeddings.shape[1]))
    queries = (base.embeddings[pick] + noise).astype(np.float32)
    query_labels = [base.labels[i] for i in pick]

    results: dict[str, Any] = {}
    chosen = None
    for n in sizes.knn_rows:
        results[str(n)] = _one_count(bench, n, queries, query_labels, sigma, rng,
                                     sweep_here=chosen is None, chosen=chosen)
        if chosen is None:
            chosen = {k: results[str(n)][k] for k in ("m", "ef_construction", "ef_search")}
            chosen["chosen_at_rows"] = n
    results["params"] = chosen
    results["embeddings"] = (
        f"model embeddings of {bench.pool.source}, tiled with Gaussian noise "
        f"(sigma {sigma:.4g} per dimension = half the median nearest-neighbour distance)"
    )
    results["queries"] = f"{len(pick)} pool embeddings with fresh noise; filter = their class"
    results["recall_target"] = RECALL_TARGET
    if not sizes.quick and 1_000_000 not in sizes.knn_rows:
        build_100k = results.get("100000", {}).get("build_s")
        results["not_run"] = {
            "1000000": "skipped on this 2-core machine to keep make bench well under 30 min "
            f"(100k build took {build_100k:.0f} s; 1M needs >10x that plus ~10x per exact "
            "query); run python -m bench --million to include it"
            if build_100k else "skipped (time)"
        }
    return results
