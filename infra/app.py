"""The CDK app. `cdk synth` / `cdk deploy --all -c env=dev` run `python -m infra.app` (cdk.json).

`build_app(context)` is what tests call: same app, synthesized in-process. Synth needs neither
AWS credentials nor Docker: container images and zip assets are only staged into the cloud
assembly (the CLI builds and uploads them at deploy). The output directory comes from
CDK_OUTDIR (set by the CLI), as App() reads it itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks

from infra.settings import DeploymentSettings
from infra.stacks import ArtLensStack

CDK_JSON = Path(__file__).resolve().parents[1] / "cdk.json"


def cdk_json_context() -> dict[str, Any]:
    """cdk.json's context, so `python -m infra.app` without the CLI sees the same values."""
    return json.loads(CDK_JSON.read_text())["context"]


def build_app(context: Mapping[str, Any] | None = None, *, outdir: str | None = None) -> App:
    """An app with the ArtLens stack; `context` overrides cdk.json (as `-c` does)."""
    # Context given through the CLI (CDK_CONTEXT_JSON) is applied by App() over these values.
    app = App(context={**cdk_json_context(), **(context or {})}, outdir=outdir)
    settings = DeploymentSettings.from_context(app.node.try_get_context)
    ArtLensStack(app, settings.stack_prefix, settings=settings)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
    return app


def main() -> None:
    build_app().synth()


if __name__ == "__main__":
    main()
