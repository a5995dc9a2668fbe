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
full-size raster. At most `Concurrency.decoders` decodes run at once and at most three chunks
of pictures are held (the one whose rows are written, the one being embedded and the next one,
read meanwhile).

Throughput: on S3 every lake call costs tens of milliseconds of waiting, so `ingest_objects`
runs the reads, decodes, gallery writes and deletes on a bounded thread pool (the boto3 client
is thread-safe) and overlaps them with inference, which runs on a thread of its own while the
caller's thread writes the previous chunk's rows (the database stays on one connection).

Records (artlens.index.works): a picture `incoming/<name>` may come with a sidecar record
`incoming/<name>.json` (or `incoming/<stem>.json`); a CSV dropped as `incoming/<anything>.csv`
is split, by the same parser the local `make ingest` uses, into one `<file>.json` per row
beside it (a per-picture JSON already there wins field by field), before the pictures of the
same call are read. Each picture's record (at least its original name) is stored in the `works`
table after its row, and its JSON is deleted after the picture. A record arriving after its
picture was indexed is applied to the work last dropped under that name; one whose picture has
not come yet waits in incoming/. Sidecars are never pictures: they are neither embedded nor
rejected. A malformed row or record is logged and reported (`IngestOutcome.problems`); a CSV
with problems is parked under rejected/ with them listed; the pictures are indexed regardless.

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
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numpy as np

