"""End-to-end fixtures: the whole local stack (`python -m local_stack`) as a real subprocess.

`local_stack` (session-scoped) starts the stack once per test session, on a free loopback port
(`--port 0`; the bound URL is read back from `<state>/stack.json`), with a temporary state dir
(its own embedded PostgreSQL, lake and keys) and the `tiny_model_card` model. It waits until
`GET /health` answers 200 and yields a `LocalStack`:

    base_url   "http://127.0.0.1:<port>"
    token      a valid bearer token for the dev user (minted by `python -m local_stack.token`)
    lake_dir   Path of the lake folder (incoming/, gallery/, rejected/)
    state_dir  Path of the state dir (pass it as --state-dir to local_stack.token / .ingest)
    run(module, *args)  runs `python -m <module> --state-dir <state> *args` -> CompletedProcess

Browser tests (Playwright) reuse it: open `local_stack.base_url` and send `local_stack.token`.
The stack is stopped with SIGTERM at the end of the session (it shuts PostgreSQL down); its
log is `<state>/stack.log` and is shown when startup fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 180.0


def stack_env() -> dict[str, str]:
    """The environment `make run` gives the stack: the repo and the layer on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "ARTLENS_STATE_DIR")}
    paths = [str(REPO_ROOT / "layers" / "python"), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class LocalStack:
    base_url: str
    token: str
    lake_dir: Path
    state_dir: Path
    process: subprocess.Popen

    def run(self, module: str, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", module, "--state-dir", str(self.state_dir), *args],
            cwd=REPO_ROOT, env=stack_env(), capture_output=True, text=True, timeout=timeout,
        )

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return (self.state_dir / "stack.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _wait_until_healthy(process: subprocess.Popen, state_dir: Path, log_path: Path) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    stack_file = state_dir / "stack.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"local stack exited with {process.returncode}:\n"
                f"{log_path.read_text(errors='replace')[-6000:]}"
            )
        try:
            published = json.loads(stack_file.read_text())
        except (OSError, ValueError):
            published = None
        if published and published.get("pid") == process.pid:
            try:
                with urllib.request.urlopen(f"{published['url']}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return published["url"]
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.2)
    raise RuntimeError(
        f"local stack not healthy after {STARTUP_TIMEOUT_S:.0f} s:\n"
        f"{log_path.read_text(errors='replace')[-6000:]}"
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory, tiny_model_card) -> LocalStack:
    """The running local stack (see the module docstring)."""
    state_dir = tmp_path_factory.mktemp("artlens_state")
    log_path = state_dir / "stack.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "local_stack", "--state-dir", str(state_dir), "--port", "0",
             "--model-card", str(tiny_model_card), "--poll-seconds", "0.2"],
            cwd=REPO_ROOT, env=stack_env(), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        base_url = _wait_until_healthy(process, state_dir, log_path)
        stack = LocalStack(base_url=base_url, token="", lake_dir=state_dir / "lake",
                           state_dir=state_dir, process=process)
        minted = stack.run("local_stack.token", timeout=60)
        if minted.returncode != 0:
            raise RuntimeError(f"local_stack.token failed: {minted.stderr}")
        stack.token = minted.stdout.strip()
        yield stack
    finally:
        _stop(process)
