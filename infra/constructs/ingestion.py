"""S3 ObjectCreated on incoming/ -> SQS (with DLQ) -> embed function (the serving image)."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from artlens import names
from artlens.names import (
    GALLERY_PREFIX,
    INCOMING_PREFIX,
    REJECTED_PREFIX,
    RENDITIONS_PREFIX,
    REPORTS_PREFIX,
)
from infra.constructs.data_lake import grant_list, grant_objects
from infra.constructs.database import Database
from infra.constructs.lambda_defaults import (
    IMAGE_MODEL_CARD_PATH,
    SERVICE_EMBED,
    SERVICE_REINDEX,
    create_function,
    grant_model_registry,
    image_code,
)
from infra.settings import DeploymentSettings

# AWS's guidance for SQS event sources: visibility timeout at least six times the function
# timeout, so a message is not redelivered while a (retried, batched) invocation still runs.
VISIBILITY_FACTOR = 6


def grant_ingestion(images: s3.IBucket, grantee: iam.IGrantable) -> None:
    """What indexing drops needs (embed, and the backfill batches): incoming/ read and removed
    once handled; gallery/, rejected/, renditions/ and reports/ written (a copy needs read on
    its source and write on its target, nothing else). DeleteObjectVersion: ingestion deletes
    exactly the version it read (artlens.lake delete_version), so a same-name drop racing the
    ingest is never deleted unseen. ListBucket: a missing key must read as 404 (grant_list)."""
    # PutObject: a sidecar CSV dropped in incoming/ is split into one <picture>.json record
    # per picture beside it (artlens.index.works); records never write back, so no loop.
    grant_objects(images, grantee, INCOMING_PREFIX,
                  "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion")
    grant_list(images, grantee)
    grant_objects(images, grantee, GALLERY_PREFIX, "s3:PutObject")
    grant_objects(images, grantee, REJECTED_PREFIX, "s3:PutObject")
    # Renditions (artlens.renditions) beside each gallery copy; each invocation's part of its
    # batches' intake reports (artlens.triage), never read back here.
    grant_objects(images, grantee, RENDITIONS_PREFIX, "s3:PutObject")
    grant_objects(images, grantee, REPORTS_PREFIX, "s3:PutObject")


class Ingestion(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        images: s3.Bucket,
        artifacts: s3.IBucket,
        database: Database,
    ):
        super().__init__(scope, construct_id)
        self.dead_letters = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        visibility = min(settings.embed_timeout_s * VISIBILITY_FACTOR, 12 * 3600)
        self.queue = sqs.Queue(
            self,
            "Incoming",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(visibility),
            # SQS's maximum: a large drop (or an outage of the database) can leave a backlog
            # that takes days to drain; the default 4 days would silently drop its tail.
            retention_period=Duration.days(14),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letters, max_receive_count=settings.dlq_max_receive_count
            ),
        )
        images.add_event_notification(
            s3.EventType.OBJECT_CREATED,
            s3n.SqsDestination(self.queue),
            s3.NotificationKeyFilter(prefix=INCOMING_PREFIX),
        )

        # Embed, reindex and the backfill batches: the same image, model, bucket and database.
        self._settings, self._database, self._artifacts = settings, database, artifacts
        self._indexing_options: dict[str, Any] = {
            "environment": {
                names.ENV_MODEL_CARD_PATH: IMAGE_MODEL_CARD_PATH,
                names.ENV_IMAGES_BUCKET: images.bucket_name,
                # The model registry (models/<version>/), read-only: the current version, a
                # reindex's version or a rollback target that the image does not carry.
                names.ENV_ARTIFACTS_BUCKET: artifacts.bucket_name,
                names.ENV_ORT_THREADS: str(settings.indexing_ort_threads),
                **database.connection_environment(),
            },
            "vpc": database.vpc,
            "security_groups": [database.client_security_group],
        }
        self.embed_function = self.indexing_function(
            self, "EmbedFunction", "lambdas.embed.handler", SERVICE_EMBED,
            settings.embed_timeout_s, "ArtLens: index pictures dropped under incoming/",
        )
        grant_ingestion(images, self.embed_function)
        self.embed_function.add_event_source(
            event_sources.SqsEventSource(
                self.queue,
                batch_size=settings.embed_batch_size,
                max_batching_window=Duration.seconds(settings.embed_batching_window_s),
                # Caps concurrent invocations, hence database connections.
                max_concurrency=settings.embed_max_concurrency,
                report_batch_item_failures=True,
            )
        )

        # Re-embedding the gallery with a newly deployed model: invoked by hand (docs/deploy.md).
        # No reserved concurrency: reserving even 1 fails on accounts with the default low
        # concurrency quota (unreserved must stay >= 10). Overlapping runs are safe without it:
        # rows are idempotent upserts, keys already embedded are skipped, and the version
        # switch is serialized by a PostgreSQL advisory lock (artlens.models).
        self.reindex_function = self.indexing_function(
            self, "ReindexFunction", "lambdas.reindex.handler", SERVICE_REINDEX,
            settings.reindex_timeout_s, "ArtLens: re-embed the gallery with the deployed model",
        )
        self.reindex_log_group = self.reindex_function.log_group
        grant_objects(images, self.reindex_function, GALLERY_PREFIX, "s3:GetObject")
        grant_list(images, self.reindex_function)

    def indexing_function(
        self, scope: Construct, construct_id: str, command: str, service: str, timeout_s: int,
        description: str,
    ) -> lambda_.Function:
        """A function of the serving image that writes index rows: the model (the image's, and
        read access to the registry in the artifacts bucket), the images bucket's name and the
        database (connect granted; created after the schema exists, so its first call never
        meets an empty database). Images-bucket grants are the caller's."""
        function = create_function(
            scope, construct_id, self._settings, code=image_code(command), service=service,
            memory_mb=self._settings.embed_memory_mb, timeout=Duration.seconds(timeout_s),
            **self._indexing_options, description=description,
        )
        self._database.grant_connect(function)
        grant_model_registry(self._artifacts, function)
        function.node.add_dependency(self._database.migration)
        return function

    @property
    def functions(self) -> list[lambda_.Function]:
        return [self.embed_function, self.reindex_function]
