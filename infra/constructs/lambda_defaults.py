"""The one place that knows how ArtLens functions are built: runtime, architecture, tracing,
log group + retention, a role that may write only its own logs, validated environment names.

Two packagings, one library:
- image functions (predict, embed, reindex): `lambdas/Dockerfile`, staged at synth, built by the
  CLI at deploy. Nothing builds or bundles at synth time, so synth needs no Docker.
- zip functions (authorizer, migrate): `lambdas/` as code plus the runtime layer (see
  `runtime_layer`), built by `make layer` for the same platform as the image.

Both run Python 3.12 on Amazon Linux 2023, x86_64; why, and the wheel check, in infra/packaging.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aws_cdk import Annotations, Duration, IgnoreMode, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from artlens import names
from infra import packaging
from infra.settings import DeploymentSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
# The image's base is public.ecr.aws/lambda/python:3.12 (lambdas/Dockerfile); the zip functions
# run the managed runtime of the same version and the layer is built for it, x86_64 because the
# image is built for linux/amd64 (one set of wheels for both; infra/packaging.py).
RUNTIME = {
    runtime.name: runtime
    for runtime in (lambda_.Runtime.PYTHON_3_12, lambda_.Runtime.PYTHON_3_13)
}[packaging.LAMBDA_RUNTIME]
ARCHITECTURE = {"x86_64": lambda_.Architecture.X86_64, "arm64": lambda_.Architecture.ARM_64}[
    packaging.LAMBDA_ARCHITECTURE
]
IMAGE_PLATFORM = {
    "x86_64": ecr_assets.Platform.LINUX_AMD64,
    "arm64": ecr_assets.Platform.LINUX_ARM64,
}[packaging.LAMBDA_ARCHITECTURE]
# The model is baked into the image (lambdas/Dockerfile sets the same path as its default).
IMAGE_MODEL_CARD_PATH = f"/var/task/models/{names.MODEL_CARD_FILE}"

# POWERTOOLS_SERVICE_NAME of each function: its logs' `service`, and the `service` dimension of
# its metrics (artlens.metrics), which the dashboard and alarms select by.
SERVICE_PREDICT = "artlens-predict"
SERVICE_EMBED = "artlens-embed"
SERVICE_REINDEX = "artlens-reindex"
SERVICE_BATCH = "artlens-batch"

# Every variable a handler reads (artlens.settings + the signing scheme of issue 6). A name
# outside this set is a typo that would only surface as a ConfigError at the first cold start.
KNOWN_ENV_NAMES = frozenset(
    {
        names.ENV_MODEL_CARD_PATH,
        names.ENV_RENDITIONS_URL,
        names.ENV_DB_SECRET_ARN,
        names.ENV_DB_HOST,
        names.ENV_DB_PORT,
        names.ENV_DB_NAME,
        names.ENV_IMAGES_BUCKET,
        names.ENV_CORS_ORIGIN,
        names.ENV_TOKEN_SECRET_ARN,
        names.ENV_API_KEYS_SECRET_ARN,
        names.ENV_ORT_THREADS,
        names.ENV_LOG_LEVEL,
        names.ENV_ARTIFACTS_BUCKET,
        "POWERTOOLS_SERVICE_NAME",  # Powertools' own
    }
)

# What the image build context may contain: the Dockerfile's COPY sources and nothing else
# (not .venv, datasets or training output). Docker-style patterns, last match wins.
IMAGE_CONTEXT_EXCLUDE = [
    "*",
    "!lambdas",
    "lambdas/*",
    "!lambdas/Dockerfile",
    "!lambdas/*.py",
    "!layers",
    "layers/*",
    "!layers/python",
    "layers/python/*",
    "!layers/python/artlens",
    "**/__pycache__",
    "!requirements",
    "requirements/*",
    "!requirements/runtime.lock",
    "!models",
    "models/*",
    "!models/artlens.onnx",
    "!models/artlens.json",
]
ZIP_CODE_EXCLUDE = ["Dockerfile", "*.dockerignore", "__pycache__", "*.pyc"]


def image_code(cmd: str) -> lambda_.DockerImageCode:
    """The serving image with another handler as its CMD (staged at synth, built at deploy)."""
    return lambda_.DockerImageCode.from_image_asset(
        str(REPO_ROOT),
        file="lambdas/Dockerfile",
        platform=IMAGE_PLATFORM,
        cmd=[cmd],
        exclude=IMAGE_CONTEXT_EXCLUDE,
        ignore_mode=IgnoreMode.DOCKER,
    )


def zip_code() -> lambda_.Code:
    return lambda_.Code.from_asset(str(REPO_ROOT / "lambdas"), exclude=ZIP_CODE_EXCLUDE)


def layer_source_dir(settings: DeploymentSettings) -> tuple[Path, bool]:
    """(directory, is_built): `make layer` output when present, else layers/ (our code only)."""
    built = (REPO_ROOT / settings.layer_dir).resolve()
    if (built / packaging.LAYER_MANIFEST).is_file() and (built / "python" / "artlens").is_dir():
        return built, True
    return REPO_ROOT / "layers", False


def runtime_layer(scope: Construct, settings: DeploymentSettings) -> lambda_.LayerVersion:
    """The runtime layer, one per stack (a layer ARN changes with every version, so sharing it
    across stacks through an export would block updates)."""
    stack = Stack.of(scope)
    existing = stack.node.try_find_child("ArtLensRuntimeLayer")
    if existing is not None:
        return existing  # type: ignore[return-value]
    directory, is_built = layer_source_dir(settings)
    if not is_built:
        # Synth stays offline and fast without it; `make deploy` refuses to go on (preflight).
        Annotations.of(stack).add_warning_v2(
            "artlens:layer-not-built",
            f"{settings.layer_dir} has no built layer: the zip functions get the artlens code "
            "only. Run `make layer` (make deploy does) before deploying.",
        )
    layer = lambda_.LayerVersion(
        stack,
        "ArtLensRuntimeLayer",
        code=lambda_.Code.from_asset(
            str(directory), exclude=["**/__pycache__", "*.pyc", "requirements.lock"]
        ),
        compatible_runtimes=[RUNTIME],
        compatible_architectures=[ARCHITECTURE],
        description=(
            "artlens library + runtime requirements (make layer)"
            if is_built
            else "artlens library only: run `make layer` before deploying"
        ),
        removal_policy=RemovalPolicy.RETAIN if settings.is_prod else RemovalPolicy.DESTROY,
    )
    return layer


def create_function(
    scope: Construct,
    construct_id: str,
    settings: DeploymentSettings,
    *,
    code: lambda_.DockerImageCode | lambda_.Code,
    service: str,
    handler: str | None = None,
    layers: Sequence[lambda_.ILayerVersion] = (),
    memory_mb: int = 256,
    timeout: Duration = Duration.seconds(10),
    environment: Mapping[str, str] | None = None,
    vpc: ec2.IVpc | None = None,
    security_groups: Sequence[ec2.ISecurityGroup] = (),
    description: str = "",
) -> lambda_.Function:
    """An ArtLens function with the shared defaults; image code when `code` is DockerImageCode.

    The role is explicit so that no AWS managed policy (logs:* on every log group) is attached:
    it may write to its own log group only, plus what the callers grant.
    """
    env = {
        names.ENV_LOG_LEVEL: settings.log_level,
        "POWERTOOLS_SERVICE_NAME": service,
        **(environment or {}),
    }
    unknown = set(env) - KNOWN_ENV_NAMES
    if unknown:
        raise ValueError(f"{construct_id}: unknown environment variables {sorted(unknown)}")

    log_group = logs.LogGroup(
        scope,
        f"{construct_id}Logs",
        retention=getattr(logs.RetentionDays, _retention_name(settings.log_retention_days)),
        removal_policy=RemovalPolicy.RETAIN if settings.is_prod else RemovalPolicy.DESTROY,
    )
    role = iam.Role(
        scope,
        f"{construct_id}Role",
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        description=f"ArtLens {service} function",
    )
    role.add_to_policy(
        iam.PolicyStatement(
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[log_group.log_group_arn, f"{log_group.log_group_arn}:log-stream:*"],
        )
    )
    if vpc is not None:
        # Lambda creates the function's network interfaces with the execution role; these EC2
        # actions do not support resource-level scoping (AWS requires "*").
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "ec2:CreateNetworkInterface",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeSubnets",
                    "ec2:DeleteNetworkInterface",
                    "ec2:AssignPrivateIpAddresses",
                    "ec2:UnassignPrivateIpAddresses",
                ],
                resources=["*"],
            )
        )

    common: dict[str, Any] = dict(
        role=role,
        architecture=ARCHITECTURE,
        memory_size=memory_mb,
        timeout=timeout,
        environment=env,
        tracing=lambda_.Tracing.ACTIVE,
        log_group=log_group,
        description=description or f"ArtLens {service}",
        vpc=vpc,
        vpc_subnets=(
            ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED) if vpc else None
        ),
        security_groups=list(security_groups) or None,
    )
    if isinstance(code, lambda_.DockerImageCode):
        if handler is not None or layers:
            raise ValueError("image functions take their handler from the image CMD, no layers")
        return lambda_.DockerImageFunction(scope, construct_id, code=code, **common)
    if handler is None:
        raise ValueError("zip functions need a handler")
    return lambda_.Function(
        scope,
        construct_id,
        code=code,
        handler=handler,
        runtime=RUNTIME,
        layers=list(layers),
        **common,
    )


def grant_model_registry(artifacts: s3.IBucket, grantee: iam.IGrantable) -> None:
    """Read access to the model registry (models/<version>/ of the artifacts bucket) and
    nothing else there: GetObject on models/*, and ListBucket only with an s3:prefix under
    models/ (artlens.models.registry.BucketSource asks whether a version exists by listing
    models/<version>/, since without a bucket-wide ListBucket a missing key reads as 403).
    No write: versions are registered by an operator (make register-model)."""
    prefix = names.MODELS_PREFIX
    iam.Grant.add_to_principal(
        grantee=grantee, actions=["s3:GetObject"],
        resource_arns=[artifacts.arn_for_objects(f"{prefix}*")],
    )
    grantee.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["s3:ListBucket"],
            resources=[artifacts.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        )
    )


def _retention_name(days: int) -> str:
    names = {
        1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS",
        30: "ONE_MONTH", 60: "TWO_MONTHS", 90: "THREE_MONTHS", 180: "SIX_MONTHS",
        365: "ONE_YEAR", 731: "TWO_YEARS", 1827: "FIVE_YEARS", 3653: "TEN_YEARS",
    }
    if days not in names:
        raise ValueError(f"logRetentionDays must be one of {sorted(names)}")
    return names[days]
