"""Settings validated once from the environment (artlens.settings)."""

from __future__ import annotations

import pytest

from artlens.settings import ConfigError, Settings

LOCAL = {
    "MODEL_CARD_PATH": "/models/artlens.json",
    "DATABASE_URL": "postgresql://localhost/artlens",
    "LOCAL_LAKE_DIR": "/tmp/lake",
    "LOCAL_URL_KEY": "k",
}
AWS = {
    "MODEL_CARD_PATH": "/var/task/models/artlens.json",
    "DB_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:db",
    "DB_HOST": "db.internal",
    "DB_NAME": "artlens",
    "IMAGES_BUCKET": "artlens-images",
    "CORS_ORIGIN": "https://art.example",
}


def test_local_defaults():
    settings = Settings.from_env(LOCAL)
    assert settings.is_local
    assert settings.cors_origin == "*"
    assert (settings.ort_threads, settings.log_level, settings.db_port) == (1, "INFO", 5432)


def test_aws_settings():
    settings = Settings.from_env({**AWS, "ORT_THREADS": "2", "LOG_LEVEL": "debug",
                                  "INGEST_WORKERS": "16", "INGEST_DECODERS": "3"})
    assert not settings.is_local
    assert (settings.cors_origin, settings.ort_threads, settings.log_level) == (
        "https://art.example", 2, "DEBUG")
    assert (settings.ingest_workers, settings.ingest_decoders) == (16, 3)


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings.from_env(LOCAL).ort_threads = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "mentions"),
    [
        ({k: v for k, v in LOCAL.items() if k != "MODEL_CARD_PATH"}, "MODEL_CARD_PATH"),
        ({k: v for k, v in LOCAL.items() if k != "DATABASE_URL"}, "DATABASE_URL"),
        ({k: v for k, v in AWS.items() if k != "DB_HOST"}, "DB_HOST"),
        ({k: v for k, v in LOCAL.items() if k != "LOCAL_URL_KEY"}, "LOCAL_URL_KEY"),
        ({**LOCAL, "IMAGES_BUCKET": "b", "CORS_ORIGIN": "*"}, "only one"),
        ({k: v for k, v in AWS.items() if k != "CORS_ORIGIN"}, "CORS_ORIGIN"),
        ({**LOCAL, "ORT_THREADS": "many"}, "ORT_THREADS"),
        ({**LOCAL, "ORT_THREADS": "0"}, "ORT_THREADS"),
        ({**LOCAL, "LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({**LOCAL, "INGEST_WORKERS": "0"}, "INGEST_WORKERS"),
        ({**LOCAL, "INGEST_DECODERS": "a few"}, "INGEST_DECODERS"),
    ],
)
def test_invalid_environment_names_the_problem(env, mentions):
    with pytest.raises(ConfigError, match=mentions):
        Settings.from_env(env)


def test_token_part_needs_exactly_one_key_source():
    assert Settings.from_env({"ARTLENS_TOKEN_KEY": "x" * 32}, needs=("token",)).token_key
    arn_only = Settings.from_env({"TOKEN_SECRET_ARN": "arn:x"}, needs=("token",))
    assert arn_only.cors_origin == "*"  # the authorizer answers no browser: CORS not needed
    with pytest.raises(ConfigError, match="exactly one"):
        Settings.from_env({}, needs=("token",))
    with pytest.raises(ConfigError, match="exactly one"):
        Settings.from_env({"ARTLENS_TOKEN_KEY": "a", "TOKEN_SECRET_ARN": "b"}, needs=("token",))
