"""Ingestion against S3 (moto; the only mocked part): the drop that is deleted is exactly the
object version that was read, so a picture uploaded under the same name meanwhile survives."""

from __future__ import annotations

import hashlib

import boto3
import pytest

from artlens.ingest import Status, ingest_objects
from artlens.lake import S3Lake
from artlens.models.classifier import get_classifier
from artlens.models.versions import ensure_model_version
from tests.conftest import MOTO_REGION as REGION
from tests.imagegen import jpeg_bytes

BUCKET = "artlens-race-test"


@pytest.fixture
def s3(moto_aws):
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return client


class S3LakeWithARacingUpload(S3Lake):
    """A new upload under the drop's name lands right after the first gallery write."""

    def __init__(self, client, key: str, replacement: bytes):
        super().__init__(client, BUCKET)
        self.key, self.replacement, self.raced = key, replacement, False

    def put(self, key, data, content_type="application/octet-stream"):
        super().put(key, data, content_type)
        if key.startswith("gallery/") and not self.raced:
            self.raced = True
            super().put(self.key, self.replacement, "image/jpeg")


@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "etag-condition"])
def test_a_replaced_s3_drop_survives_and_is_indexed(s3, store, tiny_model_card, versioned):
    if versioned:  # the deployed bucket is versioned; the ETag condition covers one that is not
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    classifier = get_classifier(tiny_model_card)
    ensure_model_version(store, classifier)
    first, second = jpeg_bytes(901), jpeg_bytes(902)
    lake = S3LakeWithARacingUpload(s3, "incoming/same.jpg", second)
    lake.put("incoming/same.jpg", first, "image/jpeg")

    report = ingest_objects(["incoming/same.jpg"], lake, classifier, store)
    assert lake.raced
    assert report.outcomes["incoming/same.jpg"].status is Status.INDEXED
    assert lake.get("incoming/same.jpg") == second  # not deleted unseen

    # The upload's own event: indexed, then its version is deleted too.
    again = ingest_objects(["incoming/same.jpg"], lake, classifier, store)
    assert again.outcomes["incoming/same.jpg"].status is Status.INDEXED
    assert again.outcomes["incoming/same.jpg"].sha256 == hashlib.sha256(second).hexdigest()
    assert lake.list("incoming/") == []
    assert len(store.keys(classifier.version)) == 2
