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
full-size raster. At most `Concurrency.decoders` decodes run at once and at most two chunks of
pictures are held (the one being embedded and the next one, read meanwhile).

Throughput: on S3 every lake call costs tens of milliseconds of waiting, so `ingest_objects`
runs the reads, decodes, gallery writes and deletes on a bounded thread pool (the boto3 client
is thread-safe) and overlaps them with inference; the database stays on the caller's thread.

Rejected drops are parked as `rejected/<sha256>` (`rejected/<uuid>` when too large to read) with
`rejected/<id>.reason.json` naming the original key: same-name rejects never overwrite each
other, a drop named `<x>.reason.json` cannot overwrite a reason, and a name of any length works.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, ParamSpec, TypeVar

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
# Lake calls in flight per ingest call. S3 answers in tens of ms, so sequential calls, not the
# CPU, bound a function. 10 = boto3's default connection pool (max_pool_connections), so no
# thread waits for or discards a connection, and an SQS batch of 10 drops is read, written and
# deleted in one round each.
DEFAULT_INGEST_WORKERS = 10
# Decodes at once: each may take the decode budget (artlens.image.MAX_DECODE_BYTES).
DEFAULT_DECODE_WORKERS = 2
T = TypeVar("T")
P = ParamSpec("P")


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


@dataclass(frozen=True)
class Concurrency:
    """How much of one ingest call runs at once; the handler builds it from its settings.

    `workers` threads make the lake calls (S3: tens of ms each, spent waiting) and decode;
    `decoders` of them may decode at the same moment, so the decode memory budget
    (artlens.image.MAX_DECODE_BYTES per decode) is held at most `decoders` times. `workers=1`
    runs everything on the caller's thread, in order (the sequential path).
    """

    workers: int = DEFAULT_INGEST_WORKERS
    decoders: int = DEFAULT_DECODE_WORKERS

    def __post_init__(self) -> None:
        if self.workers < 1 or self.decoders < 1:
            raise ValueError("workers and decoders must be >= 1")


SEQUENTIAL = Concurrency(workers=1, decoders=1)


class _Inline(Executor):
    """An executor that runs each task at submit, on the caller's thread."""

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


def _executor(workers: int) -> Executor:
    if workers == 1:
        return _Inline()
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artlens-ingest")


def ingest_objects(
    keys: Iterable[str],
    lake: ObjectLake,
    classifier: Classifier,
    store: EmbeddingStore,
    batch_size: int = DEFAULT_INGEST_BATCH,
    *,
    max_bytes: int = MAX_BYTES,
    concurrency: Concurrency = Concurrency(),  # frozen: one shared default is safe
) -> IngestReport:
    """Index the given `incoming/` objects; one outcome per distinct key, never raises per item.

    Items that failed for a transient reason (database down, S3 error) have status FAILED and
    carry the error, so the caller can retry exactly those.

    A pipeline over chunks of `batch_size` keys. The lake calls and decodes run on a pool of
    `concurrency.workers` threads; the database and the model stay on the caller's thread (one
    connection, one session), in chunk order:

      chunk k+1: read + decode (pool) ............ while chunk k is checked and embedded
      chunk k:   SHA-256 check (1 query) -> gallery writes (pool, during inference) ->
                 rows (1 transaction) -> drops deleted (pool, during chunk k+1)

    At most two chunks of pictures (bytes + a size x size array each) are held at once: the
    deletes that outlive their chunk hold only keys. Pillow and ONNX Runtime release the GIL,
    so decoding the next chunk overlaps inference of this one.
    """
    version = classifier.version
    report = IngestReport(model_version=version)
    unique_keys = list(dict.fromkeys(keys))
    chunks = list(batches(unique_keys, batch_size))
    decoding = threading.BoundedSemaphore(concurrency.decoders)
    size = classifier.input_size

    with _executor(concurrency.workers) as pool:

        def read(chunk: Sequence[str]) -> list[Future[IngestOutcome | Picture]]:
            return [
                pool.submit(_read_incoming, key, lake, max_bytes, size, decoding)
                for key in chunk
            ]

        finishing: list[Future[IngestOutcome]] = []
        reading = read(chunks[0]) if chunks else []
        for index in range(len(chunks)):
            pictures: list[Picture] = []
            for future in reading:
                outcome_or_picture = future.result()  # _read_incoming reports, never raises
                if isinstance(outcome_or_picture, IngestOutcome):
                    report.outcomes[outcome_or_picture.key] = outcome_or_picture
                else:
                    pictures.append(outcome_or_picture)
            reading = read(chunks[index + 1]) if index + 1 < len(chunks) else []
            finishing += _index_chunk(pictures, pool, lake, classifier, store, report)
        for done in finishing:
            outcome = done.result()  # the finishing steps report, never raise
            report.outcomes[outcome.key] = outcome

    # Report in the caller's order.
    report.outcomes = {key: report.outcomes[key] for key in unique_keys}
    return report


