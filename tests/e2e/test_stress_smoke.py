"""`make stress` in miniature: bench.stress against its own local stack, 4 clients x 5 s, plus
the hostile-client and database-outage tables. Zero errors, a sane summary, a healthy server
afterwards, the server's peak memory within the stated bound beside the hostile client, and the
gateway's fair share at work: the hostile client, using 6 connections under its one token, is
answered 429 with Retry-After past its share (1 running + 4 waiting) while every normal client,
each with its own token, gets only 200s. Latency is reported, never asserted: speed belongs to
make stress."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.stress import REPO_ROOT, stack_env


def test_stress_smoke_has_no_errors_and_a_sane_summary(tiny_model_card, tmp_path):
    out = tmp_path / "stress.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.stress", "--clients", "4", "--duration", "5",
         "--images", "6", "--model-card", str(tiny_model_card), "--db-down",
         "--hostile-p99-limit", "0", "--hostile-connections", "6", "--warmup", "1",
         "--json", str(out)],
        cwd=REPO_ROOT, env=stack_env(), capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "throughput (req/s)" in done.stdout and "stress: PASS" in done.stdout
    summaries = json.loads(out.read_text())

    load = summaries["load"]
    assert load["errors"] == 0 and load["transport_errors"] == {}
    assert load["statuses"] == {"200": load["requests"]} and load["requests"] >= 8
    assert 0 < load["p50_ms"] <= load["p95_ms"] <= load["p99_ms"] < 30_000
    measured = load["throughput_rps"] * load["seconds"]
    assert abs(measured - load["requests"]) <= max(2, 0.05 * load["requests"])
    assert load["health_after"] == "200 ok"
    assert load["memory_stable"] and 0 < load["rss_mb"]["start"] <= load["rss_mb"]["max"]

    beside = summaries["hostile"]
    assert beside["errors"] == 0 and beside["statuses"] == {"200": beside["requests"]}
    hostile = beside["hostile"]
    assert hostile["requests"] >= 1 and hostile["errors"] == 0
    assert set(hostile["statuses"]) <= {"200", "413", "429"}, hostile["statuses"]
    assert hostile["throttled_429"] >= 1, hostile  # 6 at once: one past its share at least
    assert hostile["statuses"].get("200", 0) + hostile["statuses"].get("413", 0) >= 1
    assert hostile["memory_bounded"], hostile
    assert hostile["peak_rss_mb"] >= hostile["peak_rss_mb_before"] > 0
    assert hostile["peak_rss_bound_mb"] > hostile["peak_rss_mb_before"]
    assert beside["rss_mb"]["max"] <= hostile["peak_rss_bound_mb"]
    assert "Normal clients without / with one hostile client beside them" in done.stdout
    assert "hostile 429s / errors" in done.stdout

    outage = summaries["db_down"]
    assert set(outage["statuses"]) <= {"200", "503"}, outage["statuses"]
    assert outage["statuses"].get("503", 0) > 0, "the database outage was not noticed"
    assert outage["statuses"].get("200", 0) > 0 and outage["transport_errors"] == {}
    assert outage["health_after"] == "200"
