"""The stack: composes the constructs, tags them, attaches cdk-nag suppressions with reasons.

One stack on purpose: the page's origin feeds the API's CORS settings while the API's URL feeds
the page's config.json, and the bucket notification points at the ingestion queue while the
functions point at the bucket. Split across stacks these would be export cycles (or exports
that block updates); in one stack CloudFormation orders them itself. Stateful resources are
retained in prod (RemovalPolicy) and the stack has termination protection there.
"""

from __future__ import annotations

from aws_cdk import Acknowledgment, CfnOutput, Environment, Stack, Tags, Validations
from constructs import Construct, IConstruct

from infra.constructs.api import Api, AuthSecrets
from infra.constructs.data_lake import DataLake
from infra.constructs.database import Database
from infra.constructs.frontend import Frontend
from infra.constructs.ingestion import Ingestion
from infra.constructs.monitoring import Monitoring
from infra.settings import DeploymentSettings


class ArtLensStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings):
        env = (
            Environment(account=settings.account, region=settings.region)
            if settings.account or settings.region
            else None
        )
        super().__init__(
            scope,
            construct_id,
            env=env,
            description=f"ArtLens ({settings.env_name}): artwork classification and similarity",
            termination_protection=settings.is_prod,
        )
        self.settings = settings
        self.lake = DataLake(self, "DataLake", settings=settings)
        self.database = Database(self, "Database", settings=settings)
        self.secrets = AuthSecrets(self, "Secrets", settings=settings)
        self.frontend = Frontend(
            self, "Frontend", settings=settings, access_logs=self.lake.access_logs
        )
        self.api = Api(
            self,
            "Api",
            settings=settings,
            images=self.lake.images,
            database=self.database,
            secrets=self.secrets,
            frontend_origin=self.frontend.origin,
        )
        self.frontend.deploy_site(self.api.url)
        self.ingestion = Ingestion(
            self, "Ingestion", settings=settings, images=self.lake.images, database=self.database
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            settings=settings,
            api=self.api.rest_api,
            functions=[
                *self.api.functions,
                *self.ingestion.functions,
                self.database.migrate_function,
            ],
            dead_letters=self.ingestion.dead_letters,
            database=self.database.instance,
        )

        outputs = {
            "ApiUrl": (self.api.url, "REST API base URL (POST /predict, GET /map)"),
            "SiteUrl": (self.frontend.url, "the page (CloudFront)"),
            "ImagesBucketName": (self.lake.images.bucket_name, "drop pictures under incoming/"),
            "ArtifactsBucketName": (self.lake.artifacts.bucket_name, "model artifacts"),
            "SiteBucketName": (self.frontend.bucket.bucket_name, "page files"),
            "TokenSecretArn": (self.secrets.token_key.secret_arn, "JWT signing key"),
            "ApiKeysSecretArn": (self.secrets.api_keys.secret_arn, "API client keys (HMAC)"),
            "DbSecretArn": (self.database.secret.secret_arn, "database credentials"),
            "ReindexFunctionName": (
                self.ingestion.reindex_function.function_name, "invoke after a model change"
            ),
            "DeadLetterQueueUrl": (self.ingestion.dead_letters.queue_url, "failed ingestions"),
        }
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)

        Tags.of(self).add("project", "artlens")
        Tags.of(self).add("environment", settings.env_name)
        add_nag_suppressions(self)


def acknowledge(construct: IConstruct, rule: str, reason: str) -> None:
    """Accept one cdk-nag finding (rule id, with its [finding] part for granular rules)."""
    Validations.of(construct).acknowledge(Acknowledgment(id=f"AwsSolutions::{rule}", reason=reason))


def _logical(construct: IConstruct) -> str:
    return Stack.of(construct).get_logical_id(construct.node.default_child)  # type: ignore[arg-type]


def add_nag_suppressions(stack: ArtLensStack) -> None:
    """Every accepted finding, with its reason. Anything not listed here fails the synth."""
    acknowledge(
        stack,
        "AwsSolutions-L1",
        "python3.11 matches the container image base (public.ecr.aws/lambda/python:3.11) and "
        "the runtime layer's wheels; CDK's own framework functions choose their runtimes.",
    )