from artlens import renditions
from artlens.digests import sha256_hex
from artlens.duplicates import DuplicateThresholds, hamming, perceptual_hash
from artlens.errors import ImageRejected, NotFound
from artlens.image import MAX_BYTES, LoadedImage, load_image, preprocess
from artlens.index.embeddings import EmbeddingStore, ImageRow
from artlens.index.relations import Relation, record_relations, set_phashes
from artlens.index.works import (
    CSV_SUFFIX,
    MAX_SIDECAR_BYTES,
    RECORD_SUFFIX,
    WorkRecord,
    WorkStore,
    WorkUpdate,
    checked_type,
    parse_csv,
    record_from_json,
)
from artlens.lake import ObjectLake, VersionedObject
from artlens.names import (
    GALLERY_PREFIX,
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
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
# On a folder lake (the local stack) a lake call costs CPU, not waiting: threads beyond the
# decoders only contend for the GIL (2 cores: 218 pictures/s with 2 workers, 189 with 10).
LOCAL_LAKE_WORKERS = 2
# `incoming/<stem>.json` may be the record of `<stem>.<any picture suffix>`.
IMAGE_SUFFIXES_FOR_RECORDS = tuple(sorted(IMAGE_SUFFIXES))
T = TypeVar("T")
P = ParamSpec("P")


class Status(StrEnum):
    INDEXED = "indexed"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    FAILED = "failed"
    SIDECAR = "sidecar"  # a record or CSV of records, consumed (never a picture)


@dataclass
class IngestOutcome:
    key: str
    status: Status
    sha256: str | None = None
    gallery_key: str | None = None
    label: str | None = None
    reason: str | None = None  # rejection code, or why the key was skipped
    message: str | None = None  # REJECTED: what was wrong, in words
    original_name: str | None = None  # the name its record gives (make ingest: the path in DIR)
    problems: list[str] = field(default_factory=list)  # malformed sidecar rows / fields
    # INDEXED: near duplicates and relatives found among the works already indexed.
    relations: list[Relation] = field(default_factory=list)
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
    sidecars = property(lambda self: self.count(Status.SIDECAR))

    @property
    def problems(self) -> list[str]:
        """Every sidecar problem of the call (malformed rows and fields), in key order."""
        return [p for o in self.outcomes.values() for p in o.problems]

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
    record: WorkRecord | None = None  # its sidecar's, with at least the original name
    record_key: str | None = None  # the sidecar JSON read, deleted after the picture
    problems: tuple[str, ...] = ()
    phash: int | None = None  # artlens.duplicates.perceptual_hash of `pixels`
    # Renditions without metadata (artlens.renditions), written beside the gallery copy;
    # empty when they could not be made (the picture is indexed all the same).
    renditions: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Embedded:
    label: str
    probability: float
    embedding: np.ndarray
    probabilities: np.ndarray  # every class, in the model's order


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
        results.append(
            Embedded(classes[best], float(probabilities[best]), embedding, probabilities)
        )
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
        probabilities=[float(p) for p in embedded.probabilities],
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
    # The drop's record goes with it, kept in its reason (it would wait in incoming/ forever).
    record_key, record_text = _sidecar_of(lake, key)
    original_name = None
    if record_text is not None:
        reason["record"] = record_text
        record, _ = record_from_json(record_text.encode(), record_key or key)
        original_name = record.original_name if record is not None else None
    lake.put(rejected_key + REASON_SUFFIX, json.dumps(reason).encode(), "application/json")
    if record_key is not None:
        lake.delete(record_key)
    lake.delete_version(key, read.version)
    logger.info("rejected %s as %s: %s", key, rejected_key, error.code)
    return IngestOutcome(key, Status.REJECTED, reason=error.code, message=error.message,
                         original_name=original_name)


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

    A pipeline over chunks of `batch_size` keys, three deep. The lake calls and decodes run on
    a pool of `concurrency.workers` threads, the model on a thread of its own (one session),
    and the database on the caller's thread (one connection), in chunk order:

      chunk k+1: read + decode (pool)
      chunk k:   SHA-256 check (1 query) -> gallery writes (pool) + inference (model thread)
      chunk k-1: rows (1 transaction), records, relations -> drops deleted (pool, later)

    so the database work of one chunk overlaps the inference of the next: with the model on
    the caller's thread the two took turns, and on 2 cores the caller's thread was the
    bottleneck. At most three chunks of pictures (bytes + a size x size array each) are held
    at once: the deletes that outlive their chunk hold only keys. Pillow, ONNX Runtime and
    psycopg2 release the GIL, so the three stages run at once. `workers=1` runs every stage
    on the caller's thread, in order.
    """
    version = classifier.version
    report = IngestReport(model_version=version)
    unique_keys = list(dict.fromkeys(keys))
    csv_keys = [k for k in unique_keys if is_sidecar(k, CSV_SUFFIX)]
    record_keys = [k for k in unique_keys if is_sidecar(k, RECORD_SUFFIX)]
    sidecars = {*csv_keys, *record_keys}
    # CSVs first: their per-picture records are then found by the pictures of this call.
    for key in csv_keys:
        report.outcomes[key] = split_csv(lake, key)
    chunks = list(batches([k for k in unique_keys if k not in sidecars], batch_size))
    decoding = threading.BoundedSemaphore(concurrency.decoders)
    size = classifier.input_size

    model_thread = (_Inline() if concurrency.workers == 1
                    else ThreadPoolExecutor(max_workers=1, thread_name_prefix="artlens-model"))
    with _executor(concurrency.workers) as pool, model_thread:

        def read(chunk: Sequence[str]) -> list[Future[IngestOutcome | Picture]]:
            return [
                pool.submit(_read_incoming, key, lake, max_bytes, size, decoding)
                for key in chunk
            ]

        finishing: list[Future[IngestOutcome]] = []
        embedding: _Embedding | None = None  # the previous chunk, its rows not written yet
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
            known, started = _embed_chunk(pictures, pool, model_thread, lake, classifier, store,
                                          report)
            finishing += known
            if embedding is not None:
                finishing += _store_chunk(embedding, pool, lake, classifier, store, report)
            embedding = started
        if embedding is not None:
            finishing += _store_chunk(embedding, pool, lake, classifier, store, report)
        for done in finishing:
            outcome = done.result()  # the finishing steps report, never raise
            report.outcomes[outcome.key] = outcome

    # Records last: one whose picture was in this call has been consumed with it by now.
    for key in record_keys:
        report.outcomes[key] = apply_late_record(lake, key, store, classifier.classes)
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
                copies = _renditions_of(key, read.data, max_bytes, image)
        except ImageRejected as rejection:
            return _reject(lake, key, read, rejection)
        record, record_key, problems = read_record(lake, key)
        return Picture(key, read.data, image, sha256_hex(read.data), pixels, read.version,
                       record, record_key, tuple(problems), perceptual_hash(pixels), copies)
    except NotFound:
        # Already processed by an earlier delivery, or deleted by the user: nothing to do.
        logger.warning("skipping %s: the object no longer exists", key)
        return IngestOutcome(key, Status.SKIPPED, reason="not_found")
    except Exception as exc:
        logger.warning("reading %s failed: %s", key, type(exc).__name__)
        return IngestOutcome(key, Status.FAILED, error=exc)


def _renditions_of(key: str, data: bytes, max_bytes: int, image: LoadedImage
                   ) -> dict[int, bytes]:
    """The picture's renditions; none when they cannot be made (a decode the model's smaller
    one survived): the picture is indexed anyway and `make renditions` retries later."""
    try:
        return renditions.render(data, max_bytes=max_bytes, decoded=image)
    except Exception as exc:
        logger.warning("no renditions for %s: %s", key, type(exc).__name__)
        return {}


def _failed(key: str, sha256: str | None, exc: BaseException, step: str) -> IngestOutcome:
    logger.warning("%s %s failed: %s", step, key, type(exc).__name__)
    return IngestOutcome(key, Status.FAILED, sha256=sha256, error=exc)


@dataclass(frozen=True)
class _Embedding:
    """A chunk between its check and its rows: the new pictures, their gallery writes and the
    model's answer, all still running."""

    pictures: list[Picture]
    writes: list[Future[str]]
    embedded: Future[list[Embedded]]


