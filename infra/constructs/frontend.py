"""The page: private bucket behind CloudFront (origin access control), security headers, and
the static files plus a generated config.json deployed by BucketDeployment at deploy time.

Given the images bucket, the same distribution also serves the works' renditions (issue 14):
`renditions/*` goes to the images bucket through the same origin access control, which the
bucket lets read renditions/ only (data_lake.grant_cloudfront_read); originals (gallery/,
uploads/, incoming/) stay unreachable through CloudFront. The page then shows renditions from
its own origin (`renditions_base_url`, which the predict function gets as RENDITIONS_BASE_URL)
under URLs that never change, cached at the edge and in browsers."""

from __future__ import annotations

from aws_cdk import Annotations, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from constructs import Construct

from artlens.names import RENDITIONS_PREFIX
from infra.constructs.data_lake import grant_cloudfront_read, private_bucket
from infra.constructs.lambda_defaults import REPO_ROOT
from infra.settings import DeploymentSettings

STATIC_DIR = REPO_ROOT / "frontend_static"


class Frontend(Construct):
    """Hosting first (the API needs the origin for CORS), then `deploy_site(api_url)`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        access_logs: s3.IBucket,
        images: s3.IBucket | None = None,
    ):
        super().__init__(scope, construct_id)
        self.bucket = private_bucket(
            self, "Site", settings, access_logs=access_logs, log_prefix="s3/site/"
        )
        region = Stack.of(self).region
        # The page talks to its API and shows neighbours through presigned S3 URLs; nothing
        # else may be loaded or called.
        content_security_policy = (
            "default-src 'self'; script-src 'self'; style-src 'self'; "
            f"img-src 'self' data: blob: https://*.s3.{region}.amazonaws.com "
            "https://*.s3.amazonaws.com; "
            f"connect-src 'self' https://*.execute-api.{region}.amazonaws.com; "
            "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
        )
        headers = cloudfront.ResponseHeadersPolicy(
            self,
            "SecurityHeaders",
            comment="ArtLens page security headers",
            security_headers_behavior=cloudfront.ResponseSecurityHeadersBehavior(
                content_security_policy=cloudfront.ResponseHeadersContentSecurityPolicy(
                    content_security_policy=content_security_policy, override=True
                ),
                content_type_options=cloudfront.ResponseHeadersContentTypeOptions(override=True),
                frame_options=cloudfront.ResponseHeadersFrameOptions(
                    frame_option=cloudfront.HeadersFrameOption.DENY, override=True
                ),
                referrer_policy=cloudfront.ResponseHeadersReferrerPolicy(
                    referrer_policy=cloudfront.HeadersReferrerPolicy.STRICT_ORIGIN_WHEN_CROSS_ORIGIN,
                    override=True,
                ),
                strict_transport_security=cloudfront.ResponseHeadersStrictTransportSecurity(
                    access_control_max_age=Duration.days(365),
                    include_subdomains=True,
                    preload=True,
                    override=True,
                ),
                xss_protection=cloudfront.ResponseHeadersXSSProtection(
                    protection=True, mode_block=True, override=True
                ),
            ),
        )
        # One origin access control signs the requests to both buckets (SigV4, always).
        access_control = cloudfront.S3OriginAccessControl(
            self, "OriginAccessControl", signing=cloudfront.Signing.SIGV4_ALWAYS
        )
        additional_behaviors = {}
        if images is not None:
            additional_behaviors[f"{RENDITIONS_PREFIX}*"] = cloudfront.BehaviorOptions(
                # Bucket defaults + our access control: CDK's with_origin_access_control would
                # add a bucket-wide read grant; ours covers renditions/ only (below).
                origin=origins.S3BucketOrigin.with_bucket_defaults(
                    images, origin_access_control_id=access_control.origin_access_control_id
                ),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                # The page's headers (nosniff, HSTS, ...); Cache-Control comes with each object
                # (artlens.lake.RENDITION_CACHE_CONTROL), so a 403 for a rendition not written
                # yet is never cached by browsers.
                response_headers_policy=headers,
                compress=False,  # JPEG: already compressed
            )
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment=f"ArtLens {settings.env_name}",
            default_root_object="index.html",
            additional_behaviors=additional_behaviors,
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.S3BucketOrigin.with_origin_access_control(
                    self.bucket, origin_access_control=access_control
                ),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=headers,
                compress=True,
            ),
            minimum_protocol_version=cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021,
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            price_class=cloudfront.PriceClass.PRICE_CLASS_100,
            enable_logging=True,
            log_bucket=access_logs,
            log_file_prefix="cloudfront/",
        )
        # Kept on purpose: it takes effect as soon as a custom domain's certificate is added.
        Annotations.of(self.distribution).acknowledge_warning(
            "@aws-cdk/aws-cloudfront:minimumProtocolVersionWithoutCertificate",
            "TLSv1.2_2021 applies once a custom domain with an ACM certificate is configured; "
            "the default *.cloudfront.net certificate's policy cannot be raised (cdk-nag CFR4).",
        )
        if images is not None:
            grant_cloudfront_read(images, self.distribution, RENDITIONS_PREFIX)
        self.serves_renditions = images is not None
        self._removal = RemovalPolicy.RETAIN if settings.is_prod else RemovalPolicy.DESTROY

    @property
    def origin(self) -> str:
        return f"https://{self.distribution.distribution_domain_name}"

    @property
    def renditions_base_url(self) -> str | None:
        """Where renditions/<side>/<sha256>.jpg is served (RENDITIONS_BASE_URL); None when the
        distribution was not given the images bucket."""
        return self.origin if self.serves_renditions else None

    @property
    def url(self) -> str:
        return f"https://{self.distribution.distribution_domain_name}/"

    def deploy_site(self, api_url: str) -> s3deploy.BucketDeployment:
        """Upload the page and config.json (the API URL is known only at deploy time)."""
        return s3deploy.BucketDeployment(
            self,
            "DeploySite",
            destination_bucket=self.bucket,
            sources=[
                s3deploy.Source.asset(str(STATIC_DIR), exclude=["config.json"]),
                s3deploy.Source.json_data("config.json", {"apiBaseUrl": api_url}),
            ],
            distribution=self.distribution,
            distribution_paths=["/*"],
            prune=True,
            memory_limit=256,
        )
