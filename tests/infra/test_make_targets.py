"""The AWS make targets need only the infra requirements and the CDK CLI, in the right order.

`make -n` prints what a target would run without running it; with `-B` it prints every step,
as on a fresh clone (nothing built yet).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.infra.conftest import REPO_ROOT


def dry_run(target: str) -> list[str]:
    completed = subprocess.run(
        ["make", "-n", "-B", target, "ENV=prod"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


@pytest.mark.parametrize("target", ["synth", "diff", "deploy", "layer", "bootstrap"])
def test_aws_targets_use_the_infra_virtualenv_only(target):
    lines = dry_run(target)
    text = "\n".join(lines)
    assert "requirements/infra.lock" in text and "--require-hashes" in text
    # Not the test virtualenv (TensorFlow, Playwright) nor anything installed from it.
    assert ".venv/" not in text.replace(".venv-infra/", "")
    for heavy in ("dev.txt", "training.txt", "playwright", "tensorflow"):
        assert heavy not in text, heavy


def test_deploy_builds_the_layer_and_checks_artifacts_before_cdk_deploy():
    lines = dry_run("deploy")
    layer = next(i for i, line in enumerate(lines) if "infra.packaging layer" in line)
    preflight = next(i for i, line in enumerate(lines) if "infra.packaging preflight" in line)
    deploy = next(i for i, line in enumerate(lines) if "cdk deploy" in line)
    assert layer < preflight < deploy
    assert "-c env=prod" in lines[deploy]
    # cdk.json's `python3 -m infra.app` finds the infra virtualenv first on PATH.
    assert ".venv-infra/bin:" in lines[deploy]


def test_cdk_json_app_does_not_depend_on_a_virtualenv_location():
    app = json.loads((REPO_ROOT / "cdk.json").read_text())["app"]
    assert app == "python3 -m infra.app"


def test_audit_runs_on_the_lock():
    assert any("tests.audit requirements/runtime.lock" in line for line in dry_run("audit"))


def test_backfill_runs_the_map_locally_and_the_state_machine_with_env():
    local = subprocess.run(["make", "-n", "-B", "backfill", "PREFIX=incoming/2024/"],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert local.returncode == 0, local.stderr
    assert "-m local_stack.backfill --mode backfill --prefix \"incoming/2024/\"" in local.stdout
    assert "run_backfill.sh" not in local.stdout
    on_aws = "\n".join(dry_run("backfill"))
    assert 'infra/run_backfill.sh "prod" backfill "incoming/"' in on_aws
    assert "local_stack" not in on_aws and ".venv/" not in on_aws
    reindex = subprocess.run(
        ["make", "-n", "-B", "backfill-reindex", "ENV=dev", "VERSION=v2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert 'infra/run_backfill.sh "dev" reindex "gallery/" "v2"' in reindex.stdout
    # `make reindex` stays the local stack's own reindex.
    assert "-m local_stack.reindex" in subprocess.run(
        ["make", "-n", "reindex"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    ).stdout



def test_renditions_runs_locally_and_as_the_map_in_renditions_mode_with_env():
    """`make renditions` renders what is missing in the local stack's gallery; with ENV the
    deployed state machine does it (infra/run_backfill.sh ... renditions PREFIX)."""
    local = subprocess.run(["make", "-n", "-B", "renditions", "ARGS=--dry-run"],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert local.returncode == 0, local.stderr
    assert "-m local_stack.renditions --dry-run" in local.stdout
    assert "run_backfill.sh" not in local.stdout
    on_aws = "\n".join(dry_run("renditions"))
    assert 'infra/run_backfill.sh "prod" renditions "gallery/"' in on_aws
    assert "local_stack" not in on_aws and ".venv/" not in on_aws
    some = subprocess.run(["make", "-n", "-B", "renditions", "ENV=dev", "PREFIX=gallery/0"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert 'infra/run_backfill.sh "dev" renditions "gallery/0"' in some.stdout

FAKE_AWS = """#!/bin/sh
echo "$@" >> "$CALLS"
arn=arn:aws:states:eu-west-1:1
case "$1 $2" in
  "cloudformation describe-stacks") echo "$arn:stateMachine:ArtLens-dev-backfill" ;;
  "stepfunctions start-execution") echo "$arn:execution:ArtLens-dev-backfill:x" ;;
  "stepfunctions list-map-runs") echo "$arn:mapRun:ArtLens-dev-backfill/Batches:y" ;;
  "stepfunctions describe-map-run") echo "7	1	2	0	10" ;;
  "stepfunctions describe-execution")
    n=$(grep -c describe-execution "$CALLS")
    if [ "$n" -ge 2 ]; then echo SUCCEEDED; else echo RUNNING; fi ;;
esac
"""


def test_run_backfill_starts_the_execution_and_polls_until_it_ends(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "aws").write_text(FAKE_AWS)
    (fake_bin / "aws").chmod(0o755)
    calls = tmp_path / "calls.log"
    completed = subprocess.run(
        [str(REPO_ROOT / "infra" / "run_backfill.sh"), "dev", "reindex", "gallery/", "v2"],
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "CALLS": str(calls), "POLL_S": "0"},
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    log = calls.read_text().splitlines()
    start = next(line for line in log if line.startswith("stepfunctions start-execution"))
    assert '{"mode":"reindex","prefix":"gallery/","version":"v2"}' in start
    assert "--state-machine-arn arn:aws:states:eu-west-1:1:stateMachine:ArtLens-dev-backfill" \
        in start
    assert sum(line.startswith("stepfunctions describe-execution") for line in log) == 2
    assert "RUNNING: 7 done, 1 failed, 2 running, 0 pending of 10 objects" in completed.stdout
    assert completed.stdout.strip().endswith("artifacts bucket")
    refused = subprocess.run(
        [str(REPO_ROOT / "infra" / "run_backfill.sh"), "dev", "backfill", 'incoming/"x'],
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "CALLS": str(calls)},
        capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 2 and "PREFIX" in refused.stderr
