"""Synthesize the CDK app ONCE per session (synth takes ~15 s here).

dev is synthesized in-process with `infra.app.build_app`; prod by the real CDK CLI
(`node_modules/.bin/cdk synth`, installed by the Makefile from package.json) running the app
from cdk.json (`python3 -m infra.app`, with this interpreter's directory first on PATH as the
Makefile puts .venv-infra's), with no AWS credentials and a `docker` on PATH that records any
call, to prove synth never runs Docker. prod also turns one setting off through `-c`
(manageApiGatewayLogRole), so both values of it are synthesized.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CDK_CLI = REPO_ROOT / "node_modules" / ".bin" / "cdk"
# The runtime layer from layers/ (our code only): `make layer` output would be copied as an
# asset on every synth, which these tests do not need.
TEST_CONTEXT = {"artlens:layerDir": "tests-have-no-built-layer"}
PROD_CLI_CONTEXT = {"artlens:manageApiGatewayLogRole": "false"}
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")


@dataclass(frozen=True)
class Synthesized:
    env_name: str
    outdir: Path
    template: dict
    assets: dict
    validation_report: dict

    @property
    def resources(self) -> dict:
        return self.template["Resources"]

    def of_type(self, cfn_type: str) -> dict[str, dict]:
        return {k: v for k, v in self.resources.items() if v["Type"] == cfn_type}

    @property
    def template_path(self) -> Path:
        return self.outdir / f"ArtLens-{self.env_name}.template.json"


def _load(env_name: str, outdir: Path) -> Synthesized:
    stack = f"ArtLens-{env_name}"
    return Synthesized(
        env_name=env_name,
        outdir=outdir,
        template=json.loads((outdir / f"{stack}.template.json").read_text()),
        assets=json.loads((outdir / f"{stack}.assets.json").read_text()),
        validation_report=json.loads((outdir / "validation-report.json").read_text()),
    )


@pytest.fixture(scope="session")
def dev(tmp_path_factory) -> Synthesized:
    from infra.app import build_app

    outdir = tmp_path_factory.mktemp("cdk-dev")
    build_app({**TEST_CONTEXT, "env": "dev"}, outdir=str(outdir)).synth()
    return _load("dev", outdir)


@dataclass(frozen=True)
class CliSynth:
    result: Synthesized
    docker_calls: Path


@pytest.fixture(scope="session")
def prod_cli(tmp_path_factory) -> CliSynth:
    outdir = tmp_path_factory.mktemp("cdk-prod")
    fake_bin = tmp_path_factory.mktemp("fake-bin")
    docker_calls = fake_bin / "docker-calls.log"
    docker = fake_bin / "docker"
    docker.write_text(f'#!/bin/sh\necho "$@" >> {docker_calls}\nexit 1\n')
    docker.chmod(0o755)
    env = {
        **os.environ,
        # cdk.json's app is `python3 -m infra.app`: this interpreter's python3 (the venv with
        # aws-cdk-lib) must come first, as the Makefile puts .venv-infra/bin first.
        "PATH": f"{fake_bin}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        # No credentials anywhere: synth must not need them.
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_PROFILE": "",
        "AWS_CONFIG_FILE": str(fake_bin / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(fake_bin / "none"),
    }
    context = {**TEST_CONTEXT, **PROD_CLI_CONTEXT, "env": "prod"}
    context_args = [arg for k, v in context.items() for arg in ("-c", f"{k}={v}")]
    completed = subprocess.run(
        [str(CDK_CLI), "synth", "--no-notices", "--quiet", "--output", str(outdir), *context_args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return CliSynth(result=_load("prod", outdir), docker_calls=docker_calls)


@pytest.fixture(scope="session")
def prod(prod_cli) -> Synthesized:
    return prod_cli.result


@pytest.fixture(scope="session", params=["dev", "prod"])
def synthesized(request) -> Synthesized:
    return request.getfixturevalue(request.param)
