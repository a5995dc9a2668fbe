"""Backfill and reindex at scale: a Step Functions state machine with a Distributed Map.

    {"mode": "backfill", "prefix": "incoming/", "version": null}
    {"mode": "reindex",  "prefix": "gallery/",  "version": null | "<registered version>"}
    {"mode": "renditions", "prefix": optional "gallery/..." (default gallery/),
     "version": optional, null only}
    {"mode": "backfill" | "reindex" | "renditions",
     "manifest": {"bucket": "<artifacts bucket>",
                  "key": "inventory/<images bucket>/<incoming|gallery>/<date>/manifest.json"},
     "prefix": optional (default: the mode's root), "version": optional (default null)}

CheckInput refuses anything else (a prefix outside the mode's root included), so an execution
can only ever read incoming/ or gallery/. The renditions mode writes the missing renditions of
gallery works indexed before ingest wrote them (artlens.renditions.backfill_renditions, in the
batch function): its items are gallery keys, it has no model version and never switches one.
Batches lists the prefix (S3 ListObjectsV2 item reader); with a manifest, InventoryBatches
reads the items from that S3 Inventory report instead (ItemReader InputType MANIFEST: the CSV
files the manifest names, one item per row, {"Bucket", "Key"}), which for millions of objects
saves the listing (10 M keys are 10,000 LIST calls before the first batch) and which S3 writes
daily anyway (infra/constructs/data_lake.py). The manifest must be one of the artifacts
bucket's inventory/ reports, the only place the state machine may read one from; the batch
function skips rows outside the requested prefix, as an inventory is a whole configuration's
prefix and up to a day old. Either map cuts its items into batches of backfillBatchSize keys
and runs the batch function (the serving image, CMD lambdas.batch.handler) on each, at most
backfillMaxConcurrency at once (each holds a database connection), retrying failed batches with
backoff and tolerating backfillToleratedFailurePercent failed items; per-batch results go to
the artifacts bucket under backfill-results/. A reindex then asks the map run how many items
failed: only with none does SwitchVersion run (the batch function's activate mode), which
catches up with pictures ingested meanwhile and switches queries to the version; otherwise the
run fails and the current version stays. Step Functions is the scheduler; nothing here polls or
queues.

Progress and stalls: every finished batch publishes BatchItemsDone (artlens.metrics, embedded
metric format, dimension service = artlens-batch). A backfill is stalled when the map keeps
invoking the batch function yet no batch finishes for STALL_PERIODS x 5 minutes (the database
down, every batch failing or timing out and being retried): `stalled_expression` is that
condition as metric math, which CloudWatch evaluates (infra/constructs/monitoring.py alarms
on it).
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from artlens.names import GALLERY_PREFIX, INCOMING_PREFIX, RENDITIONS_PREFIX
from infra.constructs.data_lake import INVENTORY_PREFIX, grant_objects
from infra.constructs.ingestion import Ingestion, grant_ingestion
from infra.constructs.lambda_defaults import SERVICE_BATCH, _retention_name
from infra.settings import DeploymentSettings

RESULTS_PREFIX = "backfill-results/"
# artlens.metrics.NAMESPACE / METRIC_BATCH_ITEMS (infra imports artlens.names only; a unit test
# ties the two).
METRICS_NAMESPACE = "ArtLens"
METRIC_BATCH_ITEMS = "BatchItemsDone"
METRIC_PERIOD = Duration.minutes(5)
# Stalled: batches invoked but none finished for this many consecutive 5-minute periods. A batch
# of 50 pictures takes seconds; 15 minutes also covers a batch retried with backoff after a
# brief database restart.
STALL_PERIODS = 3
# A 10 M picture backfill at 10 batches of 50 at once, ~30 s per batch, takes about a week.
EXECUTION_TIMEOUT = Duration.days(30)
# Errors a retry can cure: the batch function's own "some pictures failed" and a database
# that was briefly unreachable (artlens.errors.Unavailable), plus a child that timed out.
RETRIED_BATCH_ERRORS = ["BatchIncomplete", "Unavailable", "States.Timeout"]
# Lambda's own transient errors (throttling included).
LAMBDA_SERVICE_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    "Lambda.ClientExecutionTimeoutException",
]
INPUT_SHAPE = (
    'input must be {"mode": "backfill", "prefix": "incoming/...", "version": null} or '
    '{"mode": "reindex", "prefix": "gallery/...", "version": null | "<version>"} or '
    '{"mode": "renditions", "prefix": "gallery/..." (optional)}, or any of them '
    'with "manifest": {"bucket": "<artifacts bucket>", "key": "inventory/.../manifest.json"} '
    "(then prefix and version may be left out; a renditions version can only be null)"
)
# An inventory manifest the state machine may read: S3 writes them as
# inventory/<source bucket>/<configuration id>/<YYYY-MM-DDTHH-MMZ>/manifest.json.
MANIFEST_KEY_PATTERN = f"{INVENTORY_PREFIX}/*/manifest.json"


def _retry(task: tasks.LambdaInvoke, errors: list[str], first_s: int, attempts: int,
           rate: float) -> None:
    """Exponential backoff with full jitter: batches that failed together (a throttle, the
    database restarting) do not all come back at the same moment."""
    task.add_retry(errors=errors, interval=Duration.seconds(first_s), max_attempts=attempts,
                   backoff_rate=rate, jitter_strategy=sfn.JitterType.FULL)


class Backfill(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        images: s3.IBucket,
        artifacts: s3.IBucket,
        ingestion: Ingestion,
    ):
        super().__init__(scope, construct_id)
        self.batch_function = ingestion.indexing_function(
            self, "BatchFunction", "lambdas.batch.handler", SERVICE_BATCH,
            # The activate mode may catch up with a gallery listing; a batch takes far less.
            settings.reindex_timeout_s,
            "ArtLens: backfill or reindex one batch (Step Functions Distributed Map)",
        )
        # Backfill does what embed does; reindex reads gallery/ too.
        grant_ingestion(images, self.batch_function)
        grant_objects(images, self.batch_function, GALLERY_PREFIX, "s3:GetObject")
        # The renditions mode asks which renditions exist (HeadObject, which S3 authorises as
        # s3:GetObject) before it writes the missing ones (PutObject: grant_ingestion).
        grant_objects(images, self.batch_function, RENDITIONS_PREFIX, "s3:GetObject")

        self.state_machine_name = f"{settings.stack_prefix}-backfill"
        self.log_group = logs.LogGroup(
            self,
            "StateMachineLogs",
            # Step Functions' vended logs need the /aws/vendedlogs/ prefix to fit their policy.
            log_group_name=f"/aws/vendedlogs/states/{self.state_machine_name}",
            retention=getattr(logs.RetentionDays, _retention_name(settings.log_retention_days)),
            removal_policy=RemovalPolicy.RETAIN if settings.is_prod else RemovalPolicy.DESTROY,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=self.state_machine_name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_chainable(self._definition(settings, images,
                                                                                artifacts)),
            timeout=EXECUTION_TIMEOUT,
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL,
                                include_execution_data=False),
        )
        # CDK's ResultWriter grant covers the whole artifacts bucket (object actions on
        # <bucket>/*), where model files live too: writes anywhere but the results prefix are
        # denied, so a run can never overwrite a model.
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                effect=iam.Effect.DENY,
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                not_resources=[artifacts.arn_for_objects(f"{RESULTS_PREFIX}*")],
            )
        )
        # The inventory reader: the manifest and the CSV files it names, all under inventory/
        # of the artifacts bucket. CDK's S3ManifestItemReader grants nothing when the bucket
        # comes from the input (and the whole bucket when given one), so the grant is ours.
        inventory_files = artifacts.arn_for_objects(f"{INVENTORY_PREFIX}/*")
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[inventory_files])
        )
        # The ResultWriter grant above also reads the whole artifacts bucket: reads outside
        # the results and the inventory reports (model files) are denied too.
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                effect=iam.Effect.DENY,
                actions=["s3:GetObject"],
                not_resources=[artifacts.arn_for_objects(f"{RESULTS_PREFIX}*"), inventory_files],
            )
        )

    def items_done(self) -> cloudwatch.Metric:
        """Listed objects handled by finished batches, per 5 minutes (the progress)."""
        return cloudwatch.Metric(
            namespace=METRICS_NAMESPACE, metric_name=METRIC_BATCH_ITEMS,
            dimensions_map={"service": SERVICE_BATCH}, period=METRIC_PERIOD, statistic="Sum",
            label="objects done (finished batches)",
        )

    def stalled_expression(self) -> cloudwatch.MathExpression:
        """1 in a period where the map invoked the batch function but no batch finished, else
        0. Missing data is 0 on both sides (FILL), so an idle state machine reads 0."""
        return cloudwatch.MathExpression(
            expression="IF(FILL(invoked, 0) > 0 AND FILL(done, 0) == 0, 1, 0)",
            using_metrics={
                "invoked": self.batch_function.metric_invocations(period=METRIC_PERIOD,
                                                                  statistic="Sum"),
                "done": self.items_done(),
            },
            label="backfill stalled (batches invoked, none finished)",
            period=METRIC_PERIOD,
        )

    def _map_run_arn_pattern(self) -> str:
        return Stack.of(self).format_arn(
            service="states",
            resource="mapRun",
            resource_name=f"{self.state_machine_name}/*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )

    def _definition(
        self, settings: DeploymentSettings, images: s3.IBucket, artifacts: s3.IBucket
    ) -> sfn.IChainable:
        path = sfn.JsonPath

        def batch_task(task_id: str) -> tasks.LambdaInvoke:
            """The map's child: one per map (a state belongs to one map's graph)."""
            batch = tasks.LambdaInvoke(
                self,
                task_id,
                lambda_function=self.batch_function,
                payload_response_only=True,
                retry_on_service_exceptions=False,  # our own retries below, with jitter
                task_timeout=sfn.Timeout.duration(Duration.seconds(settings.reindex_timeout_s)),
            )
            _retry(batch, LAMBDA_SERVICE_ERRORS, 2, 6, 2)
            _retry(batch, RETRIED_BATCH_ERRORS, 10, 3, 3)
            return batch

        def distributed(map_state: sfn.DistributedMap, task_id: str) -> sfn.DistributedMap:
            map_state.item_processor(
                batch_task(task_id),
                mode=sfn.ProcessorMode.DISTRIBUTED,
                execution_type=sfn.ProcessorType.STANDARD,
            )
            return map_state

        common: dict = dict(
            max_concurrency=settings.backfill_max_concurrency,
            tolerated_failure_percentage=settings.backfill_tolerated_failure_percent,
            result_writer_v2=sfn.ResultWriterV2(bucket=artifacts, prefix=RESULTS_PREFIX),
            result_path="$.map",
        )
        batches = sfn.DistributedMap(
            self,
            "Batches",
            item_reader=sfn.S3ObjectsItemReader(bucket=images, prefix=path.string_at("$.prefix")),
            # Only the key travels (the listing also carries ETag, size, dates).
            item_selector={"Key": path.string_at("$$.Map.Item.Value.Key")},
            item_batcher=sfn.ItemBatcher(
                max_items_per_batch=settings.backfill_batch_size,
                # CDK writes BatchInput as given (no JsonPath rendering): the ".$" keys are
                # spelled out so that Step Functions reads the values from the input.
                batch_input={"mode.$": "$.mode", "version.$": "$.version"},
            ),
            label="Batches",
            **common,
        )
        distributed(batches, "EmbedBatch")
        inventory_batches = sfn.DistributedMap(
            self,
            "InventoryBatches",
            # CheckInput has tied manifest.bucket to the artifacts bucket and the key to
            # inventory/; the role may read nothing else there anyway.
            item_reader=sfn.S3ManifestItemReader(
                bucket_name_path=path.string_at("$.manifest.bucket"),
                key=path.string_at("$.manifest.key"),
            ),
            # Rows are {"Bucket", "Key"} (no optional fields are configured): the batch
            # function checks the bucket, URL-decodes the key and filters by the prefix.
            item_selector={
                "Bucket": path.string_at("$$.Map.Item.Value.Bucket"),
                "Key": path.string_at("$$.Map.Item.Value.Key"),
            },
            item_batcher=sfn.ItemBatcher(
                max_items_per_batch=settings.backfill_batch_size,
                batch_input={"mode.$": "$.mode", "prefix.$": "$.prefix",
                             "version.$": "$.version"},
            ),
            label="InventoryBatches",
            **common,
        )
        distributed(inventory_batches, "EmbedInventoryBatch")

        count_failures = tasks.CallAwsService(
            self,
            "CountFailures",
            service="sfn",
            action="describeMapRun",
            iam_action="states:DescribeMapRun",
            iam_resources=[self._map_run_arn_pattern()],
            parameters={"MapRunArn": path.string_at("$.map.MapRunArn")},
            result_selector={
                "failed": path.number_at("$.ItemCounts.Failed"),
                "timedOut": path.number_at("$.ItemCounts.TimedOut"),
                "aborted": path.number_at("$.ItemCounts.Aborted"),
            },
            result_path="$.mapRun",
        )
        switch = tasks.LambdaInvoke(
            self,
            "SwitchVersion",
            lambda_function=self.batch_function,
            payload=sfn.TaskInput.from_object(
                {"activate": {"version": path.string_at("$.version")}}
            ),
            payload_response_only=True,
            retry_on_service_exceptions=False,
            result_path="$.activation",
        )
        _retry(switch, LAMBDA_SERVICE_ERRORS, 2, 6, 2)
        incomplete = sfn.Fail(
            self,
            "ReindexIncomplete",
            error="ReindexIncomplete",
            cause="Some batches failed: the current model version stays. Start the reindex "
            "again; it redoes only the pictures that still lack a row.",
        )
        all_succeeded = sfn.Condition.and_(
            sfn.Condition.number_equals("$.mapRun.failed", 0),
            sfn.Condition.number_equals("$.mapRun.timedOut", 0),
            sfn.Condition.number_equals("$.mapRun.aborted", 0),
        )
        done = sfn.Succeed(self, "Done")
        after_map = (
            sfn.Choice(self, "IsReindex")
            .when(
                sfn.Condition.string_equals("$.mode", "reindex"),
                count_failures.next(
                    sfn.Choice(self, "AllBatchesSucceeded")
                    .when(all_succeeded, switch.next(done))
                    .otherwise(incomplete)
                ),
            )
            .otherwise(done)
        )
        batches.next(after_map)
        inventory_batches.next(after_map)

        condition = sfn.Condition
        no_manifest = condition.not_(condition.is_present("$.manifest"))

        def valid(mode: str, root: str) -> sfn.Condition:
            return condition.and_(
                condition.is_string("$.mode"),
                condition.string_equals("$.mode", mode),
                condition.is_string("$.prefix"),
                condition.string_matches("$.prefix", f"{root}*"),
                condition.is_present("$.version"),
            )

        def manifest(mode: str) -> sfn.Condition:
            return condition.and_(
                condition.is_string("$.mode"),
                condition.string_equals("$.mode", mode),
                condition.is_present("$.manifest"),
                condition.is_string("$.manifest.bucket"),
                condition.string_equals("$.manifest.bucket", artifacts.bucket_name),
                condition.is_string("$.manifest.key"),
                condition.string_matches("$.manifest.key", MANIFEST_KEY_PATTERN),
            )

        # Renditions have no model version: one given (not null) is a mistaken input.
        renditions_valid = condition.and_(valid("renditions", GALLERY_PREFIX),
                                          condition.is_null("$.version"))
        bad_input = sfn.Fail(self, "BadInput", error="BadInput", cause=INPUT_SHAPE)
        # A manifest input may leave prefix and version out: the mode's root and null, merged
        # under what the input gives (States.JsonMerge: the second object's keys win), then
        # checked like a listing's.
        apply_defaults = sfn.Pass(
            self,
            "ApplyInventoryDefaults",
            parameters={"input": path.json_merge(path.object_at("$.defaults"),
                                                 path.object_at("$"))},
            output_path="$.input",
        ).next(
            sfn.Choice(self, "CheckInventoryInput")
            .when(valid("backfill", INCOMING_PREFIX), inventory_batches)
            .when(valid("reindex", GALLERY_PREFIX), inventory_batches)
            .when(renditions_valid, inventory_batches)
            .otherwise(bad_input)
        )

        def defaults(mode: str, root: str, state_id: str | None = None) -> sfn.Pass:
            return sfn.Pass(
                self,
                state_id or f"{mode.capitalize()}InventoryDefaults",
                # A None in a CDK object is dropped from the ASL; the JSON null is written
                # as an intrinsic that yields it.
                parameters={"prefix": root, "version": path.string_to_json("null")},
                result_path="$.defaults",
            )

        # A renditions listing may leave prefix and version out as well (the map's BatchInput
        # reads $.version, which must exist): the same defaults, then the same check.
        renditions_listing = defaults("renditions", GALLERY_PREFIX, "RenditionsDefaults").next(
            sfn.Pass(
                self,
                "ApplyRenditionsDefaults",
                parameters={"input": path.json_merge(path.object_at("$.defaults"),
                                                     path.object_at("$"))},
                output_path="$.input",
            )
        ).next(
            sfn.Choice(self, "CheckRenditionsInput")
            .when(condition.and_(no_manifest, renditions_valid), batches)
            .otherwise(bad_input)
        )

        return (
            sfn.Choice(self, "CheckInput")
            .when(condition.and_(no_manifest, valid("backfill", INCOMING_PREFIX)), batches)
            .when(condition.and_(no_manifest, valid("reindex", GALLERY_PREFIX)), batches)
            .when(manifest("backfill"),
                  defaults("backfill", INCOMING_PREFIX).next(apply_defaults))
            .when(manifest("reindex"), defaults("reindex", GALLERY_PREFIX).next(apply_defaults))
            .when(condition.and_(no_manifest, condition.is_string("$.mode"),
                                 condition.string_equals("$.mode", "renditions")),
                  renditions_listing)
            .when(manifest("renditions"),
                  defaults("renditions", GALLERY_PREFIX).next(apply_defaults))
            .otherwise(bad_input)
        )
