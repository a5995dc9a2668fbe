"""End to end: `make reindex` / `make rollback` (python -m local_stack.reindex) against the running
local stack, observed through POST /predict as a user would.

Runs after test_local_stack.py in a session (file order) and leaves tiny-0 current again; it adds
pictures to the shared stack's gallery, so tests that count the gallery must run before it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

from tests.e2e.conftest import REPO_ROOT, stack_env
from tests.imagegen import artwork, encode

SWITCH_WAIT_S = 20.0  # predict re-reads the current version every few seconds


def _predict(stack) -> dict:
    request = urllib.request.Request(
        f"{stack.base_url}/predict?scope=all", data=encode(artwork(90_000), "PNG"),
        method="POST",
        headers={"Authorization": f"Bearer {stack.token}", "Content-Type": "image/png"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200
        return json.loads(answer.read())


def _wait_for_version(stack, version: str) -> dict:
    deadline = time.monotonic() + SWITCH_WAIT_S
    while True:
        answer = _predict(stack)
        if answer["model_version"] == version or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def test_reindex_switches_predict_and_rollback_switches_it_back(
    local_stack, tiny_model_card_v2, tmp_path
):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for seed in range(6):
        (pictures / f"work-{seed}.png").write_bytes(encode(artwork(70_000 + seed), "PNG"))
    ingested = local_stack.run("local_stack.ingest", str(pictures), "--no-progress")
    assert ingested.returncode == 0, f"{ingested.stdout}\n{ingested.stderr}"
    gallery_size = len(list((local_stack.lake_dir / "gallery").iterdir()))
    assert gallery_size >= 6

    before = _predict(local_stack)
    assert before["model_version"] == "tiny-0"
    assert len(before["neighbors"]) == 5
    # The stack registered its own model at start.
    assert (local_stack.state_dir / "models" / "tiny-0" / "artlens.json").is_file()

    done = local_stack.run("local_stack.reindex", "--model-card", str(tiny_model_card_v2),
                           "--batch-size", "4", "--no-progress")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{local_stack.log_tail()}"
    assert "tiny-0 -> tiny-1" in done.stdout
    assert f"embedded    {gallery_size:>6}" in done.stdout
    assert (local_stack.state_dir / "models" / "tiny-1" / "artlens.onnx").is_file()

    after = _wait_for_version(local_stack, "tiny-1")
    assert after["model_version"] == "tiny-1", after
    assert len(after["neighbors"]) == 5
    # Another model's embeddings (URLs are left out: their signatures change with time anyway).
    assert [n["similarity"] for n in after["neighbors"]] != [
        n["similarity"] for n in before["neighbors"]]

    # Nothing left to do: a second run changes nothing and says so.
    again = local_stack.run("local_stack.reindex", "--model-card", str(tiny_model_card_v2),
                            "--no-progress")
    assert again.returncode == 0, again.stderr
    assert f"embedded    {0:>6}" in again.stdout

    back = local_stack.run("local_stack.reindex", "--rollback")
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == "tiny-1 -> tiny-0"
    restored = _wait_for_version(local_stack, "tiny-0")
    assert restored["model_version"] == "tiny-0", restored
    assert [n["key"] for n in restored["neighbors"]] == [n["key"] for n in before["neighbors"]]


def test_reindex_says_so_when_the_stack_is_not_running(tmp_path):
    for extra in ((), ("--rollback",)):
        result = subprocess.run(
            [sys.executable, "-m", "local_stack.reindex", "--state-dir", str(tmp_path), *extra],
            cwd=REPO_ROOT, env=stack_env(), capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 2
        assert "not running" in result.stderr