def _embed_chunk(
    pictures: Sequence[Picture],
    pool: Executor,
    model_thread: Executor,
    lake: ObjectLake,
    classifier: Classifier,
    store: EmbeddingStore,
    report: IngestReport,
) -> tuple[list[Future[IngestOutcome]], _Embedding | None]:
    """Check one chunk against the index and start what its new pictures need: gallery writes
    (pool) and inference (model thread). Returns the drop deletions of pictures already
    indexed, and the new ones' embedding (None: there are none), for _store_chunk."""
    if not pictures:
        return [], None
    try:
        indexed = store.existing_sha256([p.sha256 for p in pictures], report.model_version)
    except Exception as exc:
        for p in pictures:
            report.outcomes[p.key] = _failed(p.key, p.sha256, exc, "checking")
        return [], None
    # A redelivered message or the same picture dropped again: the row (and, written before
    # it, the gallery copy) exist; its record (a new one updates the work's) and the drop are
    # left.
    known = _store_records(store, [p for p in pictures if p.sha256 in indexed], classifier,
                           report)
    finishing = [
        pool.submit(_remove_drop, lake, p, gallery_key_for(p.sha256, p.image.format), None,
                    False)
        for p in known
    ]
    new = [p for p in pictures if p.sha256 not in indexed]
    if not new:
        return finishing, None
    # The gallery copies need only the bytes, so they are written while the model runs; the
    # same picture twice in a chunk is written once (its objects are the same).
    by_sha256: dict[str, Future[str]] = {}
    for p in new:
        if p.sha256 not in by_sha256:
            by_sha256[p.sha256] = pool.submit(_write_gallery, lake, p)
    writes = [by_sha256[p.sha256] for p in new]
    return finishing, _Embedding(new, writes, model_thread.submit(embed_pictures, classifier, new))


def _store_chunk(
    chunk: _Embedding,
    pool: Executor,
    lake: ObjectLake,
    classifier: Classifier,
    store: EmbeddingStore,
    report: IngestReport,
) -> list[Future[IngestOutcome]]:
    """Write the rows of a chunk whose embedding _embed_chunk started; returns its drop
    deletions, still running.

    No-loss order per picture: gallery copy, then the row (one transaction for the chunk),
    then the drop. A picture whose gallery write failed gets no row; if the transaction
    fails, every picture in it is FAILED and keeps its incoming object for the retry. A
    picture that was also in the previous chunk (its rows not yet written when this chunk was
    checked) finds its row at the insert: DUPLICATE, as when it was found by the check.
    """
    version = report.model_version
    new, writes = chunk.pictures, chunk.writes
    try:
        embedded = chunk.embedded.result()
    except Exception as exc:
        logger.exception("inference failed for a batch of %d", len(new))
        wait(writes)
        for p in new:
            report.outcomes[p.key] = IngestOutcome(p.key, Status.FAILED, sha256=p.sha256,
                                                   error=exc)
        return []
    staged: list[tuple[Picture, Embedded, str]] = []
    for picture, result, write in zip(new, embedded, writes, strict=True):
        error = write.exception()
        if error is not None:
            report.outcomes[picture.key] = _failed(picture.key, picture.sha256, error, "storing")
        else:
            staged.append((picture, result, write.result()))
    if not staged:
        return []
    try:
        inserted = store.upsert_many([image_row(p, r, g, version) for p, r, g in staged])
    except Exception as exc:
        for p, _, _ in staged:
            report.outcomes[p.key] = _failed(p.key, p.sha256, exc, "indexing")
        return []
    # The rows are committed; then the records. A failed record write keeps the drop (and
    # its sidecar): the retry finds the row and writes the record again.
    recorded = {p.key: p for p in _store_records(store, [p for p, _, _ in staged], classifier,
                                                 report)}
    added = [p for (p, _, _), new_row in zip(staged, inserted, strict=True)
             if new_row and p.key in recorded]
    relations = find_relations(store, added, classifier, version)
    # The drops are deleted while the next chunk goes on (the tasks hold keys, not bytes).
    return [
        pool.submit(_remove_drop, lake, recorded[p.key], g, r.label, new_row,
                    relations.get(p.sha256, []))
        for (p, r, g), new_row in zip(staged, inserted, strict=True) if p.key in recorded
    ]


