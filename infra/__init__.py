"""The ArtLens CDK app: `python -m infra.app` (what `cdk synth` runs, see cdk.json)."""
