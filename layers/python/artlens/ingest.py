"""Ingestion: pictures dropped in the lake's incoming/ become gallery objects and index rows.

No-loss order for every incoming object: the gallery copy and the index row are written
BEFORE the incoming object is deleted, so a crash at any point leaves either the drop (which a
redelivered message processes again) or a finished row. Every step is idempotent on the SHA-256
of the bytes, so a picture dropped twice or a message delivered twice is indexed once.

Delete exactly what was read: the drop's version (artlens.lake.VersionedObject) travels with it,
and only that version is deleted, so a picture written under the same name while the batch ran
survives and is indexed by its own event.

Memory: each drop is decoded under the intake's memory budget (artlens.image) and shrunk to the
model's input right away; a batch keeps the bytes and a (size x size) array per picture, never a
full-size raster.

Rejected drops are parked as `rejected/<sha256>` (`rejected/<uuid>` when too large to read) with
`rejected/<id>.reason.json` naming the original key: same-name rejects never overwrite each
other, a drop named `<x>.reason.json` cannot overwrite a reason, and a name of any length works.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from artlens.digests import sha256_hex
from artlens.errors import ImageRejected, NotFound
from artlens.image import MAX_BYTES, LoadedImage, load_image, preprocess
from artlens.index.embeddings import EmbeddingStore, ImageRow
from artlens.lake import ObjectLake, VersionedObject
from artlens.names import (
    GALLERY_PREFIX,
    IMAGE_FORMATS,
    INCOMING_PREFIX,
    REASON_SUFFIX,
    REJECTED_PREFIX,
)

if TYPE_CHECKING:
    from artlens.models.classifier import Classifier

logger = logging.getLogger(__name__)

DEFAULT_INGEST_BATCH = 16
DEFAULT_REINDEX_BATCH = 32
T = TypeVar("T")


class Status(StrEnum):
    INDEXED = "indexed"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class IngestOutcome:
    key: str
    status: Status
    sha256: str | None = None
    gallery_key: str | None = None
    label: str | None = None
    reason: str | None = None  # rejection code, or why the key was skipped
    error: BaseException | None = field(default=None, repr=False)  # FAILED only: retry me


@dataclass
class IngestReport:
    model_version: str
    outcomes: dict[str, IngestOutcome] = field(default_factory=dict)

    def count(self, status: Status) -> int:
        return sum(o.status is status for o in self.outcomes.values())

    indexed = property(lambda self: self.count(Status.INDEXED))
    duplicates = property(lambda self: self.count(Status.DUPLICATE))
    rejected = property(lambda self: self.count(Status.REJECTED))
    skipped = property(lambda self: self.count(Status.SKIPPED))
    failed = property(lambda self: self.count(Status.FAILED))

    @property
    def failed_keys(self) -> list[str]:
        return [k for k, o in self.outcomes.items() if o.status is Status.FAILED]


@dataclass(frozen=True)
class _Drop:
    """An incoming object read, decoded and hashed; not yet checked against the index."""

    key: str
    data: bytes
    image: LoadedImage
    sha256: str
    version: str
    pixels: np.ndarray  # float32 [size, size, 3]: shrunk right after decoding


@dataclass(frozen=True)
class Picture:
    """A picture ready for the model (ingestion's drops and reindexing's gallery objects)."""

    key: str
    data: bytes
    image: LoadedImage
    sha256: str
    pixels: np.ndarray  # float32 [size, size, 3], the classifier's input size
    version: str | None = None  # the lake version read (ingestion deletes exactly that one)


@dataclass(frozen=True)
class Embedded:
    label: str
    probability: float
    embedding: np.ndarray


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    if size < 1:
        raise ValueError("batch_size must be >= 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def gallery_key_for(sha256: str, image_format: str) -> str:
    extension, _ = IMAGE_FORMATS[image_format]
    return f"{GALLERY_PREFIX}{sha256}.{extension}"


def rejected_key_for(data: bytes | None) -> str:
    """`rejected/<sha256>` of the bytes, or `rejected/<uuid>` when they were never read."""
    return f"{REJECTED_PREFIX}{sha256_hex(data) if data is not None else uuid.uuid4().hex}"


def embed_pictures(classifier: Classifier, pictures: Sequence[Picture]) -> list[Embedded]:
    """One batched inference; each picture's best label, its probability and its embedding."""
    prediction = classifier.predict(np.stack([p.pixels for p in pictures]))
    classes = classifier.classes
    results = []
    for probabilities, embedding in zip(
        prediction.probabilities, prediction.embeddings, strict=True
    ):
        best = int(np.argmax(probabilities))
        results.append(Embedded(classes[best], float(probabilities[best]), embedding))
    return results


