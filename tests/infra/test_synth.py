"""Assertions on the synthesized templates: properties of each component, never logical IDs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from artlens.settings import Settings
from infra import packaging
from tests.infra.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def functions(synth) -> dict[str, dict]:
    return synth.of_type("AWS::Lambda::Function")


def function_with(synth, *, command: str | None = None, handler: str | None = None) -> dict:
    found = [
        f["Properties"]
        for f in functions(synth).values()
        if (command and f["Properties"].get("ImageConfig", {}).get("Command") == [command])
        or (handler and f["Properties"].get("Handler") == handler)
    ]
    assert len(found) == 1, f"expected one function for {command or handler}, found {len(found)}"
    return found[0]


def logical_id_of(synth, props: dict) -> str:
    return next(k for k, v in synth.resources.items() if v.get("Properties") is props)


def role_statements(synth, function_props: dict, role_key: str = "Role") -> list[dict]:
    """Every statement of every policy attached to the function's (or state machine's) role."""
    role_id = function_props[role_key]["Fn::GetAtt"][0]
    statements = []
    for policy in synth.of_type("AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


def as_list(value):
    return value if isinstance(value, list) else [value]


def resource_text(resource) -> str:
    return json.dumps(resource, sort_keys=True)


# --- API ------------------------------------------------------------------------------------


def test_request_authorizer_never_caches_a_result(synthesized):
    """Issue 13: a cached Allow let one captured signed Authorization value pass for any body,
    route, nonce and timestamp for 300 s, past the nonce window and key revocation. Every
    request is authorized afresh (TTL 0), in every environment."""
    (authorizer,) = synthesized.of_type("AWS::ApiGateway::Authorizer").values()
    props = authorizer["Properties"]
    assert props["Type"] == "REQUEST"
    assert props["AuthorizerResultTtlInSeconds"] == 0
    # Only the header both schemes send: other identity sources would be required headers.
    assert props["IdentitySource"] == "method.request.header.Authorization"
    auth_fn = function_with(synthesized, handler="authorizer.handler")
    assert logical_id_of(synthesized, auth_fn) in resource_text(props["AuthorizerUri"])


def test_predict_and_map_require_the_authorizer_and_options_do_not(dev):
    methods = {}
    resources = dev.of_type("AWS::ApiGateway::Resource")
    for method in dev.of_type("AWS::ApiGateway::Method").values():
        props = method["Properties"]
        path_id = props["ResourceId"].get("Ref")
        path = resources[path_id]["Properties"]["PathPart"] if path_id in resources else "/"
        methods[(props["HttpMethod"], path)] = props
    assert methods[("POST", "predict")]["AuthorizationType"] == "CUSTOM"
    assert methods[("GET", "map")]["AuthorizationType"] == "CUSTOM"
    assert methods[("OPTIONS", "predict")]["AuthorizationType"] == "NONE"  # CORS preflight
    live_alias = next(iter(dev.of_type("AWS::Lambda::Alias")))
    routes = {route for route in methods if route[0] != "OPTIONS"}
    assert len(routes) >= 4
    for route in routes:
        assert methods[route]["AuthorizationType"] == "CUSTOM", route
        assert live_alias in resource_text(methods[route]["Integration"]), route


def test_every_route_the_predict_function_answers_is_reachable_through_api_gateway(dev):
    """A route added to the library but not to API Gateway would answer 403 there."""
    from artlens.api.routes import PredictApi

    api = PredictApi(None, None, None, None, "https://art.example")  # type: ignore[arg-type]
    resources = dev.of_type("AWS::ApiGateway::Resource")

    def full_path(resource_id: str) -> str:
        props = resources[resource_id]["Properties"]
        parent = props["ParentId"].get("Ref")
        return (full_path(parent) if parent in resources else "") + "/" + props["PathPart"]

    deployed = set()
    for method in dev.of_type("AWS::ApiGateway::Method").values():
        props = method["Properties"]
        path_id = props["ResourceId"].get("Ref")
        if path_id in resources and props["HttpMethod"] != "OPTIONS":
            deployed.add((props["HttpMethod"], full_path(path_id)))
    assert set(api.routes) <= deployed, set(api.routes) - deployed


def test_api_binary_types_cors_and_gateway_responses(dev):
    (api,) = dev.of_type("AWS::ApiGateway::RestApi").values()
    binary = {"image/*", "multipart/form-data", "application/octet-stream"}
    assert binary <= set(api["Properties"]["BinaryMediaTypes"])
    (distribution_id,) = dev.of_type("AWS::CloudFront::Distribution")
    responses = {
        r["Properties"]["ResponseType"]: r["Properties"]
        for r in dev.of_type("AWS::ApiGateway::GatewayResponse").values()
    }
    assert {"DEFAULT_4XX", "DEFAULT_5XX", "REQUEST_TOO_LARGE", "ACCESS_DENIED"} <= set(responses)
    too_large = responses["REQUEST_TOO_LARGE"]
    assert too_large["StatusCode"] == "413"
    assert '"error"' in too_large["ResponseTemplates"]["application/json"]
    # a stale signed request (the authorizer's explicit Deny) is told as 401 with its code
    denied = responses["ACCESS_DENIED"]
    assert denied["StatusCode"] == "401"
    assert "$context.authorizer.error" in denied["ResponseTemplates"]["application/json"]
    for response in responses.values():
        origin = response["ResponseParameters"][
            "gatewayresponse.header.Access-Control-Allow-Origin"
        ]
        assert distribution_id in resource_text(origin), "CORS origin is the page, not *"
    preflight = [
        m["Properties"]["Integration"]
        for m in dev.of_type("AWS::ApiGateway::Method").values()
        if m["Properties"]["HttpMethod"] == "OPTIONS"
    ]
    assert preflight and all(distribution_id in resource_text(p) for p in preflight)
    assert "'*'" not in resource_text(preflight)
    # API Gateway's own answers allow the headers the handlers allow (signed requests included)
    from artlens.names import ALLOWED_HEADERS

    for response in responses.values():
        allowed = response["ResponseParameters"][
            "gatewayresponse.header.Access-Control-Allow-Headers"
        ]
        assert set(allowed.strip("'").split(",")) == set(ALLOWED_HEADERS)


def test_infra_takes_shared_names_from_the_runtime_library_without_its_dependencies():
    """Prefixes, headers and variable names exist once (artlens.names); the CDK app imports
    that module alone, so synth never needs numpy, psycopg2, boto3 or onnxruntime."""
    probe = (
        "import sys; import infra.app; from artlens import names; "
        "from infra.constructs import api; "
        "assert api.ALLOWED_HEADERS == list(names.ALLOWED_HEADERS); "
        "heavy = {'numpy', 'psycopg2', 'boto3', 'onnxruntime', 'PIL'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as cdk.json runs it
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_environment_variable_infra_sets_is_one_the_library_reads():
    from artlens import names
    from infra.constructs.lambda_defaults import KNOWN_ENV_NAMES

    library = {value for key, value in vars(names).items() if key.startswith("ENV_")}
    assert KNOWN_ENV_NAMES - {"POWERTOOLS_SERVICE_NAME"} <= library


def test_stage_is_throttled_traced_and_access_logged(dev):
    (stage,) = dev.of_type("AWS::ApiGateway::Stage").values()
    props = stage["Properties"]
    assert props["AccessLogSetting"]["DestinationArn"]
    assert props["TracingEnabled"] is True
    (setting,) = props["MethodSettings"]
    assert setting["ThrottlingRateLimit"] == 20 and setting["ThrottlingBurstLimit"] == 40
    assert setting["DataTraceEnabled"] is False


# --- functions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    ["lambdas.predict.handler", "lambdas.embed.handler", "lambdas.reindex.handler",
     "lambdas.batch.handler"],
)
def test_image_functions_share_one_amd64_image(dev, command):
    props = function_with(dev, command=command)
    assert props["PackageType"] == "Image"
    assert props["Architectures"] == ["x86_64"]
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["VpcConfig"]["SubnetIds"]
    (image,) = dev.assets["dockerImages"].values()
    assert image["source"]["dockerFile"] == "lambdas/Dockerfile"
    assert image["source"]["platform"] == "linux/amd64"


def test_predict_memory_timeout_and_provisioned_concurrency_follow_context(dev, prod):
    for synth, provisioned in ((dev, None), (prod, 2)):
        props = function_with(synth, command="lambdas.predict.handler")
        # 2 full vCPUs (Lambda: 1,769 MB each) for the 2 ONNX Runtime threads it is given.
        assert props["MemorySize"] == 3538 and props["Timeout"] == 15
        assert props["Environment"]["Variables"]["ORT_THREADS"] == "2"
        # The indexing functions run the model on one thread beside the ingest pipeline.
        embed = function_with(synth, command="lambdas.embed.handler")
        assert embed["Environment"]["Variables"]["ORT_THREADS"] == "1"
        (alias,) = synth.of_type("AWS::Lambda::Alias").values()
        config = alias["Properties"].get("ProvisionedConcurrencyConfig")
        assert (config or {}).get("ProvisionedConcurrentExecutions") == provisioned


@pytest.mark.parametrize("handler", ["authorizer.handler", "migrate.handler"])
def test_zip_functions_use_the_runtime_layer(dev, handler):
    props = function_with(dev, handler=handler)
    assert props["Runtime"] == packaging.LAMBDA_RUNTIME == "python3.12"
    assert props["Architectures"] == [packaging.LAMBDA_ARCHITECTURE]
    (layer_id,) = [k for k, layer in dev.of_type("AWS::Lambda::LayerVersion").items()
                   if "artlens" in layer["Properties"].get("Description", "")]
    assert props["Layers"] == [{"Ref": layer_id}]
    layer = dev.resources[layer_id]["Properties"]
    assert layer["CompatibleRuntimes"] == [props["Runtime"]]
    assert layer["CompatibleArchitectures"] == props["Architectures"]


def test_image_build_context_holds_only_what_the_dockerfile_copies(dev):
    (image,) = dev.assets["dockerImages"].values()
    context = dev.outdir / image["source"]["directory"]
    files = {p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()}
    assert {"lambdas/Dockerfile", "requirements/runtime.lock", "lambdas/predict.py",
            "layers/python/artlens/__init__.py"} <= files
    allowed = re.compile(
        r"^(lambdas/[^/]+\.py|lambdas/Dockerfile|requirements/runtime\.lock|"
        r"layers/python/artlens/.+|models/artlens\.(onnx|json))$"
    )
    assert [f for f in files if not allowed.match(f) or "__pycache__" in f] == []


def _dummy_env(environment: dict) -> dict[str, str]:
    """Deploy-time tokens replaced by plausible values."""
    return {k: v if isinstance(v, str) else f"dummy-{k.lower()}" for k, v in environment.items()}


@pytest.mark.parametrize(
    "selector, needs",
    [
        ({"command": "lambdas.predict.handler"}, ("model", "database", "lake", "cors")),
        ({"command": "lambdas.embed.handler"}, ("model", "database", "lake")),
        ({"command": "lambdas.reindex.handler"}, ("model", "database", "lake")),
        ({"command": "lambdas.batch.handler"}, ("model", "database", "lake")),
        ({"handler": "authorizer.handler"}, ("token",)),
        ({"handler": "migrate.handler"}, ("database",)),
    ],
)
def test_function_environment_satisfies_the_handler_settings(dev, selector, needs):
    environment = function_with(dev, **selector)["Environment"]["Variables"]
    settings = Settings.from_env(_dummy_env(environment), needs=needs)
    assert not settings.is_local
    if "model" in needs:
        assert settings.model_card_path == "/var/task/models/artlens.json"


def test_predict_can_read_the_client_keys_it_reverifies_signed_requests_with(dev):
    """Predict verifies every signed request itself (issue 13), so it needs the key secret:
    without it every signed request would be refused on AWS (fail closed)."""
    from artlens.names import ENV_API_KEYS_SECRET_ARN

    predict = function_with(dev, command="lambdas.predict.handler")
    authorizer = function_with(dev, handler="authorizer.handler")
    secret = predict["Environment"]["Variables"][ENV_API_KEYS_SECRET_ARN]
    assert secret == authorizer["Environment"]["Variables"][ENV_API_KEYS_SECRET_ARN]
    reads = [
        st for st in role_statements(dev, predict)
        if "secretsmanager:GetSecretValue" in as_list(st["Action"])
    ]
    assert any(secret in as_list(st["Resource"]) for st in reads)


# --- ingestion ------------------------------------------------------------------------------


def test_queue_dlq_and_event_source_mapping(dev):
    queues = dev.of_type("AWS::SQS::Queue")
    (main_id,) = [k for k, q in queues.items() if "RedrivePolicy" in q["Properties"]]
    main = queues[main_id]["Properties"]
    assert main["RedrivePolicy"]["maxReceiveCount"] == 3
    embed = function_with(dev, command="lambdas.embed.handler")
    assert main["VisibilityTimeout"] > embed["Timeout"]
    assert all(q["Properties"]["SqsManagedSseEnabled"] for q in queues.values())
    (mapping,) = dev.of_type("AWS::Lambda::EventSourceMapping").values()
    props = mapping["Properties"]
    assert main_id in resource_text(props["EventSourceArn"])
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["BatchSize"] == 10
    assert props["MaximumBatchingWindowInSeconds"] == 5
    assert props["ScalingConfig"] == {"MaximumConcurrency": 2}
    # SQS's maximum, so a days-long backlog is not dropped from the tail.
    assert main["MessageRetentionPeriod"] == 14 * 24 * 3600


def test_no_function_reserves_concurrency(synthesized):
    """Reserving any fails on accounts with the default low concurrency quota; overlapping
    reindex runs are safe (idempotent rows, the switch under an advisory lock)."""
    for props in (f["Properties"] for f in functions(synthesized).values()):
        assert "ReservedConcurrentExecutions" not in props

def test_only_incoming_uploads_are_announced_to_the_queue(dev):
    (notifications,) = dev.of_type("Custom::S3BucketNotifications").values()
    (config,) = notifications["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Events"] == ["s3:ObjectCreated:*"]
    assert config["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "incoming/"}]


# --- storage, database, network -------------------------------------------------------------


def test_every_bucket_is_private_encrypted_and_tls_only(synthesized):
    buckets = synthesized.of_type("AWS::S3::Bucket")
    assert len(buckets) == 4  # images, artifacts, site, access logs
    for props in (b["Properties"] for b in buckets.values()):
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True,
            "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
        }
    policies = synthesized.of_type("AWS::S3::BucketPolicy").values()
    tls_only = [
        p for p in policies
        if '"aws:SecureTransport": "false"' in resource_text(p)
        and '"Effect": "Deny"' in resource_text(p)
    ]
    assert len(tls_only) == len(buckets)


def test_images_bucket_expires_rejected_and_logs_access(dev):
    images = [
        b["Properties"] for b in dev.of_type("AWS::S3::Bucket").values()
        if "rejected/" in resource_text(b)
    ]
    (props,) = images
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = props["LifecycleConfiguration"]["Rules"]
    rule = next(r for r in rules if r.get("Prefix") == "rejected/")
    assert rule["ExpirationInDays"] == 30
    uploads = next(r for r in rules if r.get("Prefix") == "uploads/")
    assert uploads["ExpirationInDays"] == 30
    assert props["LoggingConfiguration"]["DestinationBucketName"]


def test_database_is_private_encrypted_postgres17_with_rotation(dev, prod):
    for synth in (dev, prod):
        (db,) = synth.of_type("AWS::RDS::DBInstance").values()
        props = db["Properties"]
        # The major only: RDS retires minors, auto minor upgrades keep it on a supported one.
        assert props["Engine"] == "postgres" and props["EngineVersion"] == "17"
        assert props["AutoMinorVersionUpgrade"] is True
        group = synth.resources[props["DBParameterGroupName"]["Ref"]]["Properties"]
        assert group["Family"] == "postgres17"
        # HNSW builds: a quarter of the instance's memory (kB), not inherited by each
        # autovacuum worker; pgvector needs no shared_preload_libraries.
        assert group["Parameters"] == {
            "maintenance_work_mem": "{DBInstanceClassMemory/4096}",
            "autovacuum_work_mem": "65536",
        }
        assert props["StorageEncrypted"] is True and props["PubliclyAccessible"] is False
        assert props["DeletionProtection"] is (synth is prod)
        (rotation,) = synth.of_type("AWS::SecretsManager::RotationSchedule").values()
        assert rotation["Properties"]["HostedRotationLambda"]["RotationType"] == (
            "PostgreSQLSingleUser"
        )
    assert dev.of_type("AWS::RDS::DBProxy") == {}
    (proxy,) = prod.of_type("AWS::RDS::DBProxy").values()
    assert proxy["Properties"]["RequireTLS"] is True


def test_vpc_has_no_route_to_the_internet_but_has_endpoints(dev):
    for cfn_type in ("AWS::EC2::NatGateway", "AWS::EC2::InternetGateway", "AWS::EC2::EIP"):
        assert dev.of_type(cfn_type) == {}
    services = {
        (e["Properties"].get("VpcEndpointType", "Gateway"), resource_text(e["Properties"]))
        for e in dev.of_type("AWS::EC2::VPCEndpoint").values()
    }
    kinds = {(kind, name) for kind, text in services
             for name in ("s3", "secretsmanager", "sqs") if f".{name}" in text}
    assert kinds == {("Gateway", "s3"), ("Interface", "secretsmanager"), ("Interface", "sqs")}


def test_only_our_security_groups_reach_postgres(dev):
    ingress = [
        r["Properties"] for r in dev.of_type("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"].get("FromPort") == 5432
    ]
    assert len(ingress) == 2  # functions and rotation
    assert all("SourceSecurityGroupId" in rule and "CidrIp" not in rule for rule in ingress)


def test_prod_keeps_the_database_secret_like_its_snapshot(dev, prod):
    for synth, policy in ((dev, "Delete"), (prod, "Retain")):
        (db,) = synth.of_type("AWS::RDS::DBInstance").values()
        assert db["DeletionPolicy"] == ("Snapshot" if synth is prod else "Delete")
        (attachment,) = synth.of_type("AWS::SecretsManager::SecretTargetAttachment").values()
        secret_id = attachment["Properties"]["SecretId"]["Ref"]
        assert synth.resources[secret_id]["DeletionPolicy"] == policy
        assert synth.resources[secret_id]["UpdateReplacePolicy"] == policy


def depends_on(synth, logical_id: str) -> set[str]:
    return set(as_list(synth.resources[logical_id].get("DependsOn", [])))


def test_schema_is_applied_before_rotation_and_before_the_functions_that_need_it(synthesized):
    """Rotation (which rotates at once when created) must not change the password while
    migrate runs: instance + credentials -> schema -> rotation. Every function that reads the
    index, and embed's queue mapping, is created after the schema."""
    synth = synthesized
    (schema_id,) = synth.of_type("AWS::CloudFormation::CustomResource")
    (rotation_id,) = synth.of_type("AWS::SecretsManager::RotationSchedule")
    (instance_id,) = synth.of_type("AWS::RDS::DBInstance")
    (attachment_id,) = synth.of_type("AWS::SecretsManager::SecretTargetAttachment")
    assert {instance_id, attachment_id} <= depends_on(synth, schema_id)
    assert rotation_id not in depends_on(synth, schema_id)
    assert schema_id in depends_on(synth, rotation_id)
    # and a deploy never rotates by itself: the first rotation is the scheduled one
    assert synth.resources[rotation_id]["Properties"]["RotateImmediatelyOnUpdate"] is False
    for command in ("lambdas.predict.handler", "lambdas.embed.handler", "lambdas.reindex.handler"):
        function_id = logical_id_of(synth, function_with(synth, command=command))
        assert schema_id in depends_on(synth, function_id), command
    (mapping_id,) = synth.of_type("AWS::Lambda::EventSourceMapping")
    assert schema_id in depends_on(synth, mapping_id)