def _read_incoming(
    key: str,
    lake: ObjectLake,
    max_bytes: int,
    size: int,
    decoding: AbstractContextManager[object] | None = None,
) -> IngestOutcome | Picture:
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
            with decoding or nullcontext():
                image = load_image(read.data, max_bytes=max_bytes, size=size)
                pixels = preprocess(image.rgb, size)
        except ImageRejected as rejection:
            return _reject(lake, key, read, rejection)
        return Picture(key, read.data, image, sha256_hex(read.data), pixels, read.version)
    except NotFound:
        # Already processed by an earlier delivery, or deleted by the user: nothing to do.
        logger.warning("skipping %s: the object no longer exists", key)
        return IngestOutcome(key, Status.SKIPPED, reason="not_found")
    except Exception as exc:
        logger.warning("reading %s failed: %s", key, type(exc).__name__)
        return IngestOutcome(key, Status.FAILED, error=exc)


def _failed(key: str, sha256: str | None, exc: BaseException, step: str) -> IngestOutcome:
    logger.warning("%s %s failed: %s", step, key, type(exc).__name__)
    return IngestOutcome(key, Status.FAILED, sha256=sha256, error=exc)


def _index_chunk(
    pictures: Sequence[Picture],
    pool: Executor,
    lake: ObjectLake,
    classifier: Classifier,
    store: EmbeddingStore,
    report: IngestReport,
) -> list[Future[IngestOutcome]]:
    """Check, embed and store one chunk; returns its drop deletions, still running.

    No-loss order per picture: gallery copy, then the row (one transaction for the chunk),
    then the drop. A picture whose gallery write failed gets no row; if the transaction
    fails, every picture in it is FAILED and keeps its incoming object for the retry.
    """
    if not pictures:
        return []
    version = report.model_version
    try:
        indexed = store.existing_sha256([p.sha256 for p in pictures], version)
    except Exception as exc:
        for p in pictures:
            report.outcomes[p.key] = _failed(p.key, p.sha256, exc, "checking")
        return []
    # A redelivered message or the same picture dropped again: the row (and, written before
    # it, the gallery copy) exist; only the drop is left to clean up.
    finishing = [
        pool.submit(_remove_drop, lake, p.key, p.version, p.sha256,
                    gallery_key_for(p.sha256, p.image.format), None, False)
        for p in pictures if p.sha256 in indexed
    ]
    new = [p for p in pictures if p.sha256 not in indexed]
    if not new:
        return finishing
    # The gallery copies need only the bytes, so they are written while the model runs.
    writes = [pool.submit(_write_gallery, lake, p) for p in new]
    try:
        embedded = embed_pictures(classifier, new)
    except Exception as exc:
        logger.exception("inference failed for a batch of %d", len(new))
        wait(writes)
        for p in new:
            report.outcomes[p.key] = IngestOutcome(p.key, Status.FAILED, sha256=p.sha256,
                                                   error=exc)
        return finishing
    staged: list[tuple[Picture, Embedded, str]] = []
    for picture, result, write in zip(new, embedded, writes, strict=True):
        error = write.exception()
        if error is not None:
            report.outcomes[picture.key] = _failed(picture.key, picture.sha256, error, "storing")
        else:
            staged.append((picture, result, write.result()))
    if not staged:
        return finishing
    try:
        inserted = store.upsert_many([image_row(p, r, g, version) for p, r, g in staged])
    except Exception as exc:
        for p, _, _ in staged:
            report.outcomes[p.key] = _failed(p.key, p.sha256, exc, "indexing")
        return finishing
    # The rows are committed: the drops are deleted while the next chunk goes on (the tasks
    # hold keys, not bytes).
    return finishing + [
        pool.submit(_remove_drop, lake, p.key, p.version, p.sha256, g, r.label, added)
        for (p, r, g), added in zip(staged, inserted, strict=True)
    ]


def _write_gallery(lake: ObjectLake, picture: Picture) -> str:
    gallery_key = gallery_key_for(picture.sha256, picture.image.format)
    _, content_type = IMAGE_FORMATS[picture.image.format]
    # Put the very bytes that were hashed (not a copy of the incoming key, which could have
    # been overwritten since) so gallery/<sha256> always holds that content.
    lake.put(gallery_key, picture.data, content_type)
    return gallery_key


def _remove_drop(
    lake: ObjectLake,
    key: str,
    version: str | None,
    sha256: str,
    gallery_key: str,
    label: str | None,
    new: bool,
) -> IngestOutcome:
    """Delete the drop that was read (that version only): its picture is indexed."""
    try:
        if version is None:
            lake.delete(key)
        elif not lake.delete_version(key, version):
            logger.info("%s was replaced while it was indexed; the new picture stays", key)
    except Exception as exc:
        # The row is committed: the retry finds the picture indexed and only deletes.
        return _failed(key, sha256, exc, "deleting")
    return IngestOutcome(key, Status.INDEXED if new else Status.DUPLICATE, sha256=sha256,
                         gallery_key=gallery_key, label=label)
