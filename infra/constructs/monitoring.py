"""Alarms (to an encrypted SNS topic, optionally e-mailed) and one dashboard.

Besides AWS's own metrics, the dashboard graphs what the functions publish in the embedded
metric format (artlens.metrics; namespace ArtLens, dimension `service`): pictures indexed,
rejected and duplicates by embed and by the backfill batches, indexed pictures per type,
predict's latency and its predictions per type; and an alarm fires on a stalled backfill
(docs/operations.md, "Backfill stalled").
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra.constructs.lambda_defaults import SERVICE_BATCH, SERVICE_EMBED, SERVICE_PREDICT
from infra.settings import DeploymentSettings

FIVE_MINUTES = Duration.minutes(5)
# artlens.metrics' names (infra imports artlens.names only; tests/unit/test_metrics.py ties them).
NAMESPACE = "ArtLens"
INDEXING_METRICS = ("PicturesIndexed", "PicturesRejected", "Duplicates")
INDEXED_BY_TYPE = "IndexedByType"
PREDICT_LATENCY = "PredictLatency"
PREDICTIONS = "Predictions"
INDEXING_SERVICES = (SERVICE_EMBED, SERVICE_BATCH)


def app_metric(name: str, service: str, statistic: str = "Sum",
               label: str | None = None) -> cloudwatch.Metric:
    return cloudwatch.Metric(namespace=NAMESPACE, metric_name=name,
                             dimensions_map={"service": service}, period=FIVE_MINUTES,
                             statistic=statistic, label=label)


def per_type(name: str, label: str) -> cloudwatch.MathExpression:
    """Every `type` of a per-type metric, whatever the model's classes are (a SEARCH: the
    dashboard finds the series; a new class shows up by itself)."""
    return cloudwatch.MathExpression(
        expression=f"SEARCH('{{{NAMESPACE},service,type}} MetricName=\"{name}\"', 'Sum', 300)",
        using_metrics={}, label=label, period=FIVE_MINUTES,
    )


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        api: apigw.RestApi,
        functions: Sequence[lambda_.Function],
        dead_letters: sqs.IQueue,
        database: rds.DatabaseInstance,
        state_machines: Sequence[sfn.StateMachine] = (),
        backfill_stalled: cloudwatch.MathExpression | None = None,
        backfill_progress: cloudwatch.Metric | None = None,
    ):
        super().__init__(scope, construct_id)
        # CloudWatch may publish to an encrypted topic only with a customer managed key that
        # grants it use of the key.
        key = kms.Key(self, "AlarmTopicKey", enable_key_rotation=True,
                      description="ArtLens alarm topic")
        key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"),
                  "kms:Decrypt", "kms:GenerateDataKey*")
        self.topic = sns.Topic(self, "Alarms", master_key=key, enforce_ssl=True,
                               display_name=f"ArtLens {settings.env_name} alarms")
        if settings.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(settings.alarm_email))
        action = cw_actions.SnsAction(self.topic)
        self.alarms: list[cloudwatch.Alarm] = []

        def alarm(name: str, metric: cloudwatch.Metric | cloudwatch.MathExpression,
                  threshold: float, description: str,
                  periods: int = 1) -> cloudwatch.Alarm:
            created = metric.create_alarm(
                self,
                name,
                threshold=threshold,
                evaluation_periods=periods,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=description,
            )
            created.add_alarm_action(action)
            self.alarms.append(created)
            return created

        api_5xx = api.metric_server_error(period=FIVE_MINUTES, statistic="Sum")
        api_latency = api.metric_latency(period=FIVE_MINUTES, statistic="p99")
        alarm("Api5xx", api_5xx, 5, "API answered 5xx (5+ in 5 minutes)")
        alarm("ApiLatencyP99", api_latency, settings.api_latency_alarm_ms,
              f"API p99 latency >= {settings.api_latency_alarm_ms} ms for 15 minutes", periods=3)

        error_widgets, throttle_widgets = [], []
        for function in functions:
            name = function.node.id.removesuffix("Function")
            errors = function.metric_errors(period=FIVE_MINUTES, statistic="Sum")
            throttles = function.metric_throttles(period=FIVE_MINUTES, statistic="Sum")
            alarm(f"{name}Errors", errors, 1, f"{name} function raised errors")
            alarm(f"{name}Throttles", throttles, 1, f"{name} function was throttled")
            error_widgets.append(errors.with_(label=name))
            throttle_widgets.append(throttles.with_(label=name))

        dlq_depth = dead_letters.metric_approximate_number_of_messages_visible(
            period=FIVE_MINUTES, statistic="Maximum"
        )
        alarm("DeadLetters", dlq_depth, 1, "ingestion messages failed repeatedly (DLQ not empty)")
        db_cpu = database.metric_cpu_utilization(period=FIVE_MINUTES, statistic="Average")
        db_connections = database.metric_database_connections(
            period=FIVE_MINUTES, statistic="Maximum"
        )
        alarm("DbCpu", db_cpu, 80, "database CPU >= 80% for 15 minutes", periods=3)
        alarm("DbConnections", db_connections, settings.db_max_connections_alarm,
              f"database connections >= {settings.db_max_connections_alarm}")

        # A backfill or reindex that failed (too many failed batches, a reindex not switched),
        # timed out or was aborted: one execution is enough to call someone.
        runs = []
        for machine in state_machines:
            name = machine.node.scope.node.id if machine.node.scope else machine.node.id
            ended = cloudwatch.MathExpression(
                expression="failed + timed_out + aborted",
                using_metrics={
                    "failed": machine.metric_failed(period=FIVE_MINUTES, statistic="Sum"),
                    "timed_out": machine.metric_timed_out(period=FIVE_MINUTES, statistic="Sum"),
                    "aborted": machine.metric_aborted(period=FIVE_MINUTES, statistic="Sum"),
                },
                label=f"{name} runs failed/timed out/aborted",
                period=FIVE_MINUTES,
            )
            alarm(f"{name}RunsFailed", ended, 1,
                  f"{name}: an execution failed, timed out or was aborted "
                  "(docs/operations.md, Backfill and reindex at scale)")
            runs.append(ended)

        # A backfill whose map keeps invoking batches that never finish (Backfill.
        # stalled_expression): three 5-minute periods in a row.
        self.backfill_stalled_alarm: cloudwatch.Alarm | None = None
        if backfill_stalled is not None:
            stall_periods = 3
            self.backfill_stalled_alarm = backfill_stalled.create_alarm(
                self,
                "BackfillStalled",
                threshold=1,
                evaluation_periods=stall_periods,
                datapoints_to_alarm=stall_periods,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description="Backfill stalled: batches invoked for 15 minutes, none "
                "finished (docs/operations.md, Backfill stalled)",
            )
            self.backfill_stalled_alarm.add_alarm_action(action)
            self.alarms.append(self.backfill_stalled_alarm)

        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=f"ArtLens-{settings.env_name}"
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="API 5xx", left=[api_5xx], width=8),
            cloudwatch.GraphWidget(title="API latency p99 (ms)", left=[api_latency], width=8),
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=8),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Function errors", left=error_widgets, width=8),
            cloudwatch.GraphWidget(title="Function throttles", left=throttle_widgets, width=8),
            cloudwatch.GraphWidget(title="DLQ depth", left=[dlq_depth], width=8),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Database CPU %", left=[db_cpu], width=12),
            cloudwatch.GraphWidget(title="Database connections", left=[db_connections], width=12),
        )
        if runs:
            self.dashboard.add_widgets(
                cloudwatch.GraphWidget(title="Backfill / reindex runs ended badly", left=runs,
                                       width=24),
            )

        # --- the application's own metrics (artlens.metrics) ---------------------------------
        indexing = [
            app_metric(name, service, label=f"{name} ({service.removeprefix('artlens-')})")
            for name in INDEXING_METRICS for service in INDEXING_SERVICES
        ]
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="Pictures indexed, rejected, duplicates", left=indexing,
                                   width=12),
            cloudwatch.GraphWidget(title="Indexed pictures by type",
                                   left=[per_type(INDEXED_BY_TYPE, "indexed")], width=12,
                                   stacked=True),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Predict latency (ms)",
                left=[app_metric(PREDICT_LATENCY, SERVICE_PREDICT, statistic, label=statistic)
                      for statistic in ("p50", "p99")],
                width=12,
            ),
            cloudwatch.GraphWidget(title="Predictions by type",
                                   left=[per_type(PREDICTIONS, "predictions")], width=12,
                                   stacked=True),
        )
        if backfill_stalled is not None and backfill_progress is not None:
            self.dashboard.add_widgets(
                cloudwatch.GraphWidget(title="Backfill progress: objects done per 5 min",
                                       left=[backfill_progress], right=[backfill_stalled],
                                       width=24),
            )