def test_api_gateway_log_role_is_owned_once_and_never_destroyed(dev, prod):
    """An account-wide singleton: created (and retained) only where a setting says this stack
    owns it; prod here turns it off with -c, as a second stack in the same account would."""
    (account,) = dev.of_type("AWS::ApiGateway::Account").values()
    assert account["DeletionPolicy"] == "Retain"
    role_id = account["Properties"]["CloudWatchRoleArn"]["Fn::GetAtt"][0]
    assert dev.resources[role_id]["DeletionPolicy"] == "Retain"
    assert prod.of_type("AWS::ApiGateway::Account") == {}
    roles = prod.of_type("AWS::IAM::Role").values()
    assert not any("AmazonAPIGatewayPushToCloudWatchLogs" in resource_text(r) for r in roles)


def test_migrations_run_as_a_custom_resource(dev):
    (schema,) = [r for r in dev.resources.values() if "MigrationsFingerprint" in
                 resource_text(r.get("Properties", {}))]
    assert schema["Type"] in ("AWS::CloudFormation::CustomResource", "Custom::AWS")
    assert re.fullmatch(r"[0-9a-f]{16}", schema["Properties"]["MigrationsFingerprint"])


# --- frontend -------------------------------------------------------------------------------


def test_cloudfront_uses_origin_access_control_https_and_security_headers(dev):
    (distribution,) = dev.of_type("AWS::CloudFront::Distribution").values()
    config = distribution["Properties"]["DistributionConfig"]
    site_origin_id = config["DefaultCacheBehavior"]["TargetOriginId"]
    (origin,) = [o for o in config["Origins"] if o["Id"] == site_origin_id]
    assert origin["OriginAccessControlId"]
    assert origin["S3OriginConfig"].get("OriginAccessIdentity", "") == ""
    behavior = config["DefaultCacheBehavior"]
    assert behavior["ViewerProtocolPolicy"] == "redirect-to-https"
    assert dev.of_type("AWS::CloudFront::CloudFrontOriginAccessIdentity") == {}
    (oac,) = dev.of_type("AWS::CloudFront::OriginAccessControl").values()
    assert oac["Properties"]["OriginAccessControlConfig"]["SigningBehavior"] == "always"
    (headers,) = dev.of_type("AWS::CloudFront::ResponseHeadersPolicy").values()
    security = headers["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]
    assert {"ContentSecurityPolicy", "StrictTransportSecurity", "FrameOptions",
            "ContentTypeOptions", "ReferrerPolicy"} <= set(security)


# Renditions (issue 14): the constructs the stack wires, synthesized alone with the images
# bucket given to Frontend. `assert_renditions_served_from_the_images_bucket` takes any template
# (the dev stack's too, once infra/stacks.py passes `images=` to Frontend).

CACHING_OPTIMIZED_ID = "658327ea-f89d-4fab-a63d-7e88639e58f6"  # AWS's managed cache policy


@pytest.fixture(scope="module")
def renditions_stack() -> dict:
    from aws_cdk import App, Stack
    from aws_cdk.assertions import Template

    from infra.app import cdk_json_context
    from infra.constructs.data_lake import DataLake
    from infra.constructs.frontend import Frontend
    from infra.settings import DeploymentSettings
    from tests.infra.conftest import TEST_CONTEXT

    app = App(context={**cdk_json_context(), **TEST_CONTEXT, "env": "dev"})
    settings = DeploymentSettings.from_context(app.node.try_get_context)
    stack = Stack(app, "RenditionsOnly")
    lake = DataLake(stack, "DataLake", settings=settings)
    frontend = Frontend(stack, "Frontend", settings=settings, access_logs=lake.access_logs,
                        images=lake.images)
    bare = Frontend(stack, "Bare", settings=settings, access_logs=lake.access_logs)
    return {
        "resources": Template.from_stack(stack).to_json()["Resources"],
        "images": stack.get_logical_id(lake.images.node.default_child),
        "distribution": stack.get_logical_id(frontend.distribution.node.default_child),
        "bare_distribution": stack.get_logical_id(bare.distribution.node.default_child),
        "base_url": stack.resolve(frontend.renditions_base_url),
        "bare_base_url": bare.renditions_base_url,
    }


def assert_renditions_served_from_the_images_bucket(resources: dict, images: str) -> str:
    """One behaviour, renditions/*, reaches the images bucket (origin access control, managed
    CACHING_OPTIMIZED, GET/HEAD over HTTPS); nothing else does. Returns the distribution id."""
    (dist_id,) = [
        k for k, v in resources.items()
        if v["Type"] == "AWS::CloudFront::Distribution" and images in resource_text(v)
    ]
    config = resources[dist_id]["Properties"]["DistributionConfig"]
    image_origins = {o["Id"]: o for o in config["Origins"] if images in resource_text(o)}
    (origin_id,) = image_origins
    origin = image_origins[origin_id]
    assert origin["OriginAccessControlId"]
    assert origin["S3OriginConfig"].get("OriginAccessIdentity", "") == ""
    assert config["DefaultCacheBehavior"]["TargetOriginId"] != origin_id  # the page's bucket
    (behavior,) = [b for b in config["CacheBehaviors"] if b["TargetOriginId"] == origin_id]
    assert behavior["PathPattern"] == "renditions/*"
    assert behavior["CachePolicyId"] == CACHING_OPTIMIZED_ID
    assert behavior["AllowedMethods"] == ["GET", "HEAD"]
    assert behavior["ViewerProtocolPolicy"] == "redirect-to-https"
    # The page's security headers; Cache-Control comes with each object (artlens.lake).
    assert behavior["ResponseHeadersPolicyId"] == config["DefaultCacheBehavior"][
        "ResponseHeadersPolicyId"]
    return dist_id


def test_cloudfront_serves_renditions_from_the_images_bucket(renditions_stack):
    resources, images = renditions_stack["resources"], renditions_stack["images"]
    dist_id = assert_renditions_served_from_the_images_bucket(resources, images)
    assert dist_id == renditions_stack["distribution"]
    # The page's distribution URL is where the predict function finds renditions.
    assert renditions_stack["base_url"] == {
        "Fn::Join": ["", ["https://", {"Fn::GetAtt": [dist_id, "DomainName"]}]]
    }
    # Without the images bucket a distribution has no such behaviour and no base URL.
    bare = resources[renditions_stack["bare_distribution"]]["Properties"]["DistributionConfig"]
    assert "CacheBehaviors" not in bare and images not in resource_text(bare)
    assert renditions_stack["bare_base_url"] is None


def test_cloudfront_may_read_renditions_only_never_the_originals(renditions_stack):
    resources, images = renditions_stack["resources"], renditions_stack["images"]
    (policy,) = [
        v["Properties"]["PolicyDocument"] for v in resources.values()
        if v["Type"] == "AWS::S3::BucketPolicy" and v["Properties"]["Bucket"] == {"Ref": images}
    ]
    to_cloudfront = [
        st for st in policy["Statement"]
        if st["Effect"] == "Allow"
        and "cloudfront.amazonaws.com" in as_list(st["Principal"].get("Service", []))
    ]
    (grant,) = to_cloudfront
    assert grant["Action"] == "s3:GetObject"
    assert grant["Resource"] == {
        "Fn::Join": ["", [{"Fn::GetAtt": [images, "Arn"]}, "/renditions/*"]]
    }
    # Only that distribution (its ARN ends with its id).
    assert {"Ref": renditions_stack["distribution"]} in grant["Condition"]["StringEquals"][
        "AWS:SourceArn"]["Fn::Join"][1]
    # No other statement lets any principal read objects of the images bucket.
    readers = [
        st for st in policy["Statement"]
        if st["Effect"] == "Allow" and any(a in ("s3:GetObject", "s3:GetObject*", "s3:*")
                                           for a in as_list(st["Action"]))
    ]
    assert readers == [grant]


def test_site_deployment_writes_config_json_with_the_api_url(dev):
    (deployment,) = dev.of_type("Custom::CDKBucketDeployment").values()
    props = deployment["Properties"]
    assert len(props["SourceObjectKeys"]) == 2
    (api_id,) = dev.of_type("AWS::ApiGateway::RestApi")
    assert api_id in resource_text(props.get("SourceMarkers"))
    asset_dirs = [dev.outdir / a["source"]["path"] for a in dev.assets["files"].values()]
    configs = [d / "config.json" for d in asset_dirs if (d / "config.json").is_file()]
    assert len(configs) == 1 and "apiBaseUrl" in configs[0].read_text()


# --- monitoring and outputs -----------------------------------------------------------------


def test_alarms_cover_api_functions_queue_and_database(dev):
    alarms = [a["Properties"] for a in dev.of_type("AWS::CloudWatch::Alarm").values()]
    metrics = {a.get("MetricName") for a in alarms}
    assert {"5XXError", "Latency", "Errors", "Throttles", "ApproximateNumberOfMessagesVisible",
            "CPUUtilization", "DatabaseConnections"} <= metrics
    assert all(a["AlarmActions"] for a in alarms)
    ours = {
        k for k, f in functions(dev).items()
        if f["Properties"].get("Environment", {}).get("Variables", {})
        .get("POWERTOOLS_SERVICE_NAME", "").startswith("artlens-")
    }
    assert len(ours) == 6
    for metric in ("Errors", "Throttles"):
        watched = {a["Dimensions"][0]["Value"]["Ref"] for a in alarms
                   if a.get("MetricName") == metric}
        assert watched == ours
    assert len(dev.of_type("AWS::CloudWatch::Dashboard")) == 1


def test_outputs_name_urls_buckets_and_secrets(dev):
    assert {"ApiUrl", "SiteUrl", "ImagesBucketName", "ArtifactsBucketName", "TokenSecretArn",
            "ApiKeysSecretArn", "DbSecretArn"} <= set(dev.template["Outputs"])


def documented_outputs() -> set[str]:
    """Output names in docs/deploy.md's Outputs table (first column, back-quoted)."""
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    section = text.split("### Outputs", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}


def test_docs_list_exactly_the_stack_outputs(dev, prod):
    documented = documented_outputs()
    assert len(documented) >= 10
    for synth in (dev, prod):
        assert documented == set(synth.template["Outputs"])
    # Every `out Name` the docs call is an output too.
    used = set(re.findall(r"\$\(out (\w+)\)", (REPO_ROOT / "docs" / "deploy.md").read_text()))
    assert used and used <= documented


def test_no_secret_value_is_in_the_template(dev):
    secrets = dev.of_type("AWS::SecretsManager::Secret")
    generated = [s for s in secrets.values() if "GenerateSecretString" in s["Properties"]]
    assert len(generated) >= 2  # token key and database credentials
    literal = [s["Properties"]["SecretString"] for s in secrets.values()
               if "SecretString" in s["Properties"]]
    assert literal == ["{}"]  # the empty client-key map (issue 6)


# --- backfill / reindex state machine (issue 16) --------------------------------------------


def definition(synth) -> tuple[dict, dict]:
    """(the state machine's properties, its parsed ASL); deploy-time tokens become
    "@{...}@" placeholders holding their JSON."""
    (machine,) = synth.of_type("AWS::StepFunctions::StateMachine").values()
    props = machine["Properties"]
    text = props["DefinitionString"]
    if isinstance(text, dict):
        separator, parts = text["Fn::Join"]
        text = separator.join(
            part if isinstance(part, str)
            else "@" + json.dumps(part, sort_keys=True).replace('"', "'") + "@"
            for part in parts
        )
    return props, json.loads(text)


def token_of(synth, logical_id: str, attribute: str | None = None) -> str:
    ref = {"Fn::GetAtt": [logical_id, attribute]} if attribute else {"Ref": logical_id}
    return "@" + json.dumps(ref, sort_keys=True).replace('"', "'") + "@"


def bucket_id(synth, name_part: str) -> str:
    (found,) = [k for k in synth.of_type("AWS::S3::Bucket") if name_part in k]
    return found


def batch_function_id(synth) -> str:
    return logical_id_of(synth, function_with(synth, command="lambdas.batch.handler"))


def artlens_context() -> dict:
    return json.loads((REPO_ROOT / "cdk.json").read_text())["context"]["artlens"]


def test_backfill_is_a_standard_traced_logged_state_machine_with_a_distributed_map(synthesized):
    props, asl = definition(synthesized)
    assert props["StateMachineType"] == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": True}
    assert props["LoggingConfiguration"]["Level"] == "ALL"
    assert props["StateMachineName"] == f"ArtLens-{synthesized.env_name}-backfill"
    states = asl["States"]
    batches = states["Batches"]
    assert batches["Type"] == "Map"
    processor = batches["ItemProcessor"]
    assert processor["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    # Items: an S3 listing (ListObjectsV2) of the images bucket, the prefix from the input.
    reader = batches["ItemReader"]
    assert reader["Resource"].endswith(":states:::s3:listObjectsV2")
    assert reader["Parameters"] == {
        "Bucket": token_of(synthesized, bucket_id(synthesized, "Images")),
        "Prefix.$": "$.prefix",
    }
    assert batches["ItemSelector"] == {"Key.$": "$$.Map.Item.Value.Key"}
    context = artlens_context()
    settings = {**context["defaults"], **context["environments"][synthesized.env_name]}
    assert batches["ItemBatcher"] == {
        "MaxItemsPerBatch": settings["backfillBatchSize"],
        "BatchInput": {"mode.$": "$.mode", "version.$": "$.version"},
    }
    assert batches["ToleratedFailurePercentage"] == settings["backfillToleratedFailurePercent"]
    assert batches["MaxConcurrency"] == settings["backfillMaxConcurrency"]
    # Results: the artifacts bucket, under backfill-results/.
    writer = batches["ResultWriter"]
    assert writer["Resource"].endswith(":states:::s3:putObject")
    assert writer["Parameters"] == {
        "Bucket": token_of(synthesized, bucket_id(synthesized, "Artifacts")),
        "Prefix": "backfill-results/",
    }
    assert batches["ResultPath"] == "$.map"
    # The child: the batch function, retried with backoff on Lambda errors and failed batches.
    (child,) = processor["States"].values()
    assert processor["States"][processor["StartAt"]] is child
    # The batch function itself, given the batch ({"Items": [...], "BatchInput": {...}}).
    assert child["Type"] == "Task"
    assert child["Resource"] == token_of(synthesized, batch_function_id(synthesized), "Arn")
    assert "Parameters" not in child and "InputPath" not in child
    retried = {error: rule for rule in child["Retry"] for error in rule["ErrorEquals"]}
    for error in ("Lambda.TooManyRequestsException", "Lambda.ServiceException",
                  "BatchIncomplete", "Unavailable"):
        assert retried[error]["BackoffRate"] > 1 and retried[error]["MaxAttempts"] >= 3, error
    assert "States.ALL" not in retried  # a bad batch (BadRequest) is not retried


def test_backfill_input_is_checked_and_reindex_switches_only_after_the_whole_map(dev):
    _, asl = definition(dev)
    states = asl["States"]
    assert asl["StartAt"] == "CheckInput"
    check = states["CheckInput"]
    assert states[check["Default"]]["Type"] == "Fail"
    text = json.dumps(check["Choices"])
    assert '"StringMatches": "incoming/*"' in text and '"StringMatches": "gallery/*"' in text
    assert {choice["Next"] for choice in check["Choices"]} == {
        "Batches", "BackfillInventoryDefaults", "ReindexInventoryDefaults",  # inventory: below
        "RenditionsDefaults", "RenditionsInventoryDefaults"}  # renditions: below
    # After the map: a reindex asks the map run for failures; only with none does it switch.
    assert states["Batches"]["Next"] == "IsReindex"
    is_reindex = states["IsReindex"]
    (reindex,) = is_reindex["Choices"]
    assert reindex == {"Variable": "$.mode", "StringEquals": "reindex", "Next": "CountFailures"}
    assert states[is_reindex["Default"]]["Type"] == "Succeed"
    count = states["CountFailures"]
    assert count["Resource"].endswith(":states:::aws-sdk:sfn:describeMapRun")
    assert count["Parameters"] == {"MapRunArn.$": "$.map.MapRunArn"}
    gate = states[count["Next"]]
    (all_ok,) = gate["Choices"]
    assert all_ok["Next"] == "SwitchVersion"
    assert {c["Variable"] for c in all_ok["And"]} == {
        "$.mapRun.failed", "$.mapRun.timedOut", "$.mapRun.aborted"}
    assert all(c["NumericEquals"] == 0 for c in all_ok["And"])
    assert states[gate["Default"]]["Type"] == "Fail"
    switch = states["SwitchVersion"]
    assert switch["Resource"] == token_of(dev, batch_function_id(dev), "Arn")
    assert switch["Parameters"] == {"activate": {"version.$": "$.version"}}
    # SwitchVersion is reached from the all-succeeded branch only.
    targets = [json.dumps(state) for name, state in states.items() if name != "AllBatchesSucceeded"]
    assert not any('"SwitchVersion"' in target for target in targets)


def machine_statements(synth) -> list[dict]:
    (machine,) = synth.of_type("AWS::StepFunctions::StateMachine").values()
    return role_statements(synth, machine["Properties"], role_key="RoleArn")


def test_state_machine_role_has_no_wildcard_action_and_names_its_resources(synthesized):
    statements = machine_statements(synthesized)
    actions: dict[str, list] = {}
    denied = [s for s in statements if s["Effect"] == "Deny"]
    for statement in statements:
        if statement["Effect"] == "Deny":
            continue
        for action in as_list(statement["Action"]):
            assert "*" not in action, statement
            actions.setdefault(action, []).extend(as_list(statement["Resource"]))
    function_id = batch_function_id(synthesized)
    assert all(function_id in resource_text(r) for r in actions["lambda:InvokeFunction"])
    images = bucket_id(synthesized, "Images")
    assert actions["s3:ListBucket"] == [{"Fn::GetAtt": [images, "Arn"]}]
    artifacts = bucket_id(synthesized, "Artifacts")
    assert all(artifacts in resource_text(r) for r in actions["s3:PutObject"])
    # CDK grants the ResultWriter the whole artifacts bucket; writes outside the results
    # prefix (the model files) are denied.
    (deny,) = [d for d in denied if "s3:PutObject" in as_list(d["Action"])]  # reads: below
    assert "s3:PutObject" in as_list(deny["Action"])
    assert resource_text(deny["NotResource"]).endswith('"/backfill-results/*"]]}')
    assert artifacts in resource_text(deny["NotResource"])
    (map_runs,) = actions["states:DescribeMapRun"]
    assert f":mapRun:ArtLens-{synthesized.env_name}-backfill/*" in resource_text(map_runs)
    # The map starts its child executions on this state machine only.
    (machine_id,) = synthesized.of_type("AWS::StepFunctions::StateMachine")
    assert actions["states:StartExecution"] == [{"Ref": machine_id}]
    star = {a for a, resources in actions.items() if "*" in resources}
    assert star <= STAR_RESOURCE_ACTIONS


def test_a_failed_or_timed_out_backfill_raises_an_alarm(dev):
    (machine_id,) = dev.of_type("AWS::StepFunctions::StateMachine")
    alarms = [a["Properties"] for a in dev.of_type("AWS::CloudWatch::Alarm").values()
              if machine_id in resource_text(a["Properties"].get("Metrics", []))]
    (alarm,) = alarms
    metrics = {m["MetricStat"]["Metric"]["MetricName"]
               for m in alarm["Metrics"] if "MetricStat" in m}
    assert metrics == {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"}
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    (topic_id,) = dev.of_type("AWS::SNS::Topic")
    assert alarm["AlarmActions"] == [{"Ref": topic_id}]
    assert "BackfillStateMachineArn" in dev.template["Outputs"]


# --- IAM ------------------------------------------------------------------------------------

# Actions AWS allows only on "*" (no resource-level permissions), each with who needs it.
STAR_RESOURCE_ACTIONS = {
    "xray:PutTraceSegments", "xray:PutTelemetryRecords",  # active tracing
    "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",  # functions in the VPC
    "cloudfront:CreateInvalidation", "cloudfront:GetInvalidation",  # BucketDeployment
    "logs:PutRetentionPolicy", "logs:DeleteRetentionPolicy",  # CDK LogRetention (RDS logs)
    "s3:PutBucketNotification",  # CDK's bucket-notifications handler
    # Step Functions logging to CloudWatch Logs (vended log delivery)
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
    "xray:GetSamplingRules", "xray:GetSamplingTargets",  # Step Functions tracing
}


def all_statements(synth):
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for policy in synth.of_type(kind).values():
            yield from policy["Properties"]["PolicyDocument"]["Statement"]
    for role in synth.of_type("AWS::IAM::Role").values():
        for policy in role["Properties"].get("Policies", []):
            yield from policy["PolicyDocument"]["Statement"]


def test_no_wildcard_actions_and_star_resources_only_where_aws_requires(synthesized):
    statements = list(all_statements(synthesized))
    assert len(statements) > 20
    for statement in statements:
        actions = as_list(statement.get("Action", []))
        assert all(a != "*" and not a.endswith(":*") for a in actions), statement
        if statement["Effect"] == "Allow" and "*" in as_list(statement.get("Resource")):
            assert set(actions) <= STAR_RESOURCE_ACTIONS, statement


def s3_grants(synth, function_props) -> dict[str, set[str]]:
    """S3 object/list actions of a function's role on the images bucket -> the key patterns
    they apply to (the artifacts bucket's model registry:
    test_model_functions_read_the_registry_under_models_and_nothing_else)."""
    artifacts = bucket_id(synth, "Artifacts")
    grants: dict[str, set[str]] = {}
    for statement in role_statements(synth, function_props):
        for action in as_list(statement["Action"]):
            if action.startswith("s3:"):
                for resource in as_list(statement["Resource"]):
                    text = resource_text(resource)
                    if artifacts in text:
                        continue
                    suffix = re.search(r'"(/[^"]*)"\]', text)
                    pattern = suffix.group(1) if suffix else "<bucket>"
                    if action == "s3:ListBucket" and "Condition" in statement:
                        pattern = resource_text(statement["Condition"])
                    grants.setdefault(action, set()).add(pattern)
    return grants


def test_function_roles_are_scoped_to_their_prefixes(dev):
    predict = function_with(dev, command="lambdas.predict.handler")
    assert s3_grants(dev, predict) == {
        # reports/: GET /reports/{batch} reads the intake reports ingestion wrote
        "s3:GetObject": {"/gallery/*", "/uploads/*", "/reports/*"},
        # kept uploads, and presigned PUTs (which carry the role's rights)
        "s3:PutObject": {"/uploads/*"},
        "s3:ListBucket": {"<bucket>"},  # missing keys read as 404 (see below)
    }
    embed = function_with(dev, command="lambdas.embed.handler")
    grants = s3_grants(dev, embed)
    for action in ("s3:GetObject", "s3:DeleteObject", "s3:DeleteObjectVersion"):
        assert grants[action] == {"/incoming/*"}, action
    # incoming/: a sidecar CSV is split into per-picture records beside the pictures;
    # renditions/ beside each gallery copy; reports/: each invocation's intake report part
    assert grants["s3:PutObject"] == {"/incoming/*", "/gallery/*", "/rejected/*",
                                      "/renditions/*", "/reports/*"}
    reindex = function_with(dev, command="lambdas.reindex.handler")
    assert s3_grants(dev, reindex)["s3:GetObject"] == {"/gallery/*"}
    # The backfill / reindex / renditions batches: embed's rights plus reading gallery/ and
    # asking which renditions exist (HeadObject is authorised as GetObject).
    assert s3_grants(dev, function_with(dev, command="lambdas.batch.handler")) == {
        "s3:GetObject": {"/incoming/*", "/gallery/*", "/renditions/*"},
        "s3:DeleteObject": {"/incoming/*"},
        "s3:DeleteObjectVersion": {"/incoming/*"},
        "s3:PutObject": {"/incoming/*", "/gallery/*", "/rejected/*", "/renditions/*",
                         "/reports/*"},
        "s3:ListBucket": {"<bucket>"},
    }
    assert s3_grants(dev, function_with(dev, handler="authorizer.handler")) == {}


def test_list_bucket_has_no_prefix_condition_so_a_moved_object_is_a_404(dev):
    """S3 answers a GET of a missing key with 404 only to callers allowed to list the bucket,
    and evaluates that without an s3:prefix; a prefix condition turned a duplicate
    notification for an already-moved drop into a 403 (retried into the DLQ)."""
    for command in ("lambdas.embed.handler", "lambdas.reindex.handler",
                    "lambdas.predict.handler", "lambdas.batch.handler"):
        statements = [
            s for s in role_statements(dev, function_with(dev, command=command))
            if "s3:ListBucket" in as_list(s["Action"])
            and bucket_id(dev, "Images") in resource_text(s["Resource"])
        ]
        assert len(statements) == 1, command
        (statement,) = statements
        assert "Condition" not in statement
        assert "/" not in resource_text(statement["Resource"])  # the bucket, not its objects


def test_secrets_are_granted_one_by_one(dev):
    secrets = dev.of_type("AWS::SecretsManager::Secret")
    (token_id,) = [k for k in secrets if "TokenSigningKey" in k]
    expectations = {
        "authorizer.handler": {token_id, next(k for k in secrets if "ApiClientKeys" in k)},
        "migrate.handler": None,
    }
    for handler, expected in expectations.items():
        props = function_with(dev, handler=handler)
        read = {
            resource["Ref"]
            for s in role_statements(dev, props)
            if any(a.startswith("secretsmanager:") for a in as_list(s["Action"]))
            for resource in as_list(s["Resource"])
            if isinstance(resource, dict) and "Ref" in resource
        }
        if expected is None:  # the database secret only
            assert len(read) == 1 and token_id not in read
        else:
            assert read == expected
    for statement in all_statements(dev):
        if any(a.startswith("secretsmanager:Get") for a in as_list(statement["Action"])):
            assert "*" not in as_list(statement["Resource"])
    predict = function_with(dev, command="lambdas.predict.handler")
    actions = {a for s in role_statements(dev, predict) for a in as_list(s["Action"])}
    assert not any(a.startswith("sqs:") for a in actions)
    writes = {pattern for action, patterns in s3_grants(dev, predict).items()
              if action.startswith(("s3:Put", "s3:Delete")) for pattern in patterns}
    assert writes == {"/uploads/*"}  # predict writes nowhere else in the lake


# --- checks: cdk-nag, cfn-lint, no Docker, CDK_OUTDIR ---------------------------------------


def test_cdk_nag_has_no_unacknowledged_finding_and_every_one_has_a_reason(synthesized):
    (report,) = synthesized.validation_report["pluginReports"]
    assert report["pluginName"] == "AwsSolutions"
    assert report["violations"] == []
    assert report["conclusion"] == "success"
    suppressed = report["suppressedViolations"]
    assert suppressed, "the report lists acknowledged findings"
    for finding in suppressed:
        assert len(finding["reason"]) >= 40, finding["acknowledgedId"]


# W3005 (redundant DependsOn): CDK adds an explicit DependsOn on a function's role policy next
# to the GetAtt of the role, to order the policy before the function; harmless by design.
CFN_LINT_IGNORED = ["W3005"]


def test_cfn_lint_passes_on_every_template(dev, prod):
    cfn_lint = Path(REPO_ROOT, ".venv", "bin", "cfn-lint")
    templates = [str(dev.template_path), str(prod.template_path)]
    completed = subprocess.run(
        [str(cfn_lint), "--format", "parseable", "--ignore-checks", *CFN_LINT_IGNORED,
         "--", *templates],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]


def test_cdk_cli_synth_honours_the_outdir_and_never_runs_docker(prod_cli):
    manifest = json.loads((prod_cli.result.outdir / "manifest.json").read_text())
    assert "ArtLens-prod" in manifest["artifacts"]
    assert not prod_cli.docker_calls.exists(), prod_cli.docker_calls.read_text()
    (image,) = prod_cli.result.assets["dockerImages"].values()
    assert (prod_cli.result.outdir / image["source"]["directory"] / "lambdas/Dockerfile").is_file()


def test_tags_are_applied(dev):
    tagged = [r for r in dev.of_type("AWS::S3::Bucket").values()
              if {"Key": "project", "Value": "artlens"} in r["Properties"].get("Tags", [])]
    assert len(tagged) == 4


# --- the model registry in the artifacts bucket, application metrics (issue 16) ------------

MODEL_FUNCTIONS = ("lambdas.predict.handler", "lambdas.embed.handler", "lambdas.reindex.handler",
                   "lambdas.batch.handler")


def artifacts_grants(synth, function_props) -> list[tuple[dict, str, object]]:
    """(statement, action, resource) for every resource of the artifacts bucket in the
    function's policies (CDK merges statements with equal actions across resources)."""
    artifacts = bucket_id(synth, "Artifacts")
    return [(statement, action, resource)
            for statement in role_statements(synth, function_props)
            for resource in as_list(statement.get("Resource", []))
            if artifacts in resource_text(resource)
            for action in as_list(statement["Action"])]


@pytest.mark.parametrize("command", MODEL_FUNCTIONS)
def test_model_functions_read_the_registry_under_models_and_nothing_else(synthesized, command):
    """Registry layout: models/<version>/ of the artifacts bucket; the serving functions may
    list models/ and read models/*, and never write there (operators register versions)."""
    props = function_with(synthesized, command=command)
    artifacts = bucket_id(synthesized, "Artifacts")
    assert props["Environment"]["Variables"]["ARTIFACTS_BUCKET"] == {"Ref": artifacts}
    granted: dict[str, list] = {}
    for statement, action, resource in artifacts_grants(synthesized, props):
        assert statement["Effect"] == "Allow"
        granted.setdefault(action, []).append((statement, resource))
    assert set(granted) == {"s3:GetObject", "s3:ListBucket"}
    ((_, objects),) = granted["s3:GetObject"]
    assert resource_text(objects).endswith('"/models/*"]]}')
    ((listing, bucket),) = granted["s3:ListBucket"]
    assert bucket == {"Fn::GetAtt": [artifacts, "Arn"]}
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["models/*"]}}


@pytest.mark.parametrize("handler", ["authorizer.handler", "migrate.handler"])
def test_functions_without_a_model_have_no_registry_access(dev, handler):
    props = function_with(dev, handler=handler)
    assert "ARTIFACTS_BUCKET" not in props["Environment"]["Variables"]
    assert artifacts_grants(dev, props) == []


def test_a_registry_bucket_setting_reaches_the_handlers_settings(dev):
    environment = function_with(dev, command="lambdas.predict.handler")["Environment"]["Variables"]
    settings = Settings.from_env(_dummy_env(environment), needs=("model", "database", "lake"))
    assert settings.artifacts_bucket == "dummy-artifacts_bucket"
    assert settings.model_cache_dir.startswith("/tmp/")  # Lambda's only writable folder


def test_a_stalled_backfill_raises_an_alarm(dev):
    """Stalled = the map keeps invoking the batch function, yet no batch finishes
    (BatchItemsDone, published by lambdas/batch.py) for three 5-minute periods."""
    batch_id = batch_function_id(dev)
    (alarm,) = [a["Properties"] for a in dev.of_type("AWS::CloudWatch::Alarm").values()
                if "BatchItemsDone" in resource_text(a["Properties"].get("Metrics", []))]
    by_id = {m["Id"]: m for m in alarm["Metrics"]}
    (expression,) = [m for m in alarm["Metrics"] if "Expression" in m]
    assert expression["ReturnData"] is True
    assert expression["Expression"] == "IF(FILL(invoked, 0) > 0 AND FILL(done, 0) == 0, 1, 0)"
    invoked = by_id["invoked"]["MetricStat"]
    assert invoked["Metric"]["Namespace"] == "AWS/Lambda"
    assert invoked["Metric"]["MetricName"] == "Invocations"
    assert invoked["Metric"]["Dimensions"] == [{"Name": "FunctionName",
                                                "Value": {"Ref": batch_id}}]
    done = by_id["done"]["MetricStat"]
    assert done["Metric"] == {"Namespace": "ArtLens", "MetricName": "BatchItemsDone",
                              "Dimensions": [{"Name": "service", "Value": "artlens-batch"}]}
    assert invoked["Stat"] == done["Stat"] == "Sum"
    assert invoked["Period"] == done["Period"] == 300
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == 3
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"  # no backfill running: no alarm
    (topic_id,) = dev.of_type("AWS::SNS::Topic")
    assert alarm["AlarmActions"] == [{"Ref": topic_id}]
    assert "Backfill stalled" in alarm["AlarmDescription"]
    # The batch function really runs with the service name the alarm selects by.
    batch = function_with(dev, command="lambdas.batch.handler")
    assert batch["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "artlens-batch"


def dashboard_widgets(synth) -> list[dict]:
    """The dashboard's widgets, deploy-time tokens replaced by their JSON text."""
    (dashboard,) = synth.of_type("AWS::CloudWatch::Dashboard").values()
    separator, parts = dashboard["Properties"]["DashboardBody"]["Fn::Join"]
    text = separator.join(p if isinstance(p, str) else json.dumps(p).replace('"', "'")
                          for p in parts)
    return json.loads(text)["widgets"]


def test_dashboard_graphs_the_application_metrics(dev):
    """The functions' embedded metrics (artlens.metrics) are on the dashboard, selected by the
    service names the functions really run with."""
    graphed: dict[str, set] = {}
    searches = []
    for widget in dashboard_widgets(dev):
        for metric in widget["properties"].get("metrics", []):
            if metric and isinstance(metric[0], dict) and "expression" in metric[0]:
                searches.append(metric[0]["expression"])
            elif metric and metric[0] == "ArtLens":
                _, name, dimension, value, *_ = metric
                assert dimension == "service"
                graphed.setdefault(name, set()).add(value)
    assert graphed["PicturesIndexed"] == graphed["PicturesRejected"] == graphed["Duplicates"] \
        == {"artlens-embed", "artlens-batch"}
    assert graphed["PredictLatency"] == {"artlens-predict"}
    assert graphed["BatchItemsDone"] == {"artlens-batch"}
    for name in ("IndexedByType", "Predictions"):  # every type: a SEARCH on the dimension
        assert f"SEARCH('{{ArtLens,service,type}} MetricName=\"{name}\"', 'Sum', 300)" \
            in searches, name
    services = {function_with(dev, command=c)["Environment"]["Variables"]
                ["POWERTOOLS_SERVICE_NAME"] for c in MODEL_FUNCTIONS}
    assert {"artlens-embed", "artlens-batch", "artlens-predict"} <= services
    titles = {widget["properties"].get("title") for widget in dashboard_widgets(dev)}
    assert {"Predict latency (ms)", "Predictions by type", "Indexed pictures by type"} <= titles


def test_infra_metric_names_are_the_ones_the_library_publishes():
    from artlens import metrics
    from infra.constructs import backfill, monitoring

    assert monitoring.NAMESPACE == backfill.METRICS_NAMESPACE == metrics.NAMESPACE
    assert monitoring.INDEXING_METRICS == (
        metrics.METRIC_INDEXED, metrics.METRIC_REJECTED, metrics.METRIC_DUPLICATES)
    assert monitoring.INDEXED_BY_TYPE == metrics.METRIC_INDEXED_BY_TYPE
    assert monitoring.PREDICT_LATENCY == metrics.METRIC_PREDICT_LATENCY
    assert monitoring.PREDICTIONS == metrics.METRIC_PREDICTIONS
    assert backfill.METRIC_BATCH_ITEMS == metrics.METRIC_BATCH_ITEMS
    assert metrics.TYPE_DIMENSION == "type"


def test_the_stack_serves_renditions_through_its_distribution(dev):
    """Renditions (no metadata) reach browsers through CloudFront from renditions/ only; the
    predict function hands out URLs under that distribution, never presigned originals."""
    images = bucket_id(dev, "Images")
    distribution = assert_renditions_served_from_the_images_bucket(dev.resources, images)
    predict = function_with(dev, command="lambdas.predict.handler")
    assert predict["Environment"]["Variables"]["RENDITIONS_BASE_URL"] == {
        "Fn::Join": ["", ["https://", {"Fn::GetAtt": [distribution, "DomainName"]}]]}


# --- backfill from an S3 Inventory manifest (issue 16) --------------------------------------


def test_a_manifest_input_reads_its_items_from_the_inventory_report(dev):
    """{"mode", "manifest": {"bucket", "key"}}: CheckInput sends it (and only it) through the
    defaults to InventoryBatches, whose ItemReader reads the manifest (InputType MANIFEST)
    named by the input; the rows go to the same batch function, with the prefix."""
    _, asl = definition(dev)
    states = asl["States"]
    check = states["CheckInput"]
    artifacts = token_of(dev, bucket_id(dev, "Artifacts"))
    by_next = {choice["Next"]: json.dumps(choice) for choice in check["Choices"]}
    for mode, root in (("backfill", "incoming/"), ("reindex", "gallery/")):
        choice = by_next[f"{mode.capitalize()}InventoryDefaults"]
        assert f'"StringEquals": "{mode}"' in choice
        assert '"Variable": "$.manifest.bucket", "StringEquals": "' + artifacts + '"' in choice
        assert '"Variable": "$.manifest.key", "StringMatches": "inventory/*/manifest.json"' \
            in choice
        defaults = states[f"{mode.capitalize()}InventoryDefaults"]
        assert defaults["Parameters"] == {"prefix": root,
                                          "version.$": "States.StringToJson('null')"}
        assert defaults["ResultPath"] == "$.defaults"
        assert defaults["Next"] == "ApplyInventoryDefaults"
    # A listing input that also names a manifest is not a listing.
    for choice in check["Choices"]:
        if choice["Next"] == "Batches":
            assert {"Not": {"Variable": "$.manifest", "IsPresent": True}} in choice["And"]
    merge = states["ApplyInventoryDefaults"]
    assert merge["Parameters"] == {"input.$": "States.JsonMerge($.defaults, $, false)"}
    assert merge["OutputPath"] == "$.input"
    recheck = states[merge["Next"]]
    assert states[recheck["Default"]]["Type"] == "Fail"
    text = json.dumps(recheck["Choices"])
    assert '"StringMatches": "incoming/*"' in text and '"StringMatches": "gallery/*"' in text
    assert {choice["Next"] for choice in recheck["Choices"]} == {"InventoryBatches"}

    inventory = states["InventoryBatches"]
    assert inventory["Type"] == "Map"
    reader = inventory["ItemReader"]
    assert reader["Resource"].endswith(":states:::s3:getObject")
    assert reader["ReaderConfig"] == {"InputType": "MANIFEST"}
    assert reader["Parameters"] == {"Bucket.$": "$.manifest.bucket",
                                    "Key.$": "$.manifest.key"}
    assert inventory["ItemSelector"] == {"Bucket.$": "$$.Map.Item.Value.Bucket",
                                         "Key.$": "$$.Map.Item.Value.Key"}
    batcher = inventory["ItemBatcher"]
    assert batcher["BatchInput"] == {"mode.$": "$.mode", "prefix.$": "$.prefix",
                                     "version.$": "$.version"}
    listing = states["Batches"]
    for field in ("MaxConcurrency", "ToleratedFailurePercentage", "ResultWriter", "ResultPath",
                  "Next"):
        assert inventory[field] == listing[field], field
    assert batcher["MaxItemsPerBatch"] == listing["ItemBatcher"]["MaxItemsPerBatch"]
    (child,) = inventory["ItemProcessor"]["States"].values()
    (listed_child,) = listing["ItemProcessor"]["States"].values()
    assert child["Resource"] == token_of(dev, batch_function_id(dev), "Arn")
    assert child["Retry"] == listed_child["Retry"]
    assert inventory["ItemProcessor"]["ProcessorConfig"] == listing["ItemProcessor"][
        "ProcessorConfig"]


def test_state_machine_reads_inventory_reports_only_under_inventory(synthesized):
    artifacts = bucket_id(synthesized, "Artifacts")
    inventory = {"Fn::Join": ["", [{"Fn::GetAtt": [artifacts, "Arn"]}, "/inventory/*"]]}
    statements = machine_statements(synthesized)
    reads = [s for s in statements
             if s["Effect"] == "Allow" and "s3:GetObject" in as_list(s["Action"])]
    # Ours, the inventory prefix only; and CDK's ResultWriter grant on the artifacts bucket.
    assert {"Action": "s3:GetObject", "Effect": "Allow", "Resource": inventory} in reads
    assert len(reads) == 2
    (writer,) = [s for s in reads if s["Resource"] != inventory]
    assert artifacts in resource_text(writer["Resource"])
    # ...whose reads are denied outside backfill-results/ and inventory/: no model file.
    (deny,) = [s for s in statements if s["Effect"] == "Deny" and s["Action"] == "s3:GetObject"]
    (results, denied_inventory) = deny["NotResource"]
    assert resource_text(results).endswith('"/backfill-results/*"]]}')
    assert denied_inventory == inventory
    # The images bucket: listed (the listing map), never read by the state machine.
    images = bucket_id(synthesized, "Images")
    for statement in statements:
        if statement["Effect"] == "Allow" and images in resource_text(statement):
            assert statement["Action"] == "s3:ListBucket", statement


def test_images_bucket_writes_daily_csv_inventories_of_incoming_and_gallery(dev):
    images = dev.resources[bucket_id(dev, "Images")]["Properties"]
    artifacts_id = bucket_id(dev, "Artifacts")
    configurations = {c["Prefix"]: c for c in images["InventoryConfigurations"]}
    assert set(configurations) == {"incoming/", "gallery/"}
    for prefix, configuration in configurations.items():
        assert configuration["Id"] == prefix.rstrip("/")
        assert configuration["Enabled"] is True
        assert configuration["ScheduleFrequency"] == "Daily"
        assert configuration["IncludedObjectVersions"] == "Current"
        assert configuration["Destination"] == {
            "BucketArn": {"Fn::GetAtt": [artifacts_id, "Arn"]},
            "Format": "CSV",  # the only inventory format Step Functions reads
            "Prefix": "inventory",
        }
    # S3 may write there for this bucket only; old reports expire.
    (policy,) = [p["Properties"] for p in dev.of_type("AWS::S3::BucketPolicy").values()
                 if p["Properties"]["Bucket"] == {"Ref": artifacts_id}]
    (delivery,) = [s for s in policy["PolicyDocument"]["Statement"]
                   if s.get("Principal") == {"Service": "s3.amazonaws.com"}]
    assert delivery["Action"] == "s3:PutObject"
    assert delivery["Condition"] == {
        "ArnLike": {"aws:SourceArn": {"Fn::GetAtt": [bucket_id(dev, "Images"), "Arn"]}}}
    assert "/inventory*" in resource_text(delivery["Resource"])
    rules = dev.resources[artifacts_id]["Properties"]["LifecycleConfiguration"]["Rules"]
    (expiry,) = [r for r in rules if r.get("Prefix") == "inventory/"]
    assert 1 <= expiry["ExpirationInDays"] <= 30


# --- renditions for works indexed before them (issue 14) ------------------------------------


def test_a_renditions_input_runs_the_map_over_gallery_keys_and_never_switches(dev):
    """{"mode": "renditions", "prefix": "gallery/..."}: defaults (prefix gallery/, version
    null) merged under the input, checked (gallery/ only, a version must be null), then the
    same listing map and batch function; with a manifest, the inventory map. After the map it
    is not a reindex: no SwitchVersion."""
    _, asl = definition(dev)
    states = asl["States"]
    by_next = {choice["Next"]: choice for choice in states["CheckInput"]["Choices"]}
    listing = by_next["RenditionsDefaults"]
    assert {"Variable": "$.mode", "StringEquals": "renditions"} in listing["And"]
    assert {"Not": {"Variable": "$.manifest", "IsPresent": True}} in listing["And"]
    for name in ("RenditionsDefaults", "RenditionsInventoryDefaults"):
        assert states[name]["Parameters"] == {"prefix": "gallery/",
                                              "version.$": "States.StringToJson('null')"}
    assert states["RenditionsInventoryDefaults"]["Next"] == "ApplyInventoryDefaults"
    merge = states[states["RenditionsDefaults"]["Next"]]
    assert merge["Parameters"] == {"input.$": "States.JsonMerge($.defaults, $, false)"}
    assert merge["OutputPath"] == "$.input"
    check = states[merge["Next"]]
    (route,) = check["Choices"]
    assert route["Next"] == "Batches"
    text = json.dumps(route)
    assert '"StringEquals": "renditions"' in text and '"StringMatches": "gallery/*"' in text
    assert '{"Variable": "$.version", "IsNull": true}' in text  # renditions have no version
    assert "incoming/" not in text
    assert states[check["Default"]]["Type"] == "Fail"
    inventory_check = states[states["ApplyInventoryDefaults"]["Next"]]
    (renditions_inventory,) = [c for c in inventory_check["Choices"]
                               if '"StringEquals": "renditions"' in json.dumps(c)]
    assert renditions_inventory["Next"] == "InventoryBatches"
    assert '"StringMatches": "gallery/*"' in json.dumps(renditions_inventory)
    # The batches carry the mode to the batch function; IsReindex lets renditions end there.
    assert states["Batches"]["ItemBatcher"]["BatchInput"]["mode.$"] == "$.mode"
    (reindex,) = states["IsReindex"]["Choices"]
    assert reindex["StringEquals"] == "reindex"
    assert "renditions" in json.dumps(states["BadInput"])  # the refusal names the shape


def test_batch_role_may_look_up_renditions_and_write_them_nothing_more(dev):
    images = bucket_id(dev, "Images")
    renditions = {"Fn::Join": ["", [{"Fn::GetAtt": [images, "Arn"]}, "/renditions/*"]]}
    statements = role_statements(dev, function_with(dev, command="lambdas.batch.handler"))
    on_renditions = {action for s in statements if s["Effect"] == "Allow"
                     and renditions in as_list(s["Resource"]) for action in as_list(s["Action"])}
    assert on_renditions == {"s3:GetObject", "s3:PutObject"}
    # Predict and embed only ever write renditions (CloudFront serves them to browsers).
    for command in ("lambdas.predict.handler", "lambdas.embed.handler"):
        assert "/renditions/*" not in s3_grants(dev, function_with(dev, command=command)).get(
            "s3:GetObject", set()), command
