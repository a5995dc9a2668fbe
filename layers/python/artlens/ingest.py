"""Ingestion: pictures dropped in the lake's incoming/ become gallery objects and index rows.

No-loss order for every incoming object: the gallery copy and the index row are written
BEFORE the incoming object is deleted, so a crash at any point leaves either the drop (which a
redelivered message processes again) or a finished row. Every step is idempotent on the SHA-256
of the bytes, so a picture dropped twice or a message delivered twice is indexed once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from artlens.digests import sha256_hex
from artlens.errors import ImageRejected, NotFound
from artlens.image import MAX_BYTES, LoadedImage, load_image, preprocess
from artlens.index.embeddings import EmbeddingStore, ImageRow
from artlens.lake import ObjectLake
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


@dataclass(frozen=True)
class Picture:
    """A picture ready for the model (ingestion's drops and reindexing's gallery objects)."""

    key: str
    data: bytes
    image: LoadedImage
    sha256: str
    pixels: np.ndarray  # float32 [size, size, 3], the classifier's input size


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


def rejected_key_for(incoming_key: str) -> str:
    name = incoming_key.removeprefix(INCOMING_PREFIX)
    return f"{REJECTED_PREFIX}{name}"


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


def _reject(lake: ObjectLake, key: str, error: ImageRejected) -> IngestOutcome:
    """Park an unusable drop under rejected/ with the reason beside it, then remove it."""
    rejected_key = rejected_key_for(key)
    lake.copy(key, rejected_key)  # server-side: a too-large object is never downloaded
    reason = {"error": error.code, "message": error.message, "source_key": key}
    lake.put(rejected_key + REASON_SUFFIX, json.dumps(reason).encode(), "application/json")
    lake.delete(key)
    logger.info("rejected %s: %s", key, error.code)
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
        for outcome_or_picture in _skip_indexed(
            drops, lake, store, version, classifier.input_size
        ):
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
        try:
            data = lake.get(key, max_bytes=max_bytes)
            image = load_image(data, max_bytes=max_bytes, size=size)
        except ImageRejected as rejection:
            return _reject(lake, key, rejection)
        return _Drop(key, data, image, sha256_hex(data))
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
    drops: Sequence[_Drop], lake: ObjectLake, store: EmbeddingStore, version: str, size: int
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
                lake.delete(drop.key)
                results.append(IngestOutcome(
                    drop.key, Status.DUPLICATE, sha256=drop.sha256,
                    gallery_key=gallery_key_for(drop.sha256, drop.image.format),
                ))
            else:
                pixels = preprocess(drop.image.rgb, size)
                results.append(Picture(drop.key, drop.data, drop.image, drop.sha256, pixels))
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
            lake.delete(picture.key)
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
