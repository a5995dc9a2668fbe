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
from infra.constructs.backfill import Backfill
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
        # The distribution serves the page and, from the images bucket, renditions/ only.
        self.frontend = Frontend(
            self, "Frontend", settings=settings, access_logs=self.lake.access_logs,
            images=self.lake.images,
        )
        self.api = Api(
            self,
            "Api",
            settings=settings,
            images=self.lake.images,
            artifacts=self.lake.artifacts,
            database=self.database,
            secrets=self.secrets,
            frontend_origin=self.frontend.origin,
            renditions_base_url=self.frontend.renditions_base_url,
        )
        self.frontend.deploy_site(self.api.url)
        self.ingestion = Ingestion(
            self, "Ingestion", settings=settings, images=self.lake.images,
            artifacts=self.lake.artifacts, database=self.database,
        )
        self.backfill = Backfill(
            self,
            "Backfill",
            settings=settings,
            images=self.lake.images,
            artifacts=self.lake.artifacts,
            ingestion=self.ingestion,
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            settings=settings,
            api=self.api.rest_api,
            functions=[
                *self.api.functions,
                *self.ingestion.functions,
                self.backfill.batch_function,
                self.database.migrate_function,
            ],
            state_machines=[self.backfill.state_machine],
            backfill_stalled=self.backfill.stalled_expression(),
            backfill_progress=self.backfill.items_done(),
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
            "ReindexLogGroupName": (
                self.ingestion.reindex_log_group.log_group_name,
                "follow a reindex: aws logs tail <name> --follow",
            ),
            "BackfillStateMachineArn": (
                self.backfill.state_machine.state_machine_arn,
                "backfill / reindex at scale: make backfill ENV=... (docs/operations.md)",
            ),
            "DeadLetterQueueUrl": (self.ingestion.dead_letters.queue_url, "failed ingestions"),
            "DeadLetterQueueArn": (
                self.ingestion.dead_letters.queue_arn, "redrive source (docs/operations.md)"
            ),
            "IngestionQueueArn": (
                self.ingestion.queue.queue_arn, "redrive destination (docs/operations.md)"
            ),
        }
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)

        # AWS::RDS::DBProxyTargetGroup is taggable in CDK but its schema has no Tags property.
        untaggable = ["AWS::RDS::DBProxyTargetGroup"]
        Tags.of(self).add("project", "artlens", exclude_resource_types=untaggable)
        Tags.of(self).add("environment", settings.env_name, exclude_resource_types=untaggable)
        add_nag_suppressions(self)


def acknowledge(construct: IConstruct, rule: str, reason: str) -> None:
    """Accept one cdk-nag finding (rule id, with its [finding] part for granular rules)."""
    Validations.of(construct).acknowledge(Acknowledgment(id=f"AwsSolutions::{rule}", reason=reason))


def _logical(construct: IConstruct) -> str:
    return Stack.of(construct).get_logical_id(construct.node.default_child)  # type: ignore[arg-type]


def _state_machine_wildcards(stack: ArtLensStack) -> dict[IConstruct, list[str]]:
    """The resource wildcards CDK writes into the state machine's policies, as cdk-nag names
    them: its role's default policy, and the DistributedMap's own policy."""
    backfill = stack.backfill
    machine = backfill.state_machine
    machine_name = (
        '{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"'
        f'{_logical(machine)}'
        '"}]}]}'
    )
    states = "Resource::arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>"
    return {
        machine.role.node.find_child("DefaultPolicy"): [
            f"Resource::<{_logical(backfill.batch_function)}.Arn>:*",
            f"{states}:mapRun:{backfill.state_machine_name}/*",
            f"Resource::arn:<AWS::Partition>:s3:::<{_logical(stack.lake.artifacts)}>/*",
        ],
        machine.node.find_child("DistributedMapPolicy"): [
            f"{states}:execution:{machine_name}:*",
            f"{states}:execution:{machine_name}/Batches:*",
            f"{states}:execution:{machine_name}/InventoryBatches:*",
        ],
    }


