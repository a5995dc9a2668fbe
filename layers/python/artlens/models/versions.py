"""Model versions: which model's embeddings queries use, and every way that changes.

The state of each version is a row of `model_versions` in the index database ('building' while
its embeddings are written, 'ready' once the whole gallery has them; exactly one is current),
with the dimension of its embeddings; registering a version creates its own HNSW index, so two
models of different embedding sizes are indexed side by side (artlens.index.embeddings).
The lifecycle, all here:
  ensure_model_version   at startup: make the deployed model's version known (current when new)
  reindex                embed the gallery with another model, then switch to it
  reembed_keys           one batch of a fanned-out reindex (Step Functions, local backfill)
  activate_reindexed     the fan-out's last step: catch up, then switch to the version
  rollback / switch_back make the previously active version current again
  CurrentModel           the classifier predict and embed serve: the current version's model
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from artlens.digests import sha256_hex
from artlens.duplicates import perceptual_hash
from artlens.errors import BadRequest, ImageRejected, NotFound, Unavailable, VersionNotReady
from artlens.image import load_image, preprocess
from artlens.index.database import Cursor, Database, fetch_value
from artlens.index.embeddings import (
    EMBEDDING_DIM,
    EmbeddingStore,
    checked_dimension,
    version_index_sql,
)
from artlens.index.migrations import MIGRATION_LOCK_ID, schema_lock
from artlens.ingest import (
    DEFAULT_REINDEX_BATCH,
    Picture,
    batches,
    embed_pictures,
    find_relations,
    image_row,
)
from artlens.lake import ObjectLake
from artlens.models.card import ModelIntegrityError
from artlens.models.classifier import Classifier
from artlens.models.registry import ModelRegistry, ModelSourceUnavailable
from artlens.names import GALLERY_PREFIX

logger = logging.getLogger(__name__)

# Activations are serialised by their own transaction lock, next to the schema's.
ACTIVATION_LOCK_ID = MIGRATION_LOCK_ID + 1
# A reindex rescans the gallery after its pass to pick up pictures ingested meanwhile.
REINDEX_PASSES = 3
# How stale predict's idea of the current model version may be: one indexed lookup per
# container per interval, and a switch reaches every warm container within it.
CURRENT_VERSION_TTL_S = 5.0


@dataclass(frozen=True)
class ModelVersion:
    version: str
    state: str
    is_current: bool


class VersionStates:
    """The `model_versions` table: register ('building'), mark_ready, activate (current)."""

    def __init__(self, database: Database):
        self.database = database

    def register(self, version: str, embedding_dim: int = EMBEDDING_DIM) -> bool:
        """Record a model version as 'building', with the dimension of its embeddings, and
        create its HNSW index; True if new, False if it was known (with that dimension)."""
        embedding_dim = checked_dimension(embedding_dim)

        def work(cur: Cursor) -> bool:
            schema_lock(cur)  # DDL below; serialised with migrations and index rebuilds
            cur.execute(
                "INSERT INTO model_versions (version, state, embedding_dim)"
                " VALUES (%s, 'building', %s)"
                " ON CONFLICT (version) DO NOTHING RETURNING version",
                (version, int(embedding_dim)),
            )
            if cur.fetchone() is None:
                cur.execute(
                    "SELECT embedding_dim FROM model_versions WHERE version = %s", (version,)
                )
                known = int(fetch_value(cur))
                if known != int(embedding_dim):
                    raise ModelIntegrityError(
                        f"model version {version!r} is registered with {known}-d embeddings, "
                        f"not {embedding_dim}; give the new model a new version"
                    )
                return False
            cur.execute(version_index_sql(version, embedding_dim))
            return True

        return self.database.transaction(work)

    def mark_ready(self, version: str) -> None:
        def work(cur: Cursor) -> None:
            cur.execute(
                "UPDATE model_versions SET state = 'ready' WHERE version = %s", (version,)
            )
            if cur.rowcount == 0:
                raise NotFound(f"Model version {version!r} is not registered.")

        self.database.transaction(work)

    def activate(self, version: str) -> None:
        """Make `version` the one queries use. Refuses a version that is not 'ready'."""

        def work(cur: Cursor) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ACTIVATION_LOCK_ID,))
            cur.execute("SELECT state FROM model_versions WHERE version = %s", (version,))
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"Model version {version!r} is not registered.")
            if row[0] != "ready":
                raise VersionNotReady(
                    f"Model version {version!r} is {row[0]!r}; only a ready version can be"
                    " activated."
                )
            cur.execute(
                "UPDATE model_versions SET is_current = false"
                " WHERE is_current AND version <> %s",
                (version,),
            )
            cur.execute(
                "UPDATE model_versions SET is_current = true, activated_at = now()"
                " WHERE version = %s AND NOT is_current",
                (version,),
            )

        self.database.transaction(work)

    def current(self) -> str | None:
        def work(cur: Cursor) -> str | None:
            cur.execute("SELECT version FROM model_versions WHERE is_current")
            row = cur.fetchone()
            return row[0] if row else None

        return self.database.transaction(work)

    def previous(self) -> str | None:
        """The most recently active ready version other than the current one (rollback)."""

        def work(cur: Cursor) -> str | None:
            cur.execute(
                "SELECT version FROM model_versions"
                " WHERE state = 'ready' AND NOT is_current AND activated_at IS NOT NULL"
                " ORDER BY activated_at DESC LIMIT 1"
            )
            row = cur.fetchone()
            return row[0] if row else None

        return self.database.transaction(work)

    def versions(self) -> list[ModelVersion]:
        def work(cur: Cursor) -> list[ModelVersion]:
            cur.execute(
                "SELECT version, state, is_current FROM model_versions ORDER BY created_at"
            )
            return [ModelVersion(*row) for row in cur.fetchall()]

        return self.database.transaction(work)


def versions_of(store: EmbeddingStore) -> VersionStates:
    """The version states kept in the same database as the store's rows."""
    return VersionStates(store.database)