# How many neighbours of a new work are judged as possible duplicates or relatives.
RELATION_CANDIDATES = 5


def find_relations(
    store: EmbeddingStore, pictures: Sequence[Picture], classifier: Classifier, version: str
) -> dict[str, list[Relation]]:
    """Near duplicates and relatives of newly indexed works among the works indexed by the
    version (artlens.duplicates), stored as pairs, and the works' perceptual hashes. Ingest and
    reindexing call it (a new version's embedding finds its own pairs). An annotation: a
    failure is logged and the pictures stay indexed (a later drop of a relative finds the pair
    from its side)."""
    if not pictures:
        return {}
    thresholds = DuplicateThresholds.from_card(_serving_section(classifier))
    found: dict[str, list[Relation]] = {}
    try:
        set_phashes(store.database, {p.sha256: p.phash for p in pictures if p.phash is not None})
        hashes = {p.sha256: p.phash for p in pictures}
        neighbours = store.nearest_of_indexed(
            [p.sha256 for p in pictures], RELATION_CANDIDATES, version
        )
        for sha, rows in neighbours.items():
            for row in rows:
                own = hashes.get(sha)
                distance = (hamming(own, row.phash)
                            if own is not None and row.phash is not None else None)
                kind = thresholds.judge(row.similarity, distance)
                if kind is not None:
                    found.setdefault(sha, []).append(
                        Relation(sha, row.sha256, kind, row.similarity, distance, version)
                    )
        record_relations(store.database, [r for rs in found.values() for r in rs])
    except Exception as exc:
        logger.warning("finding duplicates of %d works failed: %s", len(pictures),
                       type(exc).__name__)
    return found


def _serving_section(classifier: Classifier) -> dict | None:
    # The Classifier protocol carries no card (tests use bare classifiers); an OnnxClassifier
    # has one, whose `serving` section holds the calibrated thresholds.
    raw = getattr(getattr(classifier, "card", None), "raw", None)
    return raw.get("serving") if isinstance(raw, dict) else None


def _write_gallery(lake: ObjectLake, picture: Picture) -> str:
    gallery_key = gallery_key_for(picture.sha256, picture.image.format)
    _, content_type = IMAGE_FORMATS[picture.image.format]
    # Put the very bytes that were hashed (not a copy of the incoming key, which could have
    # been overwritten since) so gallery/<sha256> always holds that content.
    lake.put(gallery_key, picture.data, content_type)
    renditions.write(lake, picture.sha256, picture.renditions)
    return gallery_key


def _remove_drop(
    lake: ObjectLake,
    picture: Picture,
    gallery_key: str,
    label: str | None,
    new: bool,
    relations: Sequence[Relation] = (),
) -> IngestOutcome:
    """Delete the drop that was read (that version only): its picture is indexed and its
    record stored. Then its sidecar JSON (after the picture: a retry of a half-finished
    delete still finds the record and stores it again, never a bare name over it)."""
    key, version, sha256 = picture.key, picture.version, picture.sha256
    try:
        if version is None:
            lake.delete(key)
        elif not lake.delete_version(key, version):
            logger.info("%s was replaced while it was indexed; the new picture stays", key)
        if picture.record_key is not None:
            lake.delete(picture.record_key)
    except Exception as exc:
        # The row is committed: the retry finds the picture indexed and only deletes.
        return _failed(key, sha256, exc, "deleting")
    return IngestOutcome(key, Status.INDEXED if new else Status.DUPLICATE, sha256=sha256,
                         gallery_key=gallery_key, label=label, problems=list(picture.problems),
                         relations=list(relations),
                         original_name=picture.record.original_name if picture.record else None)


# --------------------------------------------------------------------------- records


def is_sidecar(key: str, suffix: str = "") -> bool:
    """A record (`.json`) or a CSV of records under incoming/: never a picture. A drop named
    like the lake's own reasons (`*.reason.json`) is not a record: it is judged as a picture
    (and rejected), as before records existed."""
    lower = key.lower()
    if not key.startswith(INCOMING_PREFIX) or lower.endswith(REASON_SUFFIX):
        return False
    return lower.endswith(suffix) if suffix else lower.endswith((RECORD_SUFFIX, CSV_SUFFIX))


