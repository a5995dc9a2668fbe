"""The object lake: images (incoming/ -> gallery/ | rejected/), model artifacts, access logs.

The images bucket writes a daily S3 Inventory (CSV, current versions) of incoming/ and of
gallery/ into the artifacts bucket under inventory/: the backfill state machine can read its
items from such a manifest instead of listing millions of keys (infra/constructs/backfill.py,
docs/operations.md). S3 writes each report to
inventory/<images bucket>/<incoming|gallery>/<YYYY-MM-DDTHH-MMZ>/manifest.json, its CSV files
to inventory/<images bucket>/<incoming|gallery>/data/.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

# uploads/: pictures sent to POST /predict (kept for shared links) and large ones programs PUT
# by presigned URL; never indexed, expired after uploadsExpirationDays.
from artlens.names import GALLERY_PREFIX, INCOMING_PREFIX, REJECTED_PREFIX, UPLOADS_PREFIX
from infra.settings import DeploymentSettings

# Where S3 Inventory writes, in the artifacts bucket (no trailing slash: S3 adds one).
INVENTORY_PREFIX = "inventory"
# One report a day; a backfill reads the newest, so a week of old ones is plenty.
INVENTORY_EXPIRATION_DAYS = 7


def private_bucket(
    scope: Construct,
    construct_id: str,
    settings: DeploymentSettings,
    *,
    access_logs: s3.IBucket | None,
    log_prefix: str = "",
    **extra,
) -> s3.Bucket:
    """Private, encrypted, TLS-only, versioned; retained in prod, emptied and removed in dev."""
    prod = settings.is_prod
    return s3.Bucket(
        scope,
        construct_id,
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        versioned=True,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix=log_prefix or None,
        removal_policy=RemovalPolicy.RETAIN if prod else RemovalPolicy.DESTROY,
        auto_delete_objects=not prod,
        **extra,
    )


class DataLake(Construct):
    """images bucket (the lake), artifacts bucket (model files), access-logs bucket."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings):
        super().__init__(scope, construct_id)
        prod = settings.is_prod
        # Server access logs (and CloudFront standard logs, which need ACLs: object writer
        # ownership) land here. SSE-S3 because log delivery cannot write with SSE-KMS.
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.OBJECT_WRITER,
            lifecycle_rules=[s3.LifecycleRule(id="expire-logs", expiration=Duration.days(365))],
            removal_policy=RemovalPolicy.RETAIN if prod else RemovalPolicy.DESTROY,
            auto_delete_objects=not prod,
        )
        self.artifacts = private_bucket(
            self, "Artifacts", settings, access_logs=self.access_logs, log_prefix="s3/artifacts/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-inventory",
                    prefix=f"{INVENTORY_PREFIX}/",
                    expiration=Duration.days(INVENTORY_EXPIRATION_DAYS),
                    noncurrent_version_expiration=Duration.days(1),
                ),
            ],
        )
        self.images = private_bucket(
            self,
            "Images",
            settings,
            access_logs=self.access_logs,
            log_prefix="s3/images/",
            # CDK adds the artifacts bucket's policy statement that lets S3 write the reports
            # (s3:PutObject under inventory*, only for this bucket as aws:SourceArn).
            inventories=[
                s3.Inventory(
                    inventory_id=prefix.rstrip("/"),
                    destination=s3.InventoryDestination(bucket=self.artifacts,
                                                        prefix=INVENTORY_PREFIX),
                    # Step Functions reads CSV inventories only (not ORC or Parquet).
                    format=s3.InventoryFormat.CSV,
                    frequency=s3.InventoryFrequency.DAILY,
                    include_object_versions=s3.InventoryObjectVersion.CURRENT,
                    objects_prefix=prefix,
                )
                for prefix in (INCOMING_PREFIX, GALLERY_PREFIX)
            ],
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-rejected",
                    prefix=REJECTED_PREFIX,
                    expiration=Duration.days(settings.rejected_expiration_days),
                    noncurrent_version_expiration=Duration.days(1),
                ),
                s3.LifecycleRule(
                    id="expire-uploads",
                    prefix=UPLOADS_PREFIX,
                    expiration=Duration.days(settings.uploads_expiration_days),
                    noncurrent_version_expiration=Duration.days(1),
                ),
                # incoming/ objects are deleted once indexed; their old versions need not stay.
                s3.LifecycleRule(
                    id="expire-old-versions",
                    noncurrent_version_expiration=Duration.days(30),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                ),
            ],
        )


def grant_objects(bucket: s3.IBucket, grantee: iam.IGrantable, prefix: str, *actions: str) -> None:
    """Object actions (s3:GetObject, s3:PutObject, s3:DeleteObject) under one prefix only."""
    iam.Grant.add_to_principal(
        grantee=grantee, actions=list(actions), resource_arns=[bucket.arn_for_objects(f"{prefix}*")]
    )


def grant_list(bucket: s3.IBucket, grantee: iam.IGrantable) -> None:
    """ListBucket on the whole bucket, without an s3:prefix condition.

    S3 answers a GET/HEAD of a missing key with 404 only to callers that may list the bucket,
    and it evaluates that permission WITHOUT the request's key as s3:prefix: a condition such
    as `s3:prefix = incoming/*` turns every missing key into a 403. The embed function must see
    404 for an object that a first delivery already moved (a duplicate S3 notification), or it
    would retry the message into the dead-letter queue. Listing shows key names only (content
    hashes and upload names), no object data.
    """
    iam.Grant.add_to_principal(
        grantee=grantee, actions=["s3:ListBucket"], resource_arns=[bucket.bucket_arn]
    )


def grant_cloudfront_read(
    bucket: s3.IBucket, distribution: cloudfront.IDistribution, prefix: str
) -> None:
    """s3:GetObject under ONE prefix for ONE distribution's origin access control.

    CDK's `S3BucketOrigin.with_origin_access_control` would grant the whole bucket (`/*`); the
    images bucket holds originals (gallery/, uploads/, incoming/), which may carry EXIF GPS and
    stay private (issue 13): CloudFront may read renditions/ only, so a request for any other
    path is answered 403 by S3 even if a behaviour pointed there.
    """
    bucket.add_to_resource_policy(
        iam.PolicyStatement(
            sid="CloudFrontReadsRenditionsOnly",
            effect=iam.Effect.ALLOW,
            principals=[iam.ServicePrincipal("cloudfront.amazonaws.com")],
            actions=["s3:GetObject"],
            resources=[bucket.arn_for_objects(f"{prefix}*")],
            conditions={"StringEquals": {"AWS:SourceArn": distribution.distribution_arn}},
        )
    )