class ModelIdentity(Protocol):
    """What registering a version needs: a ModelCard has it, and so has every Classifier."""

    @property
    def version(self) -> str: ...

    @property
    def embedding_size(self) -> int: ...


def ensure_model_version(store: EmbeddingStore, model: ModelIdentity) -> str:
    """At startup: make the deployed model's version known; returns the version queries use.

    On a fresh install (no current version) the classifier's version becomes current at once:
    an empty gallery is trivially complete. Otherwise it is registered beside the current one;
    new pictures get rows for it, and a reindex switches queries over.
    """
    if isinstance(model, str):  # the version alone cannot say how wide its embeddings are
        raise TypeError("ensure_model_version takes the model (a ModelCard or a Classifier), "
                        "not its version string")
    version = model.version
    states = versions_of(store)
    states.register(version, model.embedding_size)
    current = states.current()
    if current is not None:
        return current
    states.mark_ready(version)
    states.activate(version)
    return version


def rollback(store: EmbeddingStore) -> str:
    """Switch queries back to the previously active ready version; returns it."""
    states = versions_of(store)
    previous = states.previous()
    if previous is None:
        raise NotFound("There is no previous model version to roll back to.")
    states.activate(previous)
    return previous


def switch_back(store: EmbeddingStore, registry: ModelRegistry) -> tuple[str | None, str]:
    """Roll the index back to the previously active version; returns (old, new) versions.

    Refuses when the registry lacks that version's model: predict could not serve it and would
    fall back to the default model instead of really switching back.
    """
    states = versions_of(store)
    current = states.current()
    previous = states.previous()
    if previous is not None:
        registry.require(previous)
    return current, rollback(store)


@dataclass
class ReindexReport:
    model_version: str
    previous_version: str | None  # the version that was current when the reindex started
    total: int = 0  # gallery keys that lacked a row for model_version
    embedded: int = 0
    duplicates: int = 0  # same picture under another gallery key
    missing: int = 0  # listed, then gone before it was read
    unreadable: int = 0
    already: int = 0  # had a row for the version before (reembed_keys: a retried batch)
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
    states = versions_of(store)
    states.register(version, classifier.embedding_size)
    report = ReindexReport(model_version=version, previous_version=states.current())
    if keys is not None:
        _check_gallery_keys(keys)
    unusable: set[str] = set()

    for _ in range(REINDEX_PASSES if keys is None else 1):
        candidates = keys if keys is not None else lake.list(GALLERY_PREFIX)
        indexed = set(store.keys(version))
        pending = [k for k in dict.fromkeys(candidates) if k not in indexed and k not in unusable]
        if not pending:
            break
        report.total += len(pending)
        _embed_gallery_keys(store, lake, classifier, pending, batch_size, report, unusable,
                            progress)

    report.unusable_keys = sorted(unusable)
    indexed = set(store.keys(version))
    remaining = [k for k in lake.list(GALLERY_PREFIX) if k not in indexed and k not in unusable]
    if remaining:
        logger.info("reindex to %s incomplete: %d gallery keys left", version, len(remaining))
        return report
    states.mark_ready(version)
    states.activate(version)
    report.activated = True
    logger.info("model version %s is now current (was %s)", version, report.previous_version)
    return report


