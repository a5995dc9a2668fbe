"""Issue 13: the local stack after a crash. A killed stack leaves its PostgreSQL running; the
next start must adopt it AND stop it on its own clean stop. Drops an outage dead-lettered are
announced at start with how to resume them."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from bench.stress import LocalStackProcess
from local_stack.database import HANDLE_LIST, forget_dead_handles


def postmaster_pid(pgdata) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int | None) -> bool:
    """Running (a zombie has exited: only its parent has not collected it yet)."""
    if pid is None:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_a_clean_stop_after_a_crash_restart_stops_postgres(tmp_path, tiny_model_card):
    state = tmp_path / "state"
    first = LocalStackProcess(state, tiny_model_card).start()
    first.process.send_signal(signal.SIGKILL)  # a crash: no atexit, PostgreSQL keeps running
    first.process.wait(timeout=30)
    orphan = postmaster_pid(state / "pg")
    assert alive(orphan), "the crash was expected to leave PostgreSQL running"

    # A dead-lettered drop from before the crash: the next start says so.
    (state / "dlq").mkdir(parents=True, exist_ok=True)
    (state / "dlq" / "m1.json").write_text(json.dumps({
        "messageId": "m1", "key": "incoming/lost.jpg", "signature": [1, 1],
        "receiveCount": 3, "lastError": "handler raised Unavailable", "body": "{}"}))

    second = LocalStackProcess(state, tiny_model_card).start()
    try:
        log = second.log_tail(20_000)
        assert "1 dropped picture(s) are parked in the dead-letter queue" in log
        assert "make redrive" in log
    finally:
        second.stop()  # SIGTERM: the clean stop
    assert second.process.returncode == 0, second.log_tail()
    assert not alive(orphan), "the clean stop left the crashed run's PostgreSQL running"
    assert postmaster_pid(state / "pg") is None or not alive(postmaster_pid(state / "pg"))


def test_forget_dead_handles_keeps_live_processes(tmp_path):
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / HANDLE_LIST).write_text(json.dumps([gone.pid, os.getpid()]))
    assert forget_dead_handles(tmp_path) == [gone.pid]
    assert json.loads((tmp_path / HANDLE_LIST).read_text()) == [os.getpid()]
    assert forget_dead_handles(tmp_path / "absent") == []


@pytest.fixture(autouse=True)
def _no_orphans(tmp_path):
    """Whatever happens above, no PostgreSQL of this test outlives it."""
    yield
    pid = postmaster_pid(tmp_path / "state" / "pg")
    if alive(pid):
        LocalStackProcess(tmp_path / "state", tmp_path).stop_orphaned_postgres()
