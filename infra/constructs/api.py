"""REST API: the predict function's routes behind the REQUEST authorizer, plus its secrets."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, SecretValue
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from artlens import names
from artlens.names import GALLERY_PREFIX, REPORTS_PREFIX, UPLOADS_PREFIX
from infra.constructs.data_lake import grant_list, grant_objects
from infra.constructs.database import Database
from infra.constructs.lambda_defaults import (
    IMAGE_MODEL_CARD_PATH,
    SERVICE_PREDICT,
    create_function,
    grant_model_registry,
    image_code,
    runtime_layer,
    zip_code,
)
from infra.settings import DeploymentSettings

STAGE_NAME = "v1"
# Every route the predict function answers (artlens.api.routes.PredictApi.routes; a test checks
# each of those is reachable here). POST /uploads: programs get a presigned S3 PUT for a picture
# too large for API Gateway's body (uploads/<sha256>), then POST /predict {"sha256": ...}.
ROUTES = (
    ("POST", "predict"),
    ("GET", "map"),
    ("POST", "preview"),
    ("GET", "whoami"),
    ("POST", "uploads"),
    ("GET", "works/{key}"),  # one work's record (the collection-records issue)
    # Curators (artlens.api.curation): duplicate groups, the review queue and its decisions
    # (the `review` scope, checked by the handler), the intake reports.
    ("GET", "duplicates"),
    ("GET", "review"),
    ("POST", "review/{key}"),
    ("GET", "reports"),
    ("GET", "reports/{batch}"),
)
# The same list the handlers answer with: the bearer token or signature, the body's type, and
# the signed-request headers.
ALLOWED_HEADERS = list(names.ALLOWED_HEADERS)


class AuthSecrets(Construct):
    """The JWT signing key (generated; never in a template) and the API client keys (issue 6)."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings):
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if settings.is_prod else RemovalPolicy.DESTROY
        # Plain text: artlens.auth reads a SecretString as the key itself.
        self.token_key = secretsmanager.Secret(
            self,
            "TokenSigningKey",
            description="ArtLens HS256 key for API bearer tokens",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True
            ),
            removal_policy=removal,
        )
        # Starts as an empty JSON object {key id: secret}; keys are added with `make key`.
        # "{}" holds nothing secret, so it may appear in the template.
        self.api_keys = secretsmanager.Secret(
            self,
            "ApiClientKeys",
            description="ArtLens API client keys for HMAC request signing ({key_id: secret})",
            secret_string_value=SecretValue.unsafe_plain_text("{}"),
            removal_policy=removal,
        )


