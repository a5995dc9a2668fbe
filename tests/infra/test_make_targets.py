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
