"""The typed deployment settings read from cdk.json context (no synth needed)."""

from __future__ import annotations

import pytest

from infra.app import cdk_json_context
from infra.settings import DeploymentSettings, SettingsError


def settings_for(**context):
    merged = {**cdk_json_context(), **context}
    return DeploymentSettings.from_context(merged.get)


def test_each_environment_in_cdk_json_builds():
    dev, prod = settings_for(env="dev"), settings_for(env="prod")
    assert (dev.env_name, prod.env_name) == ("dev", "prod")
    assert not dev.is_prod and prod.is_prod
    assert prod.db_multi_az and prod.db_use_proxy and not dev.db_use_proxy
    assert dev.account is None and dev.region is None  # environment-agnostic synth


def test_single_values_can_be_overridden_like_cli_context():
    settings = settings_for(env="dev", **{"artlens:predictMemoryMb": "3008"})
    assert settings.predict_memory_mb == 3008
    tolerant = settings_for(env="prod", **{"artlens:backfillToleratedFailurePercent": "0"})
    assert tolerant.backfill_tolerated_failure_percent == 0
    assert tolerant.backfill_max_concurrency == 20  # prod's own value kept


@pytest.mark.parametrize(
    "context, message",
    [
        ({"env": "staging"}, "env= must be one of"),
        ({"env": "dev", "artlens:predictTimeoutS": "60"}, "predictTimeoutS"),
        ({"env": "dev", "artlens:embedMaxConcurrency": "1"}, "embedMaxConcurrency"),
        ({"env": "dev", "artlens:dbMultiAz": "maybe"}, "dbMultiAz"),
        ({"env": "dev", "artlens:logLevel": "LOUD"}, "logLevel"),
        ({"env": "dev", "artlens:backfillBatchSize": "0"}, "backfillBatchSize"),
        ({"env": "dev", "artlens:backfillMaxConcurrency": "0"}, "backfillMaxConcurrency"),
        ({"env": "dev", "artlens:backfillToleratedFailurePercent": "101"},
         "backfillToleratedFailurePercent"),
    ],
)
def test_bad_context_fails_synth_with_a_clear_message(context, message):
    with pytest.raises(SettingsError, match=message):
        settings_for(**context)


def test_unknown_keys_are_typos_not_ignored():
    tree = cdk_json_context()["artlens"]
    with pytest.raises(SettingsError, match="unknown artlens context keys"):
        DeploymentSettings.from_mapping("dev", {**tree["defaults"], "predictMemoryMB": 1})


def test_a_removed_key_fails_with_its_reason():
    """authorizerCacheTtlS is gone: API Gateway never caches the authorizer (issue 13)."""
    tree = cdk_json_context()["artlens"]
    with pytest.raises(SettingsError, match="authorizerCacheTtlS was removed.*verified in full"):
        DeploymentSettings.from_mapping("dev", {**tree["defaults"], "authorizerCacheTtlS": 300})


def test_api_gateway_log_role_ownership_is_a_setting():
    assert settings_for(env="dev").manage_api_gateway_log_role is True
    off = settings_for(env="prod", **{"artlens:manageApiGatewayLogRole": "false"})
    assert off.manage_api_gateway_log_role is False
