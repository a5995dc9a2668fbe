"""REST API: POST /predict and GET /map behind the REQUEST authorizer, plus its secrets."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, SecretValue
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.constructs.data_lake import GALLERY_PREFIX, grant_objects
from infra.constructs.database import Database
from infra.constructs.lambda_defaults import (
    IMAGE_MODEL_CARD_PATH,
    create_function,
    image_code,
    runtime_layer,
    zip_code,
)
from infra.settings import DeploymentSettings

STAGE_NAME = "v1"
# The same list the handlers answer with (artlens.http.ALLOWED_HEADERS; a test keeps them equal):
# the bearer token or signature, the body's type, and the signed-request headers.
ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "X-ArtLens-Key-Id",
    "X-ArtLens-Timestamp",
    "X-ArtLens-Nonce",
    "X-ArtLens-Content-SHA256",
]


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
        database: Database,
        secrets: AuthSecrets,
        frontend_origin: str,
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
                "TOKEN_SECRET_ARN": secrets.token_key.secret_arn,
                "API_KEYS_SECRET_ARN": secrets.api_keys.secret_arn,
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
            service="artlens-predict",
            memory_mb=settings.predict_memory_mb,
            timeout=Duration.seconds(settings.predict_timeout_s),
            environment={
                "MODEL_CARD_PATH": IMAGE_MODEL_CARD_PATH,
                "IMAGES_BUCKET": images.bucket_name,
                "CORS_ORIGIN": frontend_origin,
                "ORT_THREADS": str(settings.ort_threads),
                **database.connection_environment(),
            },
            vpc=database.vpc,
            security_groups=[database.client_security_group],
            description="ArtLens: POST /predict, GET /map",
        )
        # Neighbour URLs are presigned with this role: it may read indexed pictures only.
        grant_objects(images, self.predict_function, GALLERY_PREFIX, "s3:GetObject")
        database.grant_connect(self.predict_function)
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
            # API Gateway needs an account-level role to write logs; this creates it.
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.DESTROY,
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
        # Errors made by API Gateway itself (401 from the authorizer, 429 throttling, 5xx)
        # carry CORS headers too, or the page could not read why a call failed.
        for response_id, response_type in (
            ("Default4xx", apigw.ResponseType.DEFAULT_4_XX),
            ("Default5xx", apigw.ResponseType.DEFAULT_5_XX),
        ):
            self.rest_api.add_gateway_response(
                response_id,
                type=response_type,
                response_headers={
                    "Access-Control-Allow-Origin": cors_origin_header,
                    "Access-Control-Allow-Headers": "'" + ",".join(ALLOWED_HEADERS) + "'",
                    "Vary": "'Origin'",
                },
                templates={
                    "application/json": (
                        '{"error": "$context.error.responseType", '
                        '"message": $context.error.messageString}'
                    )
                },
            )

        self.authorizer = apigw.RequestAuthorizer(
            self,
            "BearerAuthorizer",
            handler=self.authorizer_function,
            identity_sources=[apigw.IdentitySource.header("Authorization")],
            results_cache_ttl=Duration.seconds(settings.authorizer_cache_ttl_s),
        )
        validator = self.rest_api.add_request_validator(
            "RequestValidator", validate_request_parameters=True, validate_request_body=True
        )
        integration = apigw.LambdaIntegration(self.predict_alias, proxy=True)
        method_options = dict(
            authorization_type=apigw.AuthorizationType.CUSTOM,
            authorizer=self.authorizer,
            request_validator=validator,
            request_parameters={"method.request.header.Authorization": True},
        )
        self.rest_api.root.add_resource("predict").add_method(
            "POST", integration, **method_options
        )
        self.rest_api.root.add_resource("map").add_method("GET", integration, **method_options)

    @property
    def url(self) -> str:
        return self.rest_api.url

    @property
    def functions(self) -> list[lambda_.IFunction]:
        return [self.authorizer_function, self.predict_function]
