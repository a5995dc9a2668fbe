"""The backfill map's batch contract (the Distributed Map child, lambdas/batch.py, and its local
run, local_stack/backfill.py): modes, their roots, and the two shapes of items.

Items from the S3 listing (ItemReader listObjectsV2) are {"Key": "..."}, all under the listed
prefix, so a key outside the mode's root is a bad request. Items from an S3 Inventory manifest
(ItemReader InputType MANIFEST) are the CSV rows {"Bucket": ..., "Key": ...}, with BatchInput
{"prefix": ...}: an inventory covers a whole configuration's prefix and is up to a day old, so
rows outside the requested prefix are skipped (counted, never read), the row's bucket must be
the images bucket being served, and its key is URL-decoded (S3 writes CSV inventory keys
URL-encoded). Keys outside incoming/ (backfill) or gallery/ (reindex, renditions) are never
returned, whichever the shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from artlens.errors import BadRequest
from artlens.names import GALLERY_PREFIX, INCOMING_PREFIX

ROOTS = {"backfill": INCOMING_PREFIX, "reindex": GALLERY_PREFIX, "renditions": GALLERY_PREFIX}


def checked_version(value: Any) -> str | None:
    """A batch's model version: a name, or None (the deployed model)."""
    if value is not None and not (isinstance(value, str) and value):
        raise BadRequest('"version" must be a model version name or null')
    return value


@dataclass(frozen=True)
class Batch:
    mode: str
    version: str | None
    keys: list[str]
    outside_prefix: int = 0  # inventory rows skipped: outside the requested prefix


def _prefix(mode: str, value: Any) -> str:
    """The requested prefix: the mode's root when the batch input names none (the listing
    map lists exactly the requested prefix and passes none)."""
    root = ROOTS[mode]
    if value is None:
        return root
    if not isinstance(value, str) or not value.startswith(root):
        raise BadRequest(f'"prefix" must start with {root}; got {value!r:.80}')
    return value


def _inventory_key(item: dict[str, Any], images_bucket: str | None) -> str:
    bucket, key = item.get("Bucket"), item.get("Key")
    if not isinstance(bucket, str) or not isinstance(key, str) or not key:
        raise BadRequest(f"an inventory row needs a Bucket and a Key; got {item!r:.80}")
    # A manifest of another bucket's inventory: its keys mean nothing in ours.
    if images_bucket is not None and bucket != images_bucket:
        raise BadRequest(f"inventory row of bucket {bucket!r:.64}, not {images_bucket!r}")
    return unquote_plus(key)


def parse_items(event: dict[str, Any], images_bucket: str | None = None) -> Batch:
    """The Map batch: listing items must lie under the mode's root (BadRequest otherwise);
    inventory rows outside the requested prefix are skipped. `images_bucket`: the bucket
    inventory rows must name (None locally: the folder lake has no bucket)."""
    batch_input = event.get("BatchInput")
    items = event.get("Items")
    if not isinstance(batch_input, dict) or not isinstance(items, list):
        raise BadRequest('a batch is {"Items": [{"Key": ...}], "BatchInput": {"mode": ...}}')
    mode = batch_input.get("mode")
    if mode not in ROOTS:
        raise BadRequest(f'"mode" must be one of {sorted(ROOTS)}')
    prefix = _prefix(mode, batch_input.get("prefix"))
    keys: list[str] = []
    outside = 0
    for item in items:
        if isinstance(item, dict) and "Bucket" in item:
            key = _inventory_key(item, images_bucket)
            if not key.startswith(prefix):  # prefix starts with the root: never touched
                outside += 1
                continue
        else:
            listed = item.get("Key") if isinstance(item, dict) else None
            if not isinstance(listed, str) or not listed.startswith(ROOTS[mode]):
                raise BadRequest(f"every item needs a Key under {ROOTS[mode]}; got {item!r:.80}")
            key = listed
        if not key.endswith("/"):  # "folder" markers are listed too
            keys.append(key)
    return Batch(mode, checked_version(batch_input.get("version")), keys, outside)