def add_nag_suppressions(stack: ArtLensStack) -> None:
    """Every accepted finding, with its reason. Anything not listed here fails the synth."""
    settings = stack.settings
    acknowledge(
        stack,
        "AwsSolutions-L1",
        "Our zip functions run python3.12, the runtime of the container image base "
        "(public.ecr.aws/lambda/python:3.12) and of the layer's wheels; CDK's own framework "
        "functions choose their runtimes.",
    )

    # --- our functions: the wildcards that remain are bounded by a resource we own -----------
    functions = [
        stack.api.authorizer_function,
        stack.api.predict_function,
        stack.ingestion.embed_function,
        stack.ingestion.reindex_function,
        stack.backfill.batch_function,
        stack.database.migrate_function,
    ]
    for function in functions:
        policy = function.role.node.find_child("DefaultPolicy")  # type: ignore[union-attr]
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords and (VPC functions) the EC2 network "
            "interface actions Lambda needs do not support resource-level permissions.",
        )
        scope = function.node.scope
        assert scope is not None
        log_group = scope.node.find_child(f"{function.node.id}Logs")
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::<{_logical(log_group)}.Arn>:log-stream:*]",
            "Log streams are created by Lambda with generated names; scoped to this function's "
            "own log group.",
        )
    images = _logical(stack.lake.images)
    prefix_grants = {
        stack.api.predict_function: ["gallery", "uploads", "reports"],
        stack.ingestion.embed_function: ["incoming", "gallery", "rejected", "renditions",
                                         "reports"],
        stack.ingestion.reindex_function: ["gallery"],
        stack.backfill.batch_function: ["incoming", "gallery", "rejected", "renditions",
                                        "reports"],
    }
    for function, prefixes in prefix_grants.items():
        policy = function.role.node.find_child("DefaultPolicy")  # type: ignore[union-attr]
        for prefix in prefixes:
            acknowledge(
                policy,
                f"AwsSolutions-IAM5[Resource::<{images}.Arn>/{prefix}/*]",
                f"Object keys under {prefix}/ are content hashes or upload names/ids; the grant "
                "is limited to that prefix and to the actions the function performs there.",
            )
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::<{_logical(stack.lake.artifacts)}.Arn>/models/*]",
            "The model registry: models/<version>/ holds one card and its ONNX file per "
            "version, named by operators; read-only (GetObject), and every file is checked "
            "against the SHA-256 its card names before it is served.",
        )
    acknowledge(
        stack.database.node.find_child("MigrateProvider"),
        f"AwsSolutions-IAM5[Resource::<{_logical(stack.database.migrate_function)}.Arn>:*]",
        "The Provider framework invokes any version of the migrate function (CDK-generated).",
    )

    # --- the backfill state machine --------------------------------------------------------
    acknowledge(
        stack.backfill.state_machine.role.node.find_child("DefaultPolicy"),
        "AwsSolutions-IAM5[Resource::*]",
        "Step Functions log delivery (logs:CreateLogDelivery and the other vended-log actions) "
        "and X-Ray PutTraceSegments do not support resource-level permissions.",
    )
    for policy, findings in _state_machine_wildcards(stack).items():
        for finding in findings:
            acknowledge(
                policy,
                f"AwsSolutions-IAM5[{finding}]",
                "Generated by CDK's DistributedMap and scoped to what it names: invoking any "
                "version of the batch function, the map run's child executions and map runs "
                "of this state machine, and the map results in the artifacts bucket (writes "
                "outside backfill-results/ are denied by an explicit statement).",
            )

    acknowledge(
        stack.backfill.state_machine.role.node.find_child("DefaultPolicy"),
        f"AwsSolutions-IAM5[Resource::<{_logical(stack.lake.artifacts)}.Arn>/inventory/*]",
        "S3 Inventory reports of the images bucket (manifest.json and the CSV files it "
        "names) are written by S3 under generated dated paths below inventory/; the state "
        "machine may only read (s3:GetObject) that prefix of the artifacts bucket.",
    )

    # --- CDK's own framework functions (custom resources we do not write) --------------------
    basic_execution = (
        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        "AWSLambdaBasicExecutionRole]"
    )
    for child in stack.node.children:
        name = child.node.id
        if name.startswith(("BucketNotificationsHandler", "LogRetention", "Custom::CDKBucket")):
            acknowledge(
                child,
                basic_execution,
                "CDK-provided custom resource function; the managed policy only lets it write "
                "its own CloudWatch logs.",
            )
        if name.startswith("LogRetention"):
            acknowledge(
                child,
                "AwsSolutions-IAM5[Resource::*]",
                "CDK's LogRetention function sets the retention of the RDS log group, whose "
                "name is only known after the instance exists.",
            )
        if name.startswith("Custom::CDKBucketDeployment"):
            for finding in (
                "Action::s3:Abort*", "Action::s3:DeleteObject*", "Action::s3:GetBucket*",
                "Action::s3:GetObject*", "Action::s3:List*", "Resource::*",
                f"Resource::<{_logical(stack.frontend.bucket)}.Arn>/*",
                "Resource::arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-"
                "<AWS::Region>/*",
            ):
                acknowledge(
                    child,
                    f"AwsSolutions-IAM5[{finding}]",
                    "CDK BucketDeployment: copies the page from the CDK asset bucket into the "
                    "site bucket and invalidates CloudFront (CreateInvalidation has no "
                    "resource-level permissions); policy generated by CDK, scoped to those "
                    "two buckets.",
                )
    acknowledge(
        stack.database.node.find_child("MigrateProvider"),
        basic_execution,
        "CDK Provider framework function; the managed policy only lets it write its logs.",
    )
    if settings.manage_api_gateway_log_role:
        acknowledge(
            stack.api.rest_api,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonAPIGatewayPushToCloudWatchLogs]",
            "The account-level role API Gateway needs to write access logs; AWS's policy is "
            "the documented one for it.",
        )

    # --- design decisions ---------------------------------------------------------------------
    acknowledge(
        stack.api.rest_api,
        "AwsSolutions-COG4",
        "Callers authenticate with our REQUEST authorizer (HS256 bearer tokens, and HMAC "
        "signed requests from issue 6), not with a Cognito user pool.",
    )
    waf = (
        "No WAF web ACL by default: the API is authenticated, throttled per stage and alarmed; "
        "a WAF costs per ACL and per rule and can be attached later without code changes."
    )
    acknowledge(stack.api.rest_api, "AwsSolutions-APIG3", waf)
    acknowledge(stack.frontend.distribution, "AwsSolutions-CFR2", waf)
    acknowledge(
        stack.frontend.distribution,
        "AwsSolutions-CFR1",
        "The page is meant to be reachable worldwide; there is no legal reason to geo-block.",
    )
    acknowledge(
        stack.frontend.distribution,
        "AwsSolutions-CFR4",
        "Without a custom domain CloudFront serves its default *.cloudfront.net certificate, "
        "whose viewer TLS policy cannot be raised; a custom domain with an ACM certificate "
        "uses TLSv1.2_2021 (already set).",
    )
    acknowledge(
        stack.database.instance,
        "AwsSolutions-RDS11",
        "The default port is kept: the database sits in isolated subnets and accepts "
        "connections only from the function and rotation security groups.",
    )
    if not settings.db_multi_az:
        acknowledge(
            stack.database.instance,
            "AwsSolutions-RDS3",
            f"Single-AZ in {settings.env_name} to keep cost down; prod sets dbMultiAz.",
        )
    if not settings.is_prod:
        acknowledge(
            stack.database.instance,
            "AwsSolutions-RDS10",
            f"{settings.env_name} is disposable (cdk destroy); prod enables deletion protection.",
        )
    acknowledge(
        stack.secrets.token_key,
        "AwsSolutions-SMG4",
        "Rotating the HS256 key invalidates every live token at once; it is rotated by hand "
        "(docs/deploy.md) and the authorizer re-reads it within its cache TTL.",
    )
    acknowledge(
        stack.secrets.api_keys,
        "AwsSolutions-SMG4",
        "Holds client keys managed with `make key` (issue 6); keys are rotated per client by "
        "adding a new key id and removing the old one, not by a rotation function.",
    )
