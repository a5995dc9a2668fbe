"""The embed Lambda handler: SQS batches of S3 notifications, S3 mocked with moto, real PG."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import socket
import sys
from types import SimpleNamespace
from urllib.parse import quote_plus

import boto3
import numpy as np
import pytest
from PIL import Image

from artlens.index.embeddings import EmbeddingStore
from artlens.models.versions import versions_of
from tests.conftest import MOTO_REGION

BUCKET = "artlens-images-test"
CONTEXT = SimpleNamespace(
    function_name="embed", memory_limit_in_mb=1024, aws_request_id="req-1",
    invoked_function_arn="arn:aws:lambda:eu-west-1:123456789012:function:embed",
)


def picture(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def s3_message(message_id: str, *keys: str, event_name: str = "ObjectCreated:Put") -> dict:
    """One SQS record whose body is an S3 notification; S3 URL-encodes keys (space -> '+')."""
    body = {
        "Records": [
            {
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-west-1",
                "eventTime": "2026-01-01T00:00:00.000Z", "eventName": event_name,
                "s3": {
                    "s3SchemaVersion": "1.0", "configurationId": "incoming",
                    "bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"},
                    "object": {"key": quote_plus(key, safe="/"), "size": 1, "sequencer": "0A"},
                },
            }
            for key in keys
        ]
    }
    return sqs_record(message_id, json.dumps(body))


def sqs_record(message_id: str, body: str) -> dict:
    return {
        "messageId": message_id, "receiptHandle": f"rh-{message_id}", "body": body,
        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
        "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:incoming",
        "awsRegion": "eu-west-1",
    }


TEST_EVENT = json.dumps({
    "Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-01-01T00:00:00.000Z",
    "Bucket": BUCKET, "RequestId": "x", "HostId": "y",
})


@pytest.fixture
def aws(moto_aws):
    s3 = boto3.client("s3", region_name=MOTO_REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": MOTO_REGION})
    return s3


def load_handler(monkeypatch, database_url: str, card_path):
    """Import the handler afresh: it reads its settings once, at its first call (cold start)."""
    monkeypatch.setenv("IMAGES_BUCKET", BUCKET)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("MODEL_CARD_PATH", str(card_path))
    monkeypatch.setenv("CORS_ORIGIN", "https://artlens.example")
    monkeypatch.delenv("LOCAL_LAKE_DIR", raising=False)
    sys.modules.pop("lambdas.embed", None)
    return importlib.import_module("lambdas.embed")


def keys(s3, prefix: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_batch_with_odd_keys_poison_and_vanished_objects(
    aws, monkeypatch, pg_dsn, tiny_model_card
):
    EmbeddingStore(pg_dsn).migrate()
    embed = load_handler(monkeypatch, pg_dsn, tiny_model_card)
    good = "incoming/Salle 3/nature morte été + fruits.png"
    twin = "incoming/twin copy.png"
    aws.put_object(Bucket=BUCKET, Key=good, Body=picture(1))
    aws.put_object(Bucket=BUCKET, Key=twin, Body=picture(1))
    aws.put_object(Bucket=BUCKET, Key="incoming/poison.jpg", Body=b"\xff\xd8\xff garbage")
    event = {"Records": [
        s3_message("m1", good),
        s3_message("m2", "incoming/poison.jpg"),
        s3_message("m3", "incoming/deleted before fetch.png"),
        s3_message("m4", twin),
        sqs_record("m5", TEST_EVENT),
        s3_message("m6", good),  # the same notification delivered twice in one batch
    ]}

    assert embed.handler(event, CONTEXT) == {"batchItemFailures": []}

    digest = hashlib.sha256(picture(1)).hexdigest()
    assert keys(aws, "gallery/") == [f"gallery/{digest}.png"]
    assert keys(aws, "incoming/") == []
    parked = "rejected/" + hashlib.sha256(b"\xff\xd8\xff garbage").hexdigest()
    assert keys(aws, "rejected/") == [parked, parked + ".reason.json"]
    reason = json.loads(aws.get_object(Bucket=BUCKET, Key=parked + ".reason.json")["Body"].read())
    assert reason["source_key"] == "incoming/poison.jpg"
    assert reason["error"] in ("corrupt_image", "unsupported_format")
    store = EmbeddingStore(pg_dsn)
    # A fresh install: the deployed model's version became current.
    assert versions_of(store).current() == embed.deps().serving.registry.default_card.version
    assert store.keys() == [f"gallery/{digest}.png"]
    store.close()


def test_database_down_fails_only_the_records_with_work(aws, monkeypatch, tiny_model_card):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    embed = load_handler(
        monkeypatch, f"postgresql://nobody@127.0.0.1:{port}/none", tiny_model_card
    )
    aws.put_object(Bucket=BUCKET, Key="incoming/a.png", Body=picture(2))
    aws.put_object(Bucket=BUCKET, Key="incoming/b.png", Body=picture(3))
    event = {"Records": [
        s3_message("m1", "incoming/a.png"),
        sqs_record("m2", TEST_EVENT),
        s3_message("m3", "incoming/b.png"),
        sqs_record("m4", "this is not an S3 notification"),
    ]}

    response = embed.handler(event, CONTEXT)

    failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
    assert failed == {"m1", "m3", "m4"}
    assert keys(aws, "incoming/") == ["incoming/a.png", "incoming/b.png"]  # nothing lost
    assert keys(aws, "gallery/") == []


def test_s3_lake(aws):
    from artlens.errors import ImageRejected, NotFound
    from artlens.lake import S3Lake, lake_from_settings
    from artlens.settings import Settings

    lake = lake_from_settings(Settings(images_bucket=BUCKET))  # the handlers' client (SigV4)
    assert isinstance(lake, S3Lake)
    with pytest.raises(NotFound):
        lake.get("incoming/none.png")
    with pytest.raises(NotFound):
        lake.copy("incoming/none.png", "rejected/none.png")
    assert not lake.exists("incoming/none.png")
    lake.put("incoming/é b.png", b"12345", "image/png")
    assert lake.exists("incoming/é b.png")
    assert aws.head_object(Bucket=BUCKET, Key="incoming/é b.png")["ContentType"] == "image/png"
    with pytest.raises(ImageRejected):
        lake.get("incoming/é b.png", max_bytes=4)
    lake.copy("incoming/é b.png", "gallery/x.png")
    assert lake.get("gallery/x.png") == b"12345"
    assert lake.list("gallery/") == ["gallery/x.png"]
    url = lake.url_for("gallery/x.png")
    assert url.startswith("https://") and "X-Amz-Expires=900" in url
    lake.delete("gallery/x.png")
    assert lake.list("gallery/") == []


def test_an_oversized_drop_is_rejected_without_download(aws, pg_dsn, tiny_model_card):
    from artlens.ingest import ingest_objects
    from artlens.lake import S3Lake
    from artlens.models.classifier import get_classifier
    from artlens.models.versions import ensure_model_version

    store = EmbeddingStore(pg_dsn)
    store.migrate()
    classifier = get_classifier(tiny_model_card)
    ensure_model_version(store, classifier)
    lake = S3Lake(aws, BUCKET)
    lake.put("incoming/huge.png", picture(5))
    report = ingest_objects(["incoming/huge.png"], lake, classifier, store, max_bytes=100)
    assert report.rejected == 1
    parked, reason_key = keys(aws, "rejected/")  # a fresh id: the bytes were never read
    assert reason_key == parked + ".reason.json"
    reason = json.loads(lake.get(reason_key))
    assert (reason["error"], reason["source_key"]) == ("too_large", "incoming/huge.png")
    assert lake.get(parked) == picture(5)
    assert keys(aws, "incoming/") == []
    store.close()
