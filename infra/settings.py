"""One typed settings object for a deployment, read from cdk.json context.

`cdk deploy --all -c env=dev` picks `context.artlens.environments.dev`, laid over
`context.artlens.defaults`; any single value can still be overridden on the command line with
`-c artlens:<key>=<value>` (e.g. `-c artlens:predictMemoryMb=3008`). Synth needs no AWS
credentials: without `account`/`region` the stacks are environment-agnostic and the CLI's
credentials decide at deploy time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENV_NAMES = ("dev", "prod")
_OVERRIDE_PREFIX = "artlens:"


class SettingsError(ValueError):
    """The context does not describe a deployable environment; synth stops with this message."""


@dataclass(frozen=True)
class DeploymentSettings:
    env_name: str
    account: str | None
    region: str | None
    # predict (API) function
    predict_memory_mb: int
    predict_timeout_s: int
    predict_provisioned_concurrency: int
    # embed (ingestion) function and its queue
    embed_memory_mb: int
    embed_timeout_s: int
    embed_batch_size: int
    embed_batching_window_s: int
    embed_max_concurrency: int
    dlq_max_receive_count: int
    reindex_timeout_s: int
    # backfill / reindex state machine (Distributed Map): objects per child invocation, child
    # invocations at once (each holds a database connection) and the share of failed items a
    # run tolerates before it fails (a reindex switches only when none failed).
    backfill_batch_size: int
    backfill_max_concurrency: int
    backfill_tolerated_failure_percent: int
    # API
    throttle_rate_limit: int
    throttle_burst_limit: int
    api_latency_alarm_ms: int
    # This stack sets (and retains) the account's API Gateway CloudWatch role; false: the
    # account already has one (one owner per account and region, docs/deploy.md).
    manage_api_gateway_log_role: bool
    # database
    db_instance_type: str
    db_allocated_storage_gb: int
    db_multi_az: bool
    db_use_proxy: bool
    db_max_connections_alarm: int
    # everything else
    rejected_expiration_days: int
    uploads_expiration_days: int
    log_retention_days: int
    ort_threads: int  # the predict function's ONNX Runtime threads
    # The embed, reindex and backfill functions': 1, so the ingest pipeline's decodes and
    # database work keep the other core (docs/performance.md: 218 against 181 pictures/s).
    indexing_ort_threads: int
    log_level: str
    alarm_email: str | None
    layer_dir: str

    @property
    def is_prod(self) -> bool:
        return self.env_name == "prod"

    @property
    def stack_prefix(self) -> str:
        return f"ArtLens-{self.env_name}"

    @classmethod
    def from_context(cls, try_get_context: Callable[[str], Any]) -> DeploymentSettings:
        """Build from CDK context (`app.node.try_get_context`)."""
        env_name = try_get_context("env") or "dev"
        if env_name not in ENV_NAMES:
            raise SettingsError(f"-c env= must be one of {', '.join(ENV_NAMES)}, got {env_name!r}")
        tree = try_get_context("artlens") or {}
        environments = tree.get("environments", {})
        if env_name not in environments:
            raise SettingsError(f"cdk.json has no context.artlens.environments.{env_name}")
        merged: dict[str, Any] = {**tree.get("defaults", {}), **environments[env_name]}
        for name in _CAMEL_NAMES.values():
            override = try_get_context(_OVERRIDE_PREFIX + name)
            if override is not None:
                merged[name] = override
        return cls.from_mapping(env_name, merged)

    @classmethod
    def from_mapping(cls, env_name: str, values: Mapping[str, Any]) -> DeploymentSettings:
        unknown = set(values) - set(_CAMEL_NAMES.values())
        for key in sorted(unknown & set(_REMOVED)):
            raise SettingsError(f"artlens.{key} was removed: {_REMOVED[key]}")
        if unknown:
            raise SettingsError(f"unknown artlens context keys: {sorted(unknown)}")
        fields: dict[str, Any] = {"env_name": env_name}
        for field in dataclasses.fields(cls):
            if field.name == "env_name":
                continue
            key = _CAMEL_NAMES[field.name]
            if key not in values:
                if field.name in _OPTIONAL:
                    fields[field.name] = None
                    continue
                raise SettingsError(f"context value artlens.{key} is missing for env {env_name}")
            fields[field.name] = _coerce(key, values[key], field.type)
        built = cls(**fields)
        built._validate()
        return built

    def _validate(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise SettingsError(message)

        need(128 <= self.predict_memory_mb <= 10240, "predictMemoryMb must be 128..10240")
        need(128 <= self.embed_memory_mb <= 10240, "embedMemoryMb must be 128..10240")
        need(1 <= self.predict_timeout_s <= 29, "predictTimeoutS must be 1..29 (API Gateway cap)")
        need(1 <= self.embed_timeout_s <= 900, "embedTimeoutS must be 1..900")
        need(1 <= self.reindex_timeout_s <= 900, "reindexTimeoutS must be 1..900")
        need(self.predict_provisioned_concurrency >= 0, "predictProvisionedConcurrency >= 0")
        need(1 <= self.embed_batch_size <= 10_000, "embedBatchSize must be 1..10000")
        need(0 <= self.embed_batching_window_s <= 300, "embedBatchingWindowS must be 0..300")
        # SQS event sources accept a maximum concurrency of 2..1000.
        need(2 <= self.embed_max_concurrency <= 1000, "embedMaxConcurrency must be 2..1000")
        need(1 <= self.dlq_max_receive_count <= 1000, "dlqMaxReceiveCount must be 1..1000")
        need(1 <= self.backfill_batch_size <= 1000, "backfillBatchSize must be 1..1000")
        # Each child holds a database connection; Distributed Map allows up to 10,000.
        need(1 <= self.backfill_max_concurrency <= 1000, "backfillMaxConcurrency must be 1..1000")
        need(
            0 <= self.backfill_tolerated_failure_percent <= 100,
            "backfillToleratedFailurePercent must be 0..100",
        )
        need(self.throttle_rate_limit > 0 and self.throttle_burst_limit > 0, "throttle > 0")
        need(1 <= self.ort_threads <= 64, "ortThreads must be 1..64")
        need(1 <= self.indexing_ort_threads <= 64, "indexingOrtThreads must be 1..64")
        need(
            self.log_level in ("DEBUG", "INFO", "WARNING", "ERROR"),
            "logLevel must be DEBUG|INFO|WARNING|ERROR",
        )
        need(self.rejected_expiration_days >= 1, "rejectedExpirationDays must be >= 1")
        need(self.uploads_expiration_days >= 1, "uploadsExpirationDays must be >= 1")
        need(self.db_allocated_storage_gb >= 20, "dbAllocatedStorageGb must be >= 20")
        need(self.region is None or "-" in self.region, "region looks wrong")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


_CAMEL_NAMES = {
    f.name: _camel(f.name)
    for f in dataclasses.fields(DeploymentSettings)
    if f.name != "env_name"
}
_OPTIONAL = {"account", "region", "alarm_email"}
# Keys that no longer exist, with why (a leftover in someone's cdk.json fails with a reason).
_REMOVED = {
    "authorizerCacheTtlS": "the authorizer's results are never cached, so that every signed "
    "request is verified in full (issue 13)",
}


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    """Context from cdk.json is typed JSON; from `-c` it is a string. Accept both."""
    kind = str(type_name)
    if value is None and "None" in kind:
        return None
    try:
        if kind.startswith("int"):
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            raise TypeError
        return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"artlens.{key} must be {kind}, got {value!r}") from None