def image_row(picture: Picture, embedded: Embedded, key: str, model_version: str) -> ImageRow:
    return ImageRow(
        key=key,
        sha256=picture.sha256,
        label=embedded.label,
        probability=embedded.probability,
        embedding=embedded.embedding,
        model_version=model_version,
        width=picture.image.width,
        height=picture.image.height,
        size_bytes=len(picture.data),
    )


def _reject(
    lake: ObjectLake, key: str, read: VersionedObject, error: ImageRejected
) -> IngestOutcome:
    """Park an unusable drop under rejected/ with the reason beside it, then remove it."""
    rejected_key = rejected_key_for(read.data)
    if read.data is not None:
        lake.put(rejected_key, read.data)  # the very bytes that were judged
    else:
        lake.copy(key, rejected_key)  # server-side: a too-large object is never downloaded
    reason = {
        "error": error.code, "message": error.message, "source_key": key,
        "name": key.removeprefix(INCOMING_PREFIX), "size_bytes": read.size,
        "sha256": sha256_hex(read.data) if read.data is not None else None,
    }
    lake.put(rejected_key + REASON_SUFFIX, json.dumps(reason).encode(), "application/json")
    lake.delete_version(key, read.version)
    logger.info("rejected %s as %s: %s", key, rejected_key, error.code)
    return IngestOutcome(key, Status.REJECTED, reason=error.code)


def ingest_objects(
    keys: Iterable[str],
    lake: ObjectLake,
    classifier: Classifier,
    store: EmbeddingStore,
    batch_size: int = DEFAULT_INGEST_BATCH,
    *,
    max_bytes: int = MAX_BYTES,
) -> IngestReport:
    """Index the given `incoming/` objects; one outcome per distinct key, never raises per item.

    Items that failed for a transient reason (database down, S3 error) have status FAILED and
    carry the error, so the caller can retry exactly those.

    The database is asked twice per chunk of `batch_size` keys, not twice per picture: one
    query for the pictures already indexed and one transaction inserting the new rows.
    """
    version = classifier.version
    report = IngestReport(model_version=version)
    unique_keys = list(dict.fromkeys(keys))

    for chunk in batches(unique_keys, batch_size):
        drops: list[_Drop] = []
        for key in chunk:
            outcome_or_drop = _read_incoming(key, lake, max_bytes, classifier.input_size)
            if isinstance(outcome_or_drop, IngestOutcome):
                report.outcomes[key] = outcome_or_drop
            else:
                drops.append(outcome_or_drop)
        pictures: list[Picture] = []
        for outcome_or_picture in _skip_indexed(drops, lake, store, version):
            if isinstance(outcome_or_picture, IngestOutcome):
                report.outcomes[outcome_or_picture.key] = outcome_or_picture
            else:
                pictures.append(outcome_or_picture)
        if not pictures:
            continue
        try:
            embedded = embed_pictures(classifier, pictures)
        except Exception as exc:
            logger.exception("inference failed for a batch of %d", len(pictures))
            for picture in pictures:
                report.outcomes[picture.key] = IngestOutcome(
                    picture.key, Status.FAILED, sha256=picture.sha256, error=exc
                )
            continue
        for outcome in _store_pictures(pictures, embedded, lake, store, version):
            report.outcomes[outcome.key] = outcome

    # Report in the caller's order.
    report.outcomes = {key: report.outcomes[key] for key in unique_keys}
    return report


