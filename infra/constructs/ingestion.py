"""S3 ObjectCreated on incoming/ -> SQS (with DLQ) -> embed function (the serving image)."""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from artlens import names
from artlens.names import GALLERY_PREFIX, INCOMING_PREFIX, REJECTED_PREFIX
from infra.constructs.data_lake import grant_list, grant_objects
from infra.constructs.database import Database
from infra.constructs.lambda_defaults import IMAGE_MODEL_CARD_PATH, create_function, image_code
from infra.settings import DeploymentSettings

# AWS's guidance for SQS event sources: visibility timeout at least six times the function
# timeout, so a message is not redelivered while a (retried, batched) invocation still runs.
VISIBILITY_FACTOR = 6


class Ingestion(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        images: s3.Bucket,
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

        # Embed and reindex: the same image, model, bucket and database access.
        indexing_function: dict[str, Any] = {
            "environment": {
                names.ENV_MODEL_CARD_PATH: IMAGE_MODEL_CARD_PATH,
                names.ENV_IMAGES_BUCKET: images.bucket_name,
                names.ENV_ORT_THREADS: str(settings.ort_threads),
                **database.connection_environment(),
            },
            "vpc": database.vpc,
            "security_groups": [database.client_security_group],
        }
        self.embed_function = create_function(
            self,
            "EmbedFunction",
            settings,
            code=image_code("lambdas.embed.handler"),
            service="artlens-embed",
            memory_mb=settings.embed_memory_mb,
            timeout=Duration.seconds(settings.embed_timeout_s),
            **indexing_function,
            description="ArtLens: index pictures dropped under incoming/",
        )
        # incoming/: read and remove once handled; gallery/ and rejected/: write (a copy needs
        # read on its source and write on its target, nothing else).
        # DeleteObjectVersion: ingestion deletes exactly the version it read (artlens.lake
        # delete_version), so a same-name drop racing the ingest is never deleted unseen.
        grant_objects(
            images,
            self.embed_function,
            INCOMING_PREFIX,
            "s3:GetObject",
            "s3:DeleteObject",
            "s3:DeleteObjectVersion",
        )
        grant_list(images, self.embed_function)
        grant_objects(images, self.embed_function, GALLERY_PREFIX, "s3:PutObject")
        grant_objects(images, self.embed_function, REJECTED_PREFIX, "s3:PutObject")
        database.grant_connect(self.embed_function)
        # Created after the schema exists: the first message must not meet an empty database.
        self.embed_function.node.add_dependency(database.migration)
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
        self.reindex_function = create_function(
            self,
            "ReindexFunction",
            settings,
            code=image_code("lambdas.reindex.handler"),
            service="artlens-reindex",
            memory_mb=settings.embed_memory_mb,
            timeout=Duration.seconds(settings.reindex_timeout_s),
            **indexing_function,
            # No reserved concurrency: reserving even 1 fails on accounts with the default low
            # concurrency quota (unreserved must stay >= 10). Overlapping runs are safe without
            # it: rows are idempotent upserts, keys already embedded are skipped, and the
            # version switch is serialized by a PostgreSQL advisory lock (artlens.models).
            description="ArtLens: re-embed the gallery with the deployed model",
        )
        self.reindex_log_group = self.reindex_function.log_group
        grant_objects(images, self.reindex_function, GALLERY_PREFIX, "s3:GetObject")
        grant_list(images, self.reindex_function)
        database.grant_connect(self.reindex_function)
        self.reindex_function.node.add_dependency(database.migration)

    @property
    def functions(self) -> list[lambda_.Function]:
        return [self.embed_function, self.reindex_function]