def _check_gallery_keys(keys: Sequence[str]) -> None:
    outside = [k for k in keys if not k.startswith(GALLERY_PREFIX)]
    if outside:
        raise BadRequest(f"reindex takes gallery keys only; got {outside[:3]}")


def _embed_gallery_keys(
    store: EmbeddingStore,
    lake: ObjectLake,
    classifier: Classifier,
    pending: Sequence[str],
    batch_size: int,
    report: ReindexReport,
    unusable: set[str],
    progress: ProgressCallback | None,
    *,
    skip_existing: bool = False,
) -> None:
    """Embed `pending` gallery keys in chunks, counting into `report`; keys that cannot get a
    row (gone, unreadable, a duplicate picture) are added to `unusable`. `skip_existing`: a
    picture that already has a row for the version is neither embedded nor written again
    (one SHA-256 query per chunk), so a retried batch re-does only what is missing."""
    version = classifier.version
    done = 0
    for chunk in batches(pending, batch_size):
        pictures = []
        for key in chunk:
            try:
                data = lake.get(key)
                image = load_image(data, size=classifier.input_size)
            except NotFound:
                report.missing += 1
                unusable.add(key)
                continue
            except ImageRejected as rejection:
                logger.warning("gallery object %s is unreadable: %s", key, rejection.code)
                report.unreadable += 1
                unusable.add(key)
                continue
            pixels = preprocess(image.rgb, classifier.input_size)
            pictures.append(Picture(key, data, image, sha256_hex(data), pixels,
                                    phash=perceptual_hash(pixels)))
        if skip_existing and pictures:
            existing = store.existing_sha256([p.sha256 for p in pictures], version)
            report.already += sum(p.sha256 in existing for p in pictures)
            pictures = [p for p in pictures if p.sha256 not in existing]
        if pictures:
            rows = [
                image_row(picture, result, picture.key, version)
                for picture, result in zip(
                    pictures, embed_pictures(classifier, pictures), strict=True
                )
            ]
            added = []
            for picture, inserted in zip(pictures, store.upsert_many(rows), strict=True):
                if inserted:
                    report.embedded += 1
                    added.append(picture)
                else:
                    report.duplicates += 1
                    unusable.add(picture.key)
            find_relations(store, added, classifier, version)
        done += len(chunk)
        if progress is not None:
            progress(done, len(pending))


def reembed_keys(
    store: EmbeddingStore,
    lake: ObjectLake,
    classifier: Classifier,
    keys: Sequence[str],
    batch_size: int = DEFAULT_REINDEX_BATCH,
) -> ReindexReport:
    """One batch of a fanned-out reindex (a Distributed Map child, or the local equivalent):
    embed these gallery keys with `classifier`'s model. Never lists the gallery and never
    switches: the switch is `activate_reindexed`, run once after every batch succeeded.
    Raises (the batch is retried) when the database or the lake fails; keys that are gone or
    unreadable are reported, not raised, since a retry cannot change them."""
    _check_gallery_keys(keys)
    states = versions_of(store)
    states.register(classifier.version, classifier.embedding_size)
    report = ReindexReport(model_version=classifier.version, previous_version=states.current())
    pending = list(dict.fromkeys(keys))
    report.total = len(pending)
    unusable: set[str] = set()
    _embed_gallery_keys(store, lake, classifier, pending, batch_size, report, unusable, None,
                        skip_existing=True)
    report.unusable_keys = sorted(unusable)
    return report


# The switch step embeds at most this many stragglers (pictures ingested while the map ran);
# more means the map did not cover the gallery, and the switch refuses.
MAX_STRAGGLERS = 100_000