def _read_incoming(
    key: str, lake: ObjectLake, max_bytes: int, size: int
) -> IngestOutcome | _Drop:
    if not key.startswith(INCOMING_PREFIX) or key.endswith("/"):
        # Never consume (and delete) objects outside incoming/, whatever a notification says.
        logger.warning("ignoring %s: not an object under %s", key, INCOMING_PREFIX)
        return IngestOutcome(key, Status.SKIPPED, reason="not_incoming")
    try:
        read = lake.get_version(key, max_bytes=max_bytes)
        try:
            if read.data is None:
                raise ImageRejected(
                    "too_large",
                    f"The object is {read.size:,} bytes; the limit is {max_bytes:,} bytes.",
                )
            image = load_image(read.data, max_bytes=max_bytes, size=size)
            pixels = preprocess(image.rgb, size)
        except ImageRejected as rejection:
            return _reject(lake, key, read, rejection)
        return _Drop(key, read.data, image, sha256_hex(read.data), read.version, pixels)
    except NotFound:
        # Already processed by an earlier delivery, or deleted by the user: nothing to do.
        logger.warning("skipping %s: the object no longer exists", key)
        return IngestOutcome(key, Status.SKIPPED, reason="not_found")
    except Exception as exc:
        logger.warning("reading %s failed: %s", key, type(exc).__name__)
        return IngestOutcome(key, Status.FAILED, error=exc)


def _failed(key: str, sha256: str | None, exc: Exception, step: str) -> IngestOutcome:
    logger.warning("%s %s failed: %s", step, key, type(exc).__name__)
    return IngestOutcome(key, Status.FAILED, sha256=sha256, error=exc)


def _skip_indexed(
    drops: Sequence[_Drop], lake: ObjectLake, store: EmbeddingStore, version: str
) -> list[IngestOutcome | Picture]:
    """Finish the drops whose picture is indexed already; preprocess the others."""
    if not drops:
        return []
    try:
        indexed = store.existing_sha256([d.sha256 for d in drops], version)
    except Exception as exc:
        return [_failed(d.key, d.sha256, exc, "checking") for d in drops]
    results: list[IngestOutcome | Picture] = []
    for drop in drops:
        try:
            if drop.sha256 in indexed:
                # A redelivered message or the same picture dropped again: the row (and,
                # written before it, the gallery copy) exist; only the drop is left to clean up.
                lake.delete_version(drop.key, drop.version)
                results.append(IngestOutcome(
                    drop.key, Status.DUPLICATE, sha256=drop.sha256,
                    gallery_key=gallery_key_for(drop.sha256, drop.image.format),
                ))
            else:
                results.append(Picture(drop.key, drop.data, drop.image, drop.sha256,
                                       drop.pixels, drop.version))
        except Exception as exc:
            results.append(_failed(drop.key, drop.sha256, exc, "reading"))
    return results


def _store_pictures(
    pictures: Sequence[Picture],
    embedded: Sequence[Embedded],
    lake: ObjectLake,
    store: EmbeddingStore,
    version: str,
) -> list[IngestOutcome]:
    """Gallery copies, then all rows in one transaction, then the drops are deleted.

    A picture whose gallery write failed gets no row; if the transaction fails, every
    picture that was in it is FAILED and keeps its incoming object for the retry.
    """
    outcomes: list[IngestOutcome] = []
    staged: list[tuple[Picture, Embedded, str]] = []
    for picture, result in zip(pictures, embedded, strict=True):
        gallery_key = gallery_key_for(picture.sha256, picture.image.format)
        _, content_type = IMAGE_FORMATS[picture.image.format]
        try:
            # Put the very bytes that were hashed (not a copy of the incoming key, which could
            # have been overwritten since) so gallery/<sha256> always holds that content.
            lake.put(gallery_key, picture.data, content_type)
        except Exception as exc:
            outcomes.append(_failed(picture.key, picture.sha256, exc, "storing"))
            continue
        staged.append((picture, result, gallery_key))
    if not staged:
        return outcomes
    try:
        inserted = store.upsert_many([image_row(p, r, g, version) for p, r, g in staged])
    except Exception as exc:
        return outcomes + [_failed(p.key, p.sha256, exc, "indexing") for p, _, _ in staged]
    for (picture, result, gallery_key), new in zip(staged, inserted, strict=True):
        try:
            if picture.version is None:
                lake.delete(picture.key)
            elif not lake.delete_version(picture.key, picture.version):
                logger.info("%s was replaced while it was indexed; the new picture stays",
                            picture.key)
        except Exception as exc:
            # The row is committed: the retry finds the picture indexed and only deletes.
            outcomes.append(_failed(picture.key, picture.sha256, exc, "deleting"))
            continue
        outcomes.append(IngestOutcome(
            picture.key,
            Status.INDEXED if new else Status.DUPLICATE,
            sha256=picture.sha256,
            gallery_key=gallery_key,
            label=result.label,
        ))
    return outcomes
