"""Fixtures the integration tests share."""

from __future__ import annotations

import pytest

from lambdas import predict
from tests.integration.test_predict_handler import ORIGIN, URL_KEY


@pytest.fixture
def handler_env(pg_dsn, tiny_model_card, tmp_path, monkeypatch):
    """The predict handler's environment over this test's database and lake (`tmp_path/lake`),
    built afresh before and after the test."""
    for name in ("IMAGES_BUCKET", "DB_SECRET_ARN", "TOKEN_SECRET_ARN", "ORT_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"MODEL_CARD_PATH": str(tiny_model_card), "DATABASE_URL": pg_dsn,
                        "LOCAL_LAKE_DIR": str(tmp_path / "lake"), "LOCAL_URL_KEY": URL_KEY,
                        "CORS_ORIGIN": ORIGIN}.items():
        monkeypatch.setenv(name, value)
    predict.reset()
    yield
    predict.reset()