class Api(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        images: s3.IBucket,
        artifacts: s3.IBucket,
        database: Database,
        secrets: AuthSecrets,
        frontend_origin: str,
        renditions_base_url: str | None = None,
    ):
        super().__init__(scope, construct_id)

        self.authorizer_function = create_function(
            self,
            "AuthorizerFunction",
            settings,
            code=zip_code(),
            handler="authorizer.handler",
            layers=[runtime_layer(self, settings)],
            service="artlens-authorizer",
            memory_mb=256,
            timeout=Duration.seconds(5),
            environment={
                names.ENV_TOKEN_SECRET_ARN: secrets.token_key.secret_arn,
                names.ENV_API_KEYS_SECRET_ARN: secrets.api_keys.secret_arn,
            },
            description="ArtLens: API Gateway REQUEST authorizer (bearer JWT)",
        )
        secrets.token_key.grant_read(self.authorizer_function)
        secrets.api_keys.grant_read(self.authorizer_function)

        self.predict_function = create_function(
            self,
            "PredictFunction",
            settings,
            code=image_code("lambdas.predict.handler"),
            service=SERVICE_PREDICT,
            memory_mb=settings.predict_memory_mb,
            timeout=Duration.seconds(settings.predict_timeout_s),
            environment={
                names.ENV_MODEL_CARD_PATH: IMAGE_MODEL_CARD_PATH,
                names.ENV_IMAGES_BUCKET: images.bucket_name,
                # The model registry: a current version not baked into the image is fetched
                # from models/<version>/ there (artlens.models.registry).
                names.ENV_ARTIFACTS_BUCKET: artifacts.bucket_name,
                names.ENV_CORS_ORIGIN: frontend_origin,
                # Renditions (thumbnails, no metadata) are served by the page's CloudFront
                # distribution; originals are never handed out.
                **({names.ENV_RENDITIONS_URL: renditions_base_url} if renditions_base_url
                   else {}),
                names.ENV_ORT_THREADS: str(settings.ort_threads),
                # predict re-verifies every signed request itself (artlens.auth.signing), so it
                # reads the client keys too, whatever API Gateway did before it.
                names.ENV_API_KEYS_SECRET_ARN: secrets.api_keys.secret_arn,
                **database.connection_environment(),
            },
            vpc=database.vpc,
            security_groups=[database.client_security_group],
            description="ArtLens: POST /predict, GET /map, the collection and curators' routes",
        )
        # Predict by reference reads an indexed picture ({"key": "gallery/..."}); the intake
        # reports are read (GET /reports/{batch}) but written by ingestion only.
        grant_objects(images, self.predict_function, GALLERY_PREFIX, "s3:GetObject")
        grant_objects(images, self.predict_function, REPORTS_PREFIX, "s3:GetObject")
        # uploads/<sha256>: pictures sent for prediction, kept so that a shared link can ask
        # again by SHA-256, and large pictures programs PUT through a presigned URL (which
        # carries its signer's rights, hence PutObject here). Never indexed; a lifecycle rule
        # expires them (uploadsExpirationDays).
        grant_objects(images, self.predict_function, UPLOADS_PREFIX, "s3:PutObject", "s3:GetObject")
        # A missing key must read as 404 (a shared link to an expired upload, exists() before
        # keeping an upload), which S3 answers only to a role that may list (data_lake.py).
        grant_list(images, self.predict_function)
        grant_model_registry(artifacts, self.predict_function)
        secrets.api_keys.grant_read(self.predict_function)
        database.grant_connect(self.predict_function)
        # Created after the schema exists, so no request ever meets a database without it.
        self.predict_function.node.add_dependency(database.migration)
        # An alias gives provisioned concurrency (when asked for) a version to pin.
        self.predict_alias = lambda_.Alias(
            self,
            "PredictLive",
            alias_name="live",
            version=self.predict_function.current_version,
            provisioned_concurrent_executions=(
                settings.predict_provisioned_concurrency or None
            ),
        )

        access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=logs.RetentionDays.ONE_MONTH,
            removal_policy=RemovalPolicy.DESTROY,
        )
        cors_origin_header = f"'{frontend_origin}'"
        self.rest_api = apigw.RestApi(
            self,
            "RestApi",
            rest_api_name=f"artlens-{settings.env_name}",
            description="ArtLens: classify artworks and find similar ones",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            binary_media_types=["image/*", "multipart/form-data", "application/octet-stream"],
            # API Gateway writes logs with ONE role per account and region (an account setting,
            # not a stack resource). When this stack owns it (manageApiGatewayLogRole) it is
            # retained: destroying dev must not break prod's logging in the same account.
            # Otherwise the account's existing role is used (docs/deploy.md).
            cloud_watch_role=settings.manage_api_gateway_log_role,
            cloud_watch_role_removal_policy=(
                RemovalPolicy.RETAIN if settings.manage_api_gateway_log_role else None
            ),
            deploy_options=apigw.StageOptions(
                stage_name=STAGE_NAME,
                throttling_rate_limit=settings.throttle_rate_limit,
                throttling_burst_limit=settings.throttle_burst_limit,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # bodies and tokens never reach the logs
                metrics_enabled=True,
                tracing_enabled=True,
            ),
            default_cors_preflight_options=apigw.CorsOptions(
                allow_origins=[frontend_origin],
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=ALLOWED_HEADERS,
                max_age=Duration.hours(1),
            ),
        )
        # The stack's ApiUrl output is the one documented name for this URL; CDK's own
        # generated "Endpoint" output would be a second, undocumented one.
        self.rest_api.node.try_remove_child("Endpoint")

        # Errors made by API Gateway itself (401 from the authorizer, 429 throttling, 5xx)
        # carry CORS headers too, or the page could not read why a call failed.
        gateway_error = (
            '{"error": "$context.error.responseType", "message": $context.error.messageString}'
        )
        for response_id, response_type, status, template in (
            ("Default4xx", apigw.ResponseType.DEFAULT_4_XX, None, gateway_error),
            ("Default5xx", apigw.ResponseType.DEFAULT_5_XX, None, gateway_error),
            # Bodies over API Gateway's 10 MB: a 413 in our JSON shape, pointing at uploads.
            ("RequestTooLarge", apigw.ResponseType.REQUEST_TOO_LARGE, "413", gateway_error),
            # The authorizer's explicit Deny carries a code the client must be told (a stale
            # signed request: fix the clock); lambdas/authorizer.py TOLD_REASONS.
            (
                "AccessDenied",
                apigw.ResponseType.ACCESS_DENIED,
                "401",
                '{"error": "$context.authorizer.error", '
                '"message": "$context.authorizer.message"}',
            ),
        ):
            self.rest_api.add_gateway_response(
                response_id,
                type=response_type,
                status_code=status,
                response_headers={
                    "Access-Control-Allow-Origin": cors_origin_header,
                    "Access-Control-Allow-Headers": "'" + ",".join(ALLOWED_HEADERS) + "'",
                    "Vary": "'Origin'",
                },
                templates={"application/json": template},
            )

        # No result cache (issue 13): a cached Allow would let one captured signed request's
        # Authorization value pass for any body, route, nonce and timestamp until it expired,
        # and outlive the nonce window and key revocation. With TTL 0 the authorizer verifies
        # every signed request in full (key, time window, canonical request) on every call.
        # Keying the cache on every signed header instead would make those headers required
        # identity sources, which bearer-token requests do not send (401 without a call).
        self.authorizer = apigw.RequestAuthorizer(
            self,
            "BearerAuthorizer",
            handler=self.authorizer_function,
            identity_sources=[apigw.IdentitySource.header("Authorization")],
            results_cache_ttl=Duration.seconds(0),
        )
        validator = self.rest_api.add_request_validator(
            "RequestValidator", validate_request_parameters=True, validate_request_body=True
        )
        integration = apigw.LambdaIntegration(self.predict_alias, proxy=True)
        for verb, path in ROUTES:
            # Path parameters ({key}) are required too, so a request without one never
            # reaches the function.
            path_parameters = {
                f"method.request.path.{part[1:-1]}": True
                for part in path.split("/") if part.startswith("{")
            }
            self.rest_api.root.resource_for_path(path).add_method(
                verb,
                integration,
                authorization_type=apigw.AuthorizationType.CUSTOM,
                authorizer=self.authorizer,
                request_validator=validator,
                request_parameters={
                    "method.request.header.Authorization": True, **path_parameters
                },
            )

    @property
    def url(self) -> str:
        return self.rest_api.url

    @property
    def functions(self) -> list[lambda_.Function]:
        return [self.authorizer_function, self.predict_function]