def activate_reindexed(
    store: EmbeddingStore, lake: ObjectLake, classifier: Classifier,
    batch_size: int = DEFAULT_REINDEX_BATCH,
) -> ReindexReport:
    """The final step of a fanned-out reindex, run once every batch has succeeded: embed the
    pictures the serving version indexed while the batches ran (rows of the current version
    without a row of the new one: one indexed query, never a listing of millions of gallery
    keys), then switch queries to the version only when none is left but the unusable ones
    (`activated` says whether it did). With no other current version (a first model) it is
    `reindex`, which lists the gallery."""
    version = classifier.version
    states = versions_of(store)
    states.register(version, classifier.embedding_size)
    current = states.current()
    if current is None or current == version:
        return reindex(store, lake, classifier, batch_size)
    report = ReindexReport(model_version=version, previous_version=current)
    unusable: set[str] = set()
    for _ in range(REINDEX_PASSES):
        pending = [k for k in store.keys_missing_from(version, current, MAX_STRAGGLERS + 1)
                   if k not in unusable]
        if not pending or len(pending) > MAX_STRAGGLERS:
            break
        report.total += len(pending)
        _embed_gallery_keys(store, lake, classifier, pending, batch_size, report, unusable,
                            None)
    report.unusable_keys = sorted(unusable)
    remaining = [k for k in store.keys_missing_from(version, current, MAX_STRAGGLERS + 1)
                 if k not in unusable]
    if remaining:
        logger.info("reindex to %s incomplete: %s pictures of %s have no row", version,
                    f"{len(remaining):,}" if len(remaining) <= MAX_STRAGGLERS else "too many",
                    current)
        return report
    states.mark_ready(version)
    states.activate(version)
    report.activated = True
    logger.info("model version %s is now current (was %s)", version, current)
    return report


class CurrentModel:
    """The classifier predict serves: the model of the database's current version.

    The switch (a reindex completing, a rollback) is a row in the database, so every process
    follows it within `ttl_s`. When the registry lacks the current version's model (or its file
    fails verification) the default model serves instead, searching its own version's rows, and
    a warning is logged once per switch. When the database cannot be asked, the model already
    serving keeps serving; when the registry's store cannot be asked (the artifacts bucket
    unreachable), so does it, or the default model, and the version is asked for again after
    `ttl_s` rather than given up until the next switch.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        store: EmbeddingStore,
        *,
        threads: int = 1,
        ttl_s: float = CURRENT_VERSION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.registry = registry
        self.store = store
        self.threads = threads
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self.states = versions_of(store)
        self._serving: Classifier | None = None
        self._chosen_for: str | None = None  # the current version `_serving` was chosen for
        self._checked_at = 0.0

    def classifier(self) -> Classifier:
        with self._lock:
            now = self._clock()
            if self._serving is not None and now - self._checked_at < self.ttl_s:
                return self._serving
            self._checked_at = now
            try:
                current = self.states.current()
            except Unavailable:
                if self._serving is None:
                    raise
                logger.warning("cannot read the current model version; keeping %s",
                               self._serving.version)
                return self._serving
            if self._serving is None or current != self._chosen_for:
                try:
                    self._serving = self._choose(current)
                except ModelSourceUnavailable as exc:
                    # Nothing is known about the version: keep serving, ask again next TTL.
                    logger.warning("cannot fetch model version %s (%s)", current, exc)
                    if self._serving is None:
                        self._serving = self.registry.default_classifier(self.threads)
                    return self._serving
                self._chosen_for = current
            return self._serving

    def _choose(self, version: str | None) -> Classifier:
        if version is None:  # a fresh index: nothing is current yet
            return self.registry.default_classifier(self.threads)
        try:
            card = self.registry.card_for(version)  # fetched and verified (registry)
            if card is not None:
                chosen = self.registry.classifier_for(version, self.threads)
                logger.info("serving model version %s", version)
                return chosen
            problem = f"the registry at {self.registry.location} does not hold it"
        except ModelIntegrityError as exc:
            problem = str(exc)
        fallback = self.registry.default_classifier(self.threads)
        logger.warning(
            "model version %s is current but cannot serve (%s); serving the default model %s "
            "and its own rows instead", version, problem, fallback.version,
        )
        return fallback
