"""Typed settings, built from the environment ONCE per process by a handler.

Library code never reads `os.environ`; a handler calls `Settings.from_env(os.environ, needs=...)`
at cold start and passes the values on. `needs` names the parts that handler uses, so the
authorizer is not forced to know the database URL and a missing value fails the cold start with
a `ConfigError` that names the variable, instead of a confusing error on the first request.

Variables:
  MODEL_CARD_PATH                       model card JSON (ONNX file beside it)      [model]
  MODEL_REGISTRY_DIR  optional: folder of <version>/artlens.json models predict may serve;
                      default: the folder of MODEL_CARD_PATH (the image's models/)
  DATABASE_URL | DB_SECRET_ARN + DB_HOST + DB_NAME (+ DB_PORT, default 5432)       [database]
  IMAGES_BUCKET | LOCAL_LAKE_DIR + LOCAL_URL_KEY (+ LOCAL_URL_BASE, default "")    [lake]
  TOKEN_SECRET_ARN | ARTLENS_TOKEN_KEY | ARTLENS_TOKEN_KEY_FILE                    [token]
  CORS_ORIGIN  required on AWS (an *_ARN or IMAGES_BUCKET set); "*" locally        [cors]
  ORT_THREADS  1..64, default 1;  LOG_LEVEL  DEBUG|INFO|WARNING|ERROR, default INFO
  TOKEN_MAX_LIFETIME_S  60..2592000 (30 days, the default): longest bearer token accepted
  API_KEYS_SECRET_ARN | API_KEYS_FILE (+ API_KEYS_TTL_S)        [SigningSettings, authorizer]
  RENDITIONS_BASE_URL  optional, AWS: the CloudFront origin that serves renditions/
  ARTIFACTS_BUCKET     optional, AWS: the model registry's bucket (models/<version>/)
  MODEL_CACHE_DIR      optional: where registry models are cached (default: /tmp/artlens-models)

The variable names are artlens.names.ENV_*, which infra/ and the local stack set.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artlens import names as n

PARTS = frozenset({"model", "database", "lake", "token", "cors"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(RuntimeError):
    """The environment does not describe a working deployment; raised at cold start."""


@dataclass(frozen=True)
class Settings:
    model_card_path: str | None = None
    model_registry_dir: str | None = None
    database_url: str | None = None
    db_secret_arn: str | None = None
    db_host: str | None = None
    db_port: int = 5432
    db_name: str | None = None
    images_bucket: str | None = None
    local_lake_dir: str | None = None
    local_url_key: str | None = None
    local_url_base: str = ""
    token_secret_arn: str | None = None
    token_key: str | None = None
    token_key_file: str | None = None
    cors_origin: str = "*"
    ort_threads: int = 1
    ingest_workers: int = 10  # boto3 pools 10 connections by default; the lake widens it
    ingest_decoders: int = 2
    log_level: str = "INFO"
    token_max_lifetime_s: int = 30 * 24 * 3600  # = artlens.auth.tokens.MAX_LIFETIME_S
    renditions_base_url: str | None = None
    artifacts_bucket: str | None = None
    # Lambda's only writable folder is /tmp; the cache's files are checked by SHA-256 on use.
    model_cache_dir: str = "/tmp/artlens-models"  # noqa: S108

    @property
    def is_local(self) -> bool:
        """No AWS resource is named: the local stack (or a test)."""
        return not (self.images_bucket or self.token_secret_arn or self.db_secret_arn)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        needs: Collection[str] = ("model", "database", "lake", "cors"),
    ) -> Settings:
        unknown = set(needs) - PARTS
        if unknown:
            raise ValueError(f"unknown settings parts {sorted(unknown)}")

        get = _reader(environ)

        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        values: dict[str, Any] = {
            "model_card_path": get(n.ENV_MODEL_CARD_PATH),
            "model_registry_dir": get(n.ENV_MODEL_REGISTRY_DIR),
            "database_url": get(n.ENV_DATABASE_URL),
            "db_secret_arn": get(n.ENV_DB_SECRET_ARN),
            "db_host": get(n.ENV_DB_HOST),
            "db_name": get(n.ENV_DB_NAME),
            "images_bucket": get(n.ENV_IMAGES_BUCKET),
            "local_lake_dir": get(n.ENV_LOCAL_LAKE_DIR),
            "local_url_key": get(n.ENV_LOCAL_URL_KEY),
            "local_url_base": get(n.ENV_LOCAL_URL_BASE) or "",
            "token_secret_arn": get(n.ENV_TOKEN_SECRET_ARN),
            "token_key": get(n.ENV_TOKEN_KEY),
            "token_key_file": get(n.ENV_TOKEN_KEY_FILE),
            "renditions_base_url": (get(n.ENV_RENDITIONS_URL) or "").rstrip("/") or None,
            "artifacts_bucket": get(n.ENV_ARTIFACTS_BUCKET),
            "model_cache_dir": get(n.ENV_MODEL_CACHE_DIR) or cls.model_cache_dir,
        }
        values["db_port"] = _int_in_range(get(n.ENV_DB_PORT), n.ENV_DB_PORT, 5432, 1, 65535)
        values["ort_threads"] = _int_in_range(get(n.ENV_ORT_THREADS), n.ENV_ORT_THREADS, 1, 1, 64)
        values["ingest_workers"] = _int_in_range(
            get(n.ENV_INGEST_WORKERS), n.ENV_INGEST_WORKERS, 10, 1, 64
        )
        values["ingest_decoders"] = _int_in_range(
            get(n.ENV_INGEST_DECODERS), n.ENV_INGEST_DECODERS, 2, 1, 16
        )
        values["token_max_lifetime_s"] = _int_in_range(
            get(n.ENV_TOKEN_MAX_LIFETIME_S), n.ENV_TOKEN_MAX_LIFETIME_S, 30 * 24 * 3600, 60,
            30 * 24 * 3600,
        )
        log_level = (get(n.ENV_LOG_LEVEL) or "INFO").upper()
        need(log_level in LOG_LEVELS, f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        values["log_level"] = log_level

        if "model" in needs:
            need(values["model_card_path"] is not None, "MODEL_CARD_PATH is not set")
        if "database" in needs:
            need(
                values["database_url"] is not None
                or (values["db_secret_arn"] and values["db_host"] and values["db_name"]),
                "set DATABASE_URL, or DB_SECRET_ARN with DB_HOST and DB_NAME",
            )
        if "lake" in needs:
            need(
                values["images_bucket"] is not None
                or (values["local_lake_dir"] and values["local_url_key"]),
                "set IMAGES_BUCKET, or LOCAL_LAKE_DIR with LOCAL_URL_KEY",
            )
            need(
                not (values["images_bucket"] and values["local_lake_dir"]),
                "set only one of IMAGES_BUCKET and LOCAL_LAKE_DIR",
            )
        if "token" in needs:
            sources = [values[k] for k in ("token_secret_arn", "token_key", "token_key_file")]
            need(
                sum(v is not None for v in sources) == 1,
                "set exactly one of TOKEN_SECRET_ARN, ARTLENS_TOKEN_KEY, ARTLENS_TOKEN_KEY_FILE",
            )

        draft = cls(**values)
        cors_origin = get(n.ENV_CORS_ORIGIN)
        if cors_origin is None:
            # A wildcard origin is a convenience for the local stack only; a deployment names
            # the page's origin so that other sites cannot script the API with a user's token.
            need(
                draft.is_local or "cors" not in needs,
                "CORS_ORIGIN is required when deployed on AWS",
            )
            cors_origin = "*"
        return cls(**{**values, "cors_origin": cors_origin})


def _reader(environ: Mapping[str, str]) -> Callable[[str], str | None]:
    """`get(name)`: the variable's value, stripped; None when unset or blank."""

    def get(name: str) -> str | None:
        return (environ.get(name) or "").strip() or None

    return get


