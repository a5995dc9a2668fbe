"""The AWS-facing adapters against moto (AWS APIs mocked; PostgreSQL, the model and the
library are real): the HMAC key store in Secrets Manager with `python -m client.keys --aws`,
and the S3 lake when a duplicate notification names an object that was already moved.

The buckets are versioned, as the stack creates them (infra/constructs/data_lake.py): a moved
drop leaves a delete marker, and S3 answers a GET of it with 404, never an error that would
retry the message into the dead-letter queue.
"""

from __future__ import annotations

import json

import boto3
import pytest

from artlens.auth.keys import ApiKeySource, SecretsManagerKeys, issue_key, revoke_key
from artlens.errors import NotFound, Unauthorized
from artlens.lake import LocalLake, S3Lake
from tests.conftest import MOTO_REGION
from tests.imagegen import jpeg_bytes

REGION = MOTO_REGION
BUCKET = "artlens-images-test"


@pytest.fixture
def aws_env(moto_aws, monkeypatch):
    monkeypatch.delenv("API_KEYS_SECRET_ARN", raising=False)


@pytest.fixture
def key_secret(aws_env) -> tuple[object, str]:
    """The stack's ApiClientKeys secret as deployed: an empty JSON object."""
    client = boto3.client("secretsmanager", region_name=REGION)
    arn = client.create_secret(Name="ArtLensApiClientKeys", SecretString="{}")["ARN"]
    return client, arn


def stored(client, arn: str) -> dict:
    return json.loads(client.get_secret_value(SecretId=arn)["SecretString"])


# --- API keys in Secrets Manager ------------------------------------------------------------


def test_secrets_manager_key_store_issues_and_revokes_in_the_secret(key_secret):
    client, arn = key_secret
    backend = SecretsManagerKeys(client, arn)
    assert backend.read() == {}
    alice = issue_key(backend, "alice")
    bob = issue_key(backend, "bob")
    document = stored(client, arn)
    assert set(document) == {alice.key_id, bob.key_id}
    assert document[alice.key_id]["secret"] == alice.secret
    assert document[alice.key_id]["name"] == "alice"

    revoked = revoke_key(backend, alice.key_id)
    assert revoked.revoked
    again = backend.read()
    assert not again[alice.key_id].active and again[bob.key_id].active
    assert stored(client, arn)[alice.key_id]["revoked"]  # kept, so the id is never reused
    with pytest.raises(NotFound):
        revoke_key(backend, "ak_0000000000000000")


def test_authorizer_key_source_sees_a_revocation_within_its_ttl(key_secret):
    client, arn = key_secret
    backend = SecretsManagerKeys(client, arn)
    key = issue_key(backend, "carol")
    now = [0.0]
    source = ApiKeySource(backend, ttl_s=60, clock=lambda: now[0])
    assert source.get(key.key_id).active
    revoke_key(backend, key.key_id)
    assert source.get(key.key_id).active  # cached: the stated bound is the TTL
    now[0] = 60.0
    assert not source.get(key.key_id).active
    assert source.get("ak_unknown") is None


def test_unreadable_key_secret_fails_closed(aws_env):
    client = boto3.client("secretsmanager", region_name=REGION)
    missing = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:absent-AbCdEf"
    source = ApiKeySource(SecretsManagerKeys(client, missing), ttl_s=60)
    with pytest.raises(Unauthorized):
        source.get("ak_0123456789abcdef")


def test_client_keys_cli_manages_the_deployed_secret(key_secret, capsys):
    from client import keys as cli

    client, arn = key_secret
    assert cli.main(["--aws", "--secret-arn", arn, "--json", "issue", "--name", "dave"]) == 0
    issued = json.loads(capsys.readouterr().out)
    assert stored(client, arn)[issued["key_id"]]["secret"] == issued["secret"]

    assert cli.main(["--aws", "--secret-arn", arn, "--json", "list"]) == 0
    listed = capsys.readouterr().out
    assert issued["key_id"] in listed and issued["secret"] not in listed  # never re-printed

    assert cli.main(["--aws", "--secret-arn", arn, "revoke", issued["key_id"]]) == 0
    capsys.readouterr()
    assert stored(client, arn)[issued["key_id"]]["revoked"]
    assert cli.main(["--aws", "--secret-arn", arn, "revoke", "ak_ffffffffffffffff"]) == 1
    assert capsys.readouterr().err.strip()
    with pytest.raises(SystemExit):  # --aws needs a secret
        cli.main(["--aws", "list"])


# --- the S3 lake: a duplicate notification after the object moved ----------------------------


@pytest.fixture
def versioned_bucket(aws_env):
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3


def test_a_moved_object_reads_as_not_found(versioned_bucket):
    lake = S3Lake(versioned_bucket, BUCKET)
    lake.put("incoming/a.jpg", jpeg_bytes(1), "image/jpeg")
    lake.copy("incoming/a.jpg", "gallery/a.jpg")
    lake.delete("incoming/a.jpg")  # a delete marker on a versioned bucket
    with pytest.raises(NotFound):
        lake.get("incoming/a.jpg")
    with pytest.raises(NotFound):
        lake.copy("incoming/a.jpg", "gallery/b.jpg")
    assert not lake.exists("incoming/a.jpg")
    assert lake.get("gallery/a.jpg") == jpeg_bytes(1)


@pytest.mark.parametrize("where", ["s3", "local"])
def test_put_if_absent_writes_once_and_never_overwrites(versioned_bucket, tmp_path, where):
    """The kept upload is one conditional write (S3 If-None-Match), not a HEAD then a PUT."""
    lake = S3Lake(versioned_bucket, BUCKET) if where == "s3" else LocalLake(tmp_path, b"k")
    key = "uploads/" + "a" * 64
    assert lake.put_if_absent(key, jpeg_bytes(1), "image/jpeg") is True
    assert lake.put_if_absent(key, jpeg_bytes(2), "image/jpeg") is False
    assert lake.get(key) == jpeg_bytes(1)
    assert lake.list("uploads/") == [key]  # no temporary file left beside it


def test_duplicate_notification_for_a_moved_drop_is_skipped_not_failed(
    versioned_bucket, pg_dsn, tiny_model_card
):
    from artlens.index.embeddings import EmbeddingStore
    from artlens.ingest import Status, ingest_objects
    from artlens.models.classifier import get_classifier
    from artlens.models.versions import ensure_model_version

    store = EmbeddingStore(pg_dsn)
    store.migrate()
    classifier = get_classifier(tiny_model_card)
    ensure_model_version(store, classifier)
    lake = S3Lake(versioned_bucket, BUCKET)
    lake.put("incoming/drop.jpg", jpeg_bytes(7), "image/jpeg")

    first = ingest_objects(["incoming/drop.jpg"], lake, classifier, store)
    assert first.outcomes["incoming/drop.jpg"].status is Status.INDEXED
    gallery = lake.list("gallery/")
    assert len(gallery) == 1 and lake.list("incoming/") == []

    # S3 delivers at least once: the same event again, after the object was moved.
    second = ingest_objects(["incoming/drop.jpg"], lake, classifier, store)
    outcome = second.outcomes["incoming/drop.jpg"]
    assert outcome.status is Status.SKIPPED, outcome  # not FAILED: no retry, no DLQ
    assert lake.list("gallery/") == gallery
    store.close()
