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
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

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
    log_level: str = "INFO"

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

        def get(name: str) -> str | None:
            value = environ.get(name, "").strip()
            return value or None

        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        values: dict = {
            "model_card_path": get("MODEL_CARD_PATH"),
            "model_registry_dir": get("MODEL_REGISTRY_DIR"),
            "database_url": get("DATABASE_URL"),
            "db_secret_arn": get("DB_SECRET_ARN"),
            "db_host": get("DB_HOST"),
            "db_name": get("DB_NAME"),
            "images_bucket": get("IMAGES_BUCKET"),
            "local_lake_dir": get("LOCAL_LAKE_DIR"),
            "local_url_key": get("LOCAL_URL_KEY"),
            "local_url_base": get("LOCAL_URL_BASE") or "",
            "token_secret_arn": get("TOKEN_SECRET_ARN"),
            "token_key": get("ARTLENS_TOKEN_KEY"),
            "token_key_file": get("ARTLENS_TOKEN_KEY_FILE"),
        }
        values["db_port"] = _int_in_range(get("DB_PORT"), "DB_PORT", 5432, 1, 65535)
        values["ort_threads"] = _int_in_range(get("ORT_THREADS"), "ORT_THREADS", 1, 1, 64)
        log_level = (get("LOG_LEVEL") or "INFO").upper()
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
        cors_origin = get("CORS_ORIGIN")
        if cors_origin is None:
            # A wildcard origin is a convenience for the local stack only; a deployment names
            # the page's origin so that other sites cannot script the API with a user's token.
            need(
                draft.is_local or "cors" not in needs,
                "CORS_ORIGIN is required when deployed on AWS",
            )
            cors_origin = "*"
        return cls(**{**values, "cors_origin": cors_origin})


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