# Per-source defaults of how long the authorizer caches the API key document.
DEFAULT_SECRET_KEYS_TTL_S = 60.0  # Secrets Manager: one read per container per minute
DEFAULT_FILE_KEYS_TTL_S = 2.0  # a local file is cheap to re-read


@dataclass(frozen=True)
class SigningSettings:
    """Where the API keys of signed requests live: API_KEYS_SECRET_ARN | API_KEYS_FILE
    (default: api_keys.json beside ARTLENS_TOKEN_KEY_FILE, the local stack's state dir);
    API_KEYS_TTL_S (default 60 for the secret, 2 for a file).

    Built on the first signed request, not at cold start, so that a container that only sees
    bearer tokens never needs it and a mistake here denies signed requests only."""

    api_keys_secret_arn: str | None
    api_keys_file: str | None
    api_keys_ttl_s: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SigningSettings:
        get = _reader(environ)
        arn, file = get(n.ENV_API_KEYS_SECRET_ARN), get(n.ENV_API_KEYS_FILE)
        token_key_file = get(n.ENV_TOKEN_KEY_FILE)
        if arn is None and file is None and token_key_file:
            file = str(Path(token_key_file).with_name(n.API_KEYS_FILE_NAME))
        if (arn is None) == (file is None):
            raise ConfigError(
                f"set exactly one of {n.ENV_API_KEYS_SECRET_ARN} and {n.ENV_API_KEYS_FILE}"
            )
        default_ttl = DEFAULT_SECRET_KEYS_TTL_S if arn else DEFAULT_FILE_KEYS_TTL_S
        try:
            ttl = float(get(n.ENV_API_KEYS_TTL_S) or default_ttl)
        except ValueError:
            raise ConfigError(f"{n.ENV_API_KEYS_TTL_S} must be a number of seconds") from None
        if not 0 <= ttl <= 3600:
            raise ConfigError(f"{n.ENV_API_KEYS_TTL_S} must be between 0 and 3600")
        return cls(api_keys_secret_arn=arn, api_keys_file=file, api_keys_ttl_s=ttl)


def _int_in_range(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value
