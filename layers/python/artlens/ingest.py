"""Ingestion and re-indexing: pictures in the lake become rows in the embedding index.

No-loss order for every incoming object: the gallery copy and the index row are written
BEFORE the incoming object is deleted, so a crash at any point leaves either the drop (which a
redelivered message processes again) or a finished row. Every step is idempotent on the SHA-256
of the bytes, so a picture dropped twice or a message delivered twice is indexed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

from artlens.errors import BadRequest, ImageRejected, NotFound
from artlens.image import MAX_BYTES, LoadedImage, load_image, preprocess
from artlens.lake import ObjectLake
from artlens.store import EmbeddingStore, ImageRow

if TYPE_CHECKING:
    from artlens.model import Classifier

logger = logging.getLogger(__name__)

INCOMING_PREFIX = "incoming/"
GALLERY_PREFIX = "gallery/"
REJECTED_PREFIX = "rejected/"
REASON_SUFFIX = ".reason.json"
DEFAULT_INGEST_BATCH = 16
DEFAULT_REINDEX_BATCH = 32
# A reindex rescans the gallery after its pass to pick up pictures ingested meanwhile.
_REINDEX_PASSES = 3

# Detected format -> (gallery extension, content type).
FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("jpg", "image/jpeg"),
    "MPO": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
    "GIF": ("gif", "image/gif"),
    "BMP": ("bmp", "image/bmp"),
    "TIFF": ("tif", "image/tiff"),
}


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

    def _count(self, status: Status) -> int:
        return sum(o.status is status for o in self.outcomes.values())

    @property
    def indexed(self) -> int:
        return self._count(Status.INDEXED)

    @property
    def duplicates(self) -> int:
        return self._count(Status.DUPLICATE)

    @property
    def rejected(self) -> int:
        return self._count(Status.REJECTED)

    @property
    def skipped(self) -> int:
        return self._count(Status.SKIPPED)

    @property
    def failed(self) -> int:
        return self._count(Status.FAILED)

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
class _Picture:
    key: str
    data: bytes
    image: LoadedImage
    sha256: str
    pixels: np.ndarray  # float32 [150, 150, 3]


@dataclass(frozen=True)
class _Embedded:
    label: str
    probability: float
    embedding: np.ndarray


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    if size < 1:
        raise ValueError("batch_size must be >= 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gallery_key_for(sha256: str, image_format: str) -> str:
    extension, _ = FORMATS[image_format]
    return f"{GALLERY_PREFIX}{sha256}.{extension}"


def rejected_key_for(incoming_key: str) -> str:
    name = incoming_key.removeprefix(INCOMING_PREFIX)
    return f"{REJECTED_PREFIX}{name}"


def _embed(classifier: Classifier, pictures: Sequence[_Picture]) -> list[_Embedded]:
    prediction = classifier.predict(np.stack([p.pixels for p in pictures]))
    classes = classifier.classes
    results = []
    for probabilities, embedding in zip(
        prediction.probabilities, prediction.embeddings, strict=True
    ):
        best = int(np.argmax(probabilities))
        results.append(_Embedded(classes[best], float(probabilities[best]), embedding))
    return results


def _row(picture: _Picture, embedded: _Embedded, key: str, model_version: str) -> ImageRow:
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

    for chunk in _batches(unique_keys, batch_size):
        drops: list[_Drop] = []
        for key in chunk:
            outcome_or_drop = _read_incoming(key, lake, max_bytes)
            if isinstance(outcome_or_drop, IngestOutcome):
                report.outcomes[key] = outcome_or_drop
            else:
                drops.append(outcome_or_drop)
        pictures: list[_Picture] = []
        for outcome_or_picture in _skip_indexed(drops, lake, store, version):
            if isinstance(outcome_or_picture, IngestOutcome):
                report.outcomes[outcome_or_picture.key] = outcome_or_picture
            else:
                pictures.append(outcome_or_picture)
        if not pictures:
            continue
        try:
            embedded = _embed(classifier, pictures)
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


def _read_incoming(key: str, lake: ObjectLake, max_bytes: int) -> IngestOutcome | _Drop:
    if not key.startswith(INCOMING_PREFIX) or key.endswith("/"):
        # Never consume (and delete) objects outside incoming/, whatever a notification says.
        logger.warning("ignoring %s: not an object under %s", key, INCOMING_PREFIX)
        return IngestOutcome(key, Status.SKIPPED, reason="not_incoming")
    try:
        try:
            data = lake.get(key, max_bytes=max_bytes)
            image = load_image(data, max_bytes=max_bytes)
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
    drops: Sequence[_Drop], lake: ObjectLake, store: EmbeddingStore, version: str
) -> list[IngestOutcome | _Picture]:
    """Finish the drops whose picture is indexed already; preprocess the others."""
    if not drops:
        return []
    try:
        indexed = store.existing_sha256([d.sha256 for d in drops], version)
    except Exception as exc:
        return [_failed(d.key, d.sha256, exc, "checking") for d in drops]
    results: list[IngestOutcome | _Picture] = []
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
                pixels = preprocess(drop.image.rgb)
                results.append(_Picture(drop.key, drop.data, drop.image, drop.sha256, pixels))
        except Exception as exc:
            results.append(_failed(drop.key, drop.sha256, exc, "reading"))
    return results


def _store_pictures(
    pictures: Sequence[_Picture],
    embedded: Sequence[_Embedded],
    lake: ObjectLake,
    store: EmbeddingStore,
    version: str,
) -> list[IngestOutcome]:
    """Gallery copies, then all rows in one transaction, then the drops are deleted.

    A picture whose gallery write failed gets no row; if the transaction fails, every
    picture that was in it is FAILED and keeps its incoming object for the retry.
    """
    outcomes: list[IngestOutcome] = []
    staged: list[tuple[_Picture, _Embedded, str]] = []
    for picture, result in zip(pictures, embedded, strict=True):
        gallery_key = gallery_key_for(picture.sha256, picture.image.format)
        _, content_type = FORMATS[picture.image.format]
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
        inserted = store.upsert_many([_row(p, r, g, version) for p, r, g in staged])
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


# -- model versions -----------------------------------------------------------------------


@dataclass
class ReindexReport:
    model_version: str
    previous_version: str | None  # the version that was current when the reindex started
    total: int = 0  # gallery keys that lacked a row for model_version
    embedded: int = 0
    duplicates: int = 0  # same picture under another gallery key
    missing: int = 0  # listed, then gone before it was read
    unreadable: int = 0
    activated: bool = False
    unusable_keys: list[str] = field(default_factory=list)


ProgressCallback = Callable[[int, int], None]


def reindex(
    store: EmbeddingStore,
    lake: ObjectLake,
    classifier: Classifier,
    batch_size: int = DEFAULT_REINDEX_BATCH,
    progress: ProgressCallback | None = None,
    *,
    keys: Sequence[str] | None = None,
) -> ReindexReport:
    """Embed the gallery with `classifier`'s model, then switch queries to it.

    Rows for the new version are written beside the old ones and queries keep using the
    current version until every gallery picture has a new row; only then is the new version
    marked ready and activated. Keys that already have a row are skipped, so an interrupted
    reindex resumes where it stopped. `keys` restricts the work to some gallery keys (one
    worker of a fan-out); the switch still happens only when the whole gallery is done.
    `progress(done, total)` is called after each committed batch.
    """
    version = classifier.version
    store.register_version(version)
    report = ReindexReport(model_version=version, previous_version=store.current_version())
    if keys is not None:
        outside = [k for k in keys if not k.startswith(GALLERY_PREFIX)]
        if outside:
            raise BadRequest(f"reindex takes gallery keys only; got {outside[:3]}")
    unusable: set[str] = set()

    for _ in range(_REINDEX_PASSES if keys is None else 1):
        candidates = keys if keys is not None else lake.list(GALLERY_PREFIX)
        indexed = set(store.keys(version))
        pending = [k for k in dict.fromkeys(candidates) if k not in indexed and k not in unusable]
        if not pending:
            break
        report.total += len(pending)
        done = 0
        for chunk in _batches(pending, batch_size):
            pictures = []
            for key in chunk:
                try:
                    data = lake.get(key)
                    image = load_image(data)
                except NotFound:
                    report.missing += 1
                    unusable.add(key)
                    continue
                except ImageRejected as rejection:
                    logger.warning("gallery object %s is unreadable: %s", key, rejection.code)
                    report.unreadable += 1
                    unusable.add(key)
                    continue
                pictures.append(_Picture(key, data, image, sha256_hex(data), preprocess(image.rgb)))
            if pictures:
                rows = [
                    _row(picture, result, picture.key, version)
                    for picture, result in zip(pictures, _embed(classifier, pictures), strict=True)
                ]
                for picture, inserted in zip(pictures, store.upsert_many(rows), strict=True):
                    if inserted:
                        report.embedded += 1
                    else:
                        report.duplicates += 1
                        unusable.add(picture.key)
            done += len(chunk)
            if progress is not None:
                progress(done, len(pending))

    report.unusable_keys = sorted(unusable)
    indexed = set(store.keys(version))
    remaining = [k for k in lake.list(GALLERY_PREFIX) if k not in indexed and k not in unusable]
    if remaining:
        logger.info("reindex to %s incomplete: %d gallery keys left", version, len(remaining))
        return report
    store.mark_ready(version)
    store.activate(version)
    report.activated = True
    logger.info("model version %s is now current (was %s)", version, report.previous_version)
    return report


def rollback(store: EmbeddingStore) -> str:
    """Switch queries back to the previously active ready version; returns it."""
    previous = store.previous_version()
    if previous is None:
        raise NotFound("There is no previous model version to roll back to.")
    store.activate(previous)
    return previous


def ensure_model_version(store: EmbeddingStore, classifier: Classifier) -> str:
    """At startup: make the classifier's version known; returns the version queries use.

    On a fresh install (no current version) the classifier's version becomes current at once:
    an empty gallery is trivially complete. Otherwise it is registered beside the current one;
    new pictures get rows for it, and a reindex switches queries over.
    """
    version = classifier.version
    store.register_version(version)
    current = store.current_version()
    if current is not None:
        return current
    store.mark_ready(version)
    store.activate(version)
    return version