# A record's name must fit where it is stored: a file name (NAME_MAX) on the folder lake, a
# key on S3. A longer one cannot exist, so it is not looked for (the folder lake would answer
# "file name too long", not "not found").
MAX_NAME_BYTES = 255
MAX_KEY_BYTES = 1024


def record_keys_for(picture_key: str) -> list[str]:
    """Where a picture's record may be: `<name>.json`, then `<stem>.json` (never the key
    itself: a drop named `x.json` is not its own record)."""
    folder, _, name = picture_key.rpartition("/")
    names = [name + RECORD_SUFFIX]
    stem = name.rsplit(".", 1)[0]
    if stem and stem != name and not name.lower().endswith(RECORD_SUFFIX):
        names.append(stem + RECORD_SUFFIX)
    return [f"{folder}/{n}" for n in names
            if len(n.encode()) <= MAX_NAME_BYTES
            and len(f"{folder}/{n}".encode()) <= MAX_KEY_BYTES]


def _sidecar(lake: ObjectLake, key: str) -> bytes | None:
    """A record's bytes, None when there is none. Most pictures have none: asking whether it
    exists first keeps the picture's own read the only read (S3: a HEAD instead of a GET)."""
    if not lake.exists(key):
        return None
    try:
        return lake.get(key, max_bytes=MAX_SIDECAR_BYTES)
    except NotFound:
        return None  # taken meanwhile (a concurrent delivery)


def _sidecar_of(lake: ObjectLake, key: str) -> tuple[str | None, str | None]:
    """A drop's sidecar record, as text (None, None: it has none, or one too large to read)."""
    for record_key in record_keys_for(key):
        try:
            data = _sidecar(lake, record_key)
        except ImageRejected:
            continue
        if data is not None:
            return record_key, data.decode("utf-8", errors="replace")
    return None, None


def read_record(lake: ObjectLake, key: str) -> tuple[WorkRecord, str | None, list[str]]:
    """A picture's record from its sidecar JSON (at least its original name: the drop's name),
    the sidecar's key (None: none), and what was wrong with it. A malformed sidecar is
    reported and left in incoming/ (nothing is lost); the picture is indexed by its name."""
    name = key.removeprefix(INCOMING_PREFIX)
    for record_key in record_keys_for(key):
        try:
            data = _sidecar(lake, record_key)
        except ImageRejected:  # over MAX_SIDECAR_BYTES: reported, left in incoming/
            problem = f"{record_key}: larger than {MAX_SIDECAR_BYTES:,} bytes; not read"
            logger.warning("record problem: %s", problem)
            return WorkRecord(original_name=name), None, [problem]
        if data is None:
            continue
        record, problems = record_from_json(data, record_key)
        for problem in problems:
            logger.warning("record problem: %s", problem)
        if record is None:
            return WorkRecord(original_name=name), None, problems
        if record.original_name is None:
            record = replace(record, original_name=name)
        return record, record_key, problems
    return WorkRecord(original_name=name), None, []


def _store_records(
    store: EmbeddingStore, pictures: Sequence[Picture], classifier: Classifier,
    report: IngestReport,
) -> list[Picture]:
    """Write the pictures' records in one transaction; returns the pictures whose record is
    stored (the others are FAILED, their drops kept for the retry)."""
    if not pictures:
        return []
    updates, checked = [], []
    for p in pictures:
        record, known = checked_type(
            p.record or WorkRecord(original_name=p.key.removeprefix(INCOMING_PREFIX)),
            classifier.classes,
        )
        if known is False:
            flagged = (f"{p.key}: catalogued type {record.catalogued_type!r} is not one of the "
                       "model's classes; kept as catalogued, flagged")
            logger.warning("record problem: %s", flagged)
            p = replace(p, problems=(*p.problems, flagged))
        updates.append(WorkUpdate(p.sha256, record, known, p.key))
        checked.append(p)
    try:
        WorkStore(store.database).upsert_many(updates)
    except Exception as exc:
        for p in pictures:
            report.outcomes[p.key] = _failed(p.key, p.sha256, exc, "recording")
        return []
    return checked


