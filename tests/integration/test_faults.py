"""Faults: the database vanishing mid-batch, Secrets Manager unreachable, an object deleted
before its fetch, and a poison message through the local DLQ and back with the redrive command.

The database faults use a PostgreSQL server of their own (stopped and restarted here), never
the session server other tests share.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from artlens.auth.signing import sign_request
from artlens.auth.tokens import mint_token
from artlens.index.embeddings import EmbeddingStore
from artlens.ingest import ingest_objects
from artlens.lake import LocalLake
from artlens.models.classifier import get_classifier
from artlens.models.versions import ensure_model_version
from local_stack import events, redrive
from local_stack.events import LambdaContext
from local_stack.watcher import IncomingWatcher
from tests.conftest import create_database, start_pg_server
from tests.imagegen import jpeg_bytes

URL_KEY = "faults-url-key"
CONTEXT = LambdaContext("artlens-faults")


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory):
    """A dedicated embedded PostgreSQL that these tests may stop and start."""
    server = start_pg_server(tmp_path_factory.mktemp("faults_pg"))
    yield server
    server.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


# --------------------------------------------------------------------------- (a)


class LakeThatPullsThePlug(LocalLake):
    """Stops the database right after the N-th gallery write: mid-batch, between the gallery
    copy and the index row of one picture, with earlier pictures of the batch committed."""

    def __init__(self, root, server, after: int):
        super().__init__(root, URL_KEY.encode())
        self.server, self.after, self.gallery_puts = server, after, 0

    def put(self, key, data, content_type="application/octet-stream"):
        super().put(key, data, content_type)
        if key.startswith("gallery/"):
            self.gallery_puts += 1
            if self.gallery_puts == self.after:
                self.server.stop()


def test_database_vanishing_mid_batch_loses_and_doubles_nothing(own_pg, tmp_path,
                                                                tiny_model_card):
    dsn = create_database(own_pg, "mid_batch")
    store = EmbeddingStore(dsn)
    store.migrate()
    classifier = get_classifier(tiny_model_card, 1)
    ensure_model_version(store, classifier)
    lake = LakeThatPullsThePlug(tmp_path / "lake", own_pg, after=4)
    pictures = {f"incoming/p{i:02d}.jpg": jpeg_bytes(700 + i) for i in range(10)}
    pictures["incoming/same as p00.jpg"] = pictures["incoming/p00.jpg"]
    for key, data in pictures.items():
        lake.put(key, data, "image/jpeg")

    # Deliver as SQS would: the failed messages come back; the database returns after the first.
    pending, deliveries = list(pictures), 0
    while pending:
        deliveries += 1
        assert deliveries <= 4, f"still failing after {deliveries - 1} deliveries: {pending}"
        report = ingest_objects(pending, lake, classifier, store, batch_size=6)
        pending = report.failed_keys
        if deliveries == 1:
            assert pending, "the outage did not hit the batch"
            assert all(isinstance(report.outcomes[k].error, Exception) for k in pending)
            own_pg.start()

    assert lake.list("incoming/") == []
    distinct = {hashlib.sha256(d).hexdigest() for d in pictures.values()}
    assert len(distinct) == 10
    assert store.count(classifier.version) == 10
    expected = sorted(f"gallery/{sha}.jpg" for sha in distinct)
    assert store.keys(classifier.version) == expected
    assert lake.list("gallery/") == expected
    store.close()


# --------------------------------------------------------------------------- (b)


@pytest.fixture
def unreachable_secrets(monkeypatch):
    for name in ("ARTLENS_TOKEN_KEY", "ARTLENS_TOKEN_KEY_FILE", "API_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL_SECRETSMANAGER": f"http://127.0.0.1:{closed_port()}",
        "TOKEN_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:token-abc",
        "API_KEYS_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:keys-abc",
    }.items():
        monkeypatch.setenv(name, value)
    from lambdas import authorizer

    authorizer.reset()
    yield authorizer
    authorizer.reset()


def authorizer_event(headers: dict) -> dict:
    return {
        "type": "REQUEST", "httpMethod": "POST", "resource": "/predict", "path": "/predict",
        "methodArn": "arn:aws:execute-api:eu-west-1:123456789012:abc123/prod/POST/predict",
        "headers": headers, "queryStringParameters": {},
        "requestContext": {"requestId": "req-sm", "path": "/prod/predict"},
    }


def test_secrets_manager_unreachable_denies_and_never_errors(unreachable_secrets, monkeypatch,
                                                             pg_dsn, capsys, caplog):
    monkeypatch.setenv("DATABASE_URL", pg_dsn)
    token = mint_token("k" * 64, "dev", 600)
    signed = sign_request("ak_x", "secret", "POST", "/predict", [], b"body", host="api.example")
    for headers in ({"Authorization": f"Bearer {token}"}, signed):
        started = time.monotonic()
        with pytest.raises(Exception) as denied:
            unreachable_secrets.handler(authorizer_event(headers), CONTEXT)
        assert str(denied.value) == "Unauthorized" and type(denied.value) is Exception
        assert time.monotonic() - started < 20
    # Denied because the secrets could not be read (not for some other reason).
    unreadable = [r.name for r in caplog.records if "EndpointConnectionError" in r.getMessage()]
    assert sorted(unreadable) == ["artlens.auth.keys", "artlens.auth.tokens"], caplog.text
    logged = capsys.readouterr().out + caplog.text
    assert token not in logged and signed["Authorization"].split()[1] not in logged


# --------------------------------------------------------------------------- (c), (d)


@pytest.fixture
def embed_handler(monkeypatch, own_pg, tmp_path, tiny_model_card):
    """The real embed handler on a local lake and the dedicated database (cold start here)."""
    dsn = create_database(own_pg, f"embed_{tmp_path.name[-20:].lower().replace('-', '_')}")
    EmbeddingStore(dsn).migrate()
    lake_dir = tmp_path / "lake"
    for name in ("IMAGES_BUCKET", "DB_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "DATABASE_URL": dsn, "MODEL_CARD_PATH": str(tiny_model_card),
        "LOCAL_LAKE_DIR": str(lake_dir), "LOCAL_URL_KEY": URL_KEY,
    }.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("lambdas.embed", None)
    module = importlib.import_module("lambdas.embed")
    yield SimpleNamespace(module=module, lake_dir=lake_dir, dsn=dsn)
    module.deps().serving.store.close()
    sys.modules.pop("lambdas.embed", None)


def sqs_event(*keys: str) -> dict:
    return {"Records": [
        events.sqs_message(f"m{i}", events.s3_object_created(key, 1, "etag"), 1, 0, 0)
        for i, key in enumerate(keys)
    ]}


def test_an_object_deleted_before_its_fetch_completes_with_a_warning(embed_handler, caplog):
    lake = LocalLake(embed_handler.lake_dir, URL_KEY.encode())
    lake.put("incoming/kept.jpg", jpeg_bytes(801))
    lake.put("incoming/vanishing.jpg", jpeg_bytes(802))
    lake.delete("incoming/vanishing.jpg")  # after its event was sent, before the fetch
    with caplog.at_level(logging.WARNING, logger="artlens.ingest"):
        answer = embed_handler.module.handler(
            sqs_event("incoming/kept.jpg", "incoming/vanishing.jpg"), CONTEXT
        )
    assert answer == {"batchItemFailures": []}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("incoming/vanishing.jpg" in r.getMessage() for r in warnings)
    assert len(lake.list("gallery/")) == 1 and lake.list("incoming/") == []


def test_a_poison_message_reaches_the_dlq_and_the_redrive_puts_it_back(embed_handler, own_pg,
                                                                       tmp_path):
    state = tmp_path  # the lake fixture's parent: <state>/lake, <state>/dlq
    paths = redrive.StatePaths(state)
    lake = LocalLake(paths.lake, URL_KEY.encode())
    lake.put("incoming/poison.jpg", jpeg_bytes(811))
    watcher = IncomingWatcher(paths.lake, paths.dlq, embed_handler.module.handler,
                              poll_s=0.05, max_receives=2, backoff_s=0.05)
    own_pg.stop()  # every delivery now fails: the message is poison until the database returns
    try:
        deadline = time.monotonic() + 60
        while watcher.dead_lettered == 0:
            assert time.monotonic() < deadline, "the message never reached the DLQ"
            watcher.poll_once()
            time.sleep(0.05)
    finally:
        own_pg.start()
    (record_path,) = paths.dlq.glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["key"] == "incoming/poison.jpg" and record["receiveCount"] == 2
    # Parked: the watcher does not deliver it again by itself.
    for _ in range(5):
        watcher.poll_once()
    assert watcher.delivered == 0 and lake.list("gallery/") == []

    assert redrive.main(["--state-dir", str(state)]) == 0
    assert list(paths.dlq.glob("*.json")) == []
    deadline = time.monotonic() + 60
    while lake.list("incoming/"):
        assert time.monotonic() < deadline, "the redriven message was not processed"
        watcher.poll_once()
        time.sleep(0.05)
    digest = hashlib.sha256(jpeg_bytes(811)).hexdigest()
    assert lake.list("gallery/") == [f"gallery/{digest}.jpg"]
    assert EmbeddingStore(embed_handler.dsn).keys() == [f"gallery/{digest}.jpg"]


def test_redrive_reports_messages_whose_object_is_gone(tmp_path, capsys):
    paths = redrive.StatePaths(tmp_path)
    paths.create()
    (paths.dlq / "m1.json").write_text(json.dumps({"messageId": "m1", "key": "incoming/gone.jpg"}))
    assert redrive.main(["--state-dir", str(tmp_path)]) == 1
    assert "incoming/gone.jpg" in capsys.readouterr().err
    assert (paths.dlq / "m1.json").exists()
    assert redrive.main(["--state-dir", str(tmp_path), "--drop-missing"]) == 0
    assert not (paths.dlq / "m1.json").exists()
    assert Path(paths.lake).is_dir()