def split_csv(lake: ObjectLake, key: str) -> IngestOutcome:
    """`incoming/<folder>/<x>.csv` -> one `incoming/<folder>/<file>.json` record per row (a
    per-picture JSON already there wins field by field). The CSV is then deleted, or parked
    under rejected/ with its problems listed when a row was malformed."""
    folder = key.rpartition("/")[0] + "/"
    try:
        read = lake.get_version(key, max_bytes=MAX_SIDECAR_BYTES)
        if read.data is None:
            problem = f"{key}: {read.size:,} bytes; sidecars are limited to {MAX_SIDECAR_BYTES:,}"
            _park_sidecar(lake, key, read, [problem])
            return IngestOutcome(key, Status.SIDECAR, reason="too_large", problems=[problem])
        rows = parse_csv(read.data, key.removeprefix(INCOMING_PREFIX))
        for name, record in rows.records.items():
            target = folder + name + RECORD_SUFFIX
            if target not in record_keys_for(folder + name):
                rows.problems.append(f"{key}: the name {name!r} is too long for a record")
                continue
            try:
                given, _ = record_from_json(lake.get(target, max_bytes=MAX_SIDECAR_BYTES), target)
            except NotFound:
                given = None
            if given is not None:
                record = given.merged_over(record)
            lake.put(target, json.dumps(record.to_json()).encode(), "application/json")
        for problem in rows.problems:
            logger.warning("record problem: %s", problem)
        if rows.problems:
            _park_sidecar(lake, key, read, rows.problems)
        else:
            lake.delete_version(key, read.version)
    except NotFound:
        return IngestOutcome(key, Status.SKIPPED, reason="not_found")
    except Exception as exc:
        return _failed(key, None, exc, "splitting")
    logger.info("split %s into %d records", key, len(rows.records))
    return IngestOutcome(key, Status.SIDECAR, reason=f"{len(rows.records)} records",
                         problems=rows.problems)


def _park_sidecar(lake: ObjectLake, key: str, read: VersionedObject, problems: list[str]) -> None:
    """Keep a sidecar that had problems under rejected/, with them listed beside it."""
    parked = rejected_key_for(read.data)
    if read.data is not None:
        lake.put(parked, read.data, "text/csv")
    else:
        lake.copy(key, parked)
    reason = {"error": "sidecar_problems", "message": "; ".join(problems)[:4000],
              "problems": problems, "source_key": key,
              "name": key.removeprefix(INCOMING_PREFIX), "size_bytes": read.size}
    lake.put(parked + REASON_SUFFIX, json.dumps(reason).encode(), "application/json")
    lake.delete_version(key, read.version)


def apply_late_record(
    lake: ObjectLake, key: str, store: EmbeddingStore, classes: Sequence[str]
) -> IngestOutcome:
    """A record whose own event came: consumed with its picture already (not_found), waiting
    for its picture (left in incoming/), or for a picture indexed before it came (applied to
    the work last dropped under that name, then deleted)."""
    base = key[: -len(RECORD_SUFFIX)]
    candidates = [base] if "." in base.rpartition("/")[2] else [
        base + suffix for suffix in IMAGE_SUFFIXES_FOR_RECORDS
    ]
    try:
        data = lake.get(key, max_bytes=MAX_SIDECAR_BYTES)  # NotFound: consumed with its picture
        if any(lake.exists(c) for c in candidates):
            return IngestOutcome(key, Status.SKIPPED, reason="record_waits_for_its_picture")
        works = WorkStore(store.database)
        sha256 = works.sha256_of_drop(candidates)
        if sha256 is None:
            return IngestOutcome(key, Status.SKIPPED, reason="record_waits_for_its_picture")
        record, problems = record_from_json(data, key)
        if record is None:
            for problem in problems:
                logger.warning("record problem: %s", problem)
            return IngestOutcome(key, Status.SKIPPED, reason="bad_record", problems=problems)
        record, known = checked_type(record, classes)
        works.upsert_many([WorkUpdate(sha256, record, known, None)])
        lake.delete(key)
    except NotFound:
        return IngestOutcome(key, Status.SKIPPED, reason="not_found")
    except ImageRejected:  # over MAX_SIDECAR_BYTES: reported, left where it is
        problem = f"{key}: larger than {MAX_SIDECAR_BYTES:,} bytes; not read"
        logger.warning("record problem: %s", problem)
        return IngestOutcome(key, Status.SKIPPED, reason="too_large", problems=[problem])
    except Exception as exc:
        return _failed(key, None, exc, "recording")
    return IngestOutcome(key, Status.SIDECAR, sha256=sha256, reason="late_record",
                         problems=problems)
