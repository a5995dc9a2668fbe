"""The curators' answers: a work with its relatives and decisions (GET /works/{key}), the
duplicate groups (GET /duplicates), the review queue (GET /review) and a decision on it
(POST /review/{key}, `review` scope), and the intake reports (GET /reports,
GET /reports/{batch}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypedDict

from artlens.api.answers import (
    PROBABILITY_DIGITS,
    SIMILARITY_DIGITS,
    PictureUrls,
    RecordFields,
    WorkAnswer,
    picture_urls,
    record_fields,
    work_record,
)
from artlens.errors import NotFound
from artlens.index.embeddings import EmbeddingStore
from artlens.index.relations import duplicate_groups, relations_of
from artlens.index.reviews import QueueItem, Review, ReviewStore
from artlens.lake import ObjectLake
from artlens.triage import latest_reports, read_batch


class ReviewAnswer(TypedDict):
    id: int
    sha256: str
    decision: Literal["confirm", "correct"]
    label: str  # the type the curator settled on
    catalogued_type: str | None  # as catalogued then (never overwritten)
    model_label: str | None
    model_probability: float | None
    model_version: str
    reviewer: str
    note: str | None
    decided_at: str  # ISO 8601


class RelationAnswer(TypedDict):
    sha256: str  # the other work
    key: str | None
    kind: Literal["near_duplicate", "related"]
    similarity: float
    hamming: int | None


class WorkDetail(WorkAnswer):
    """GET /works/{key}: the record, its near duplicates and relatives, and every decision."""

    relations: list[RelationAnswer]
    reviews: list[ReviewAnswer]  # oldest first: the audit trail


class GroupMemberAnswer(RecordFields, PictureUrls):
    sha256: str
    key: str | None
    label: str | None


class RelationPair(TypedDict):
    sha256: str
    other_sha256: str
    similarity: float
    hamming: int | None


class DuplicateGroupAnswer(TypedDict):
    members: list[GroupMemberAnswer]
    pairs: list[RelationPair]


class DuplicatesAnswer(TypedDict):
    """GET /duplicates: groups of works that are the same picture, largest first."""

    model_version: str
    groups: list[DuplicateGroupAnswer]


class QueueItemAnswer(RecordFields, PictureUrls):
    sha256: str
    key: str
    label: str  # the model's type
    probability: float
    catalogued_probability: float | None  # the model's probability of the catalogued type
    reason: Literal["disagrees", "uncertain"]
    wrong_catalogue: float  # 1 - p(catalogued type): how sure the model is the catalogue errs


class QueueAnswer(TypedDict):
    """GET /review: works waiting for a curator, likeliest catalogue errors first."""

    model_version: str
    classes: list[str]
    min_probability: float
    items: list[QueueItemAnswer]


class ReportListingAnswer(TypedDict):
    batch: str
    parts: int  # embed invocations that wrote rows of it
    updated: str  # the newest part's name, UTC time first


class ReportAnswer(TypedDict):
    """GET /reports/{batch}: every row of the batch, its counts, and the same rows as CSV."""

    batch: str
    model_version: str
    created_at: str
    counts: dict[str, int]
    rows: list[dict[str, Any]]
    csv: str


class ReportsAnswer(TypedDict):
    reports: list[ReportListingAnswer]  # newest first


def review_answer(review: Review) -> ReviewAnswer:
    return {
        "id": review.id, "sha256": review.sha256, "decision": review.decision,
        "label": review.label, "catalogued_type": review.catalogued_type,
        "model_label": review.model_label,
        "model_probability": None if review.model_probability is None
        else round(review.model_probability, PROBABILITY_DIGITS),
        "model_version": review.model_version, "reviewer": review.reviewer,
        "note": review.note, "decided_at": review.decided_at.isoformat(),
    }


def work_detail(
    sha256: str, store: EmbeddingStore, lake: ObjectLake, model_version: str,
    *, base_url: str | None = None,
) -> WorkDetail:
    base = work_record(sha256, store, lake, model_version, base_url=base_url)
    relations = relations_of(store.database, [sha256], model_version)[sha256]
    detail: WorkDetail = {
        **base,
        "relations": [
            {"sha256": r.other(sha256), "key": store.key_of(r.other(sha256), model_version),
             "kind": r.kind, "similarity": round(r.similarity, SIMILARITY_DIGITS),
             "hamming": r.hamming}
            for r in relations
        ],
        "reviews": [review_answer(r) for r in ReviewStore(store.database).history(sha256)],
    }
    return detail


def duplicates(
    store: EmbeddingStore, lake: ObjectLake, model_version: str, *, base_url: str | None = None,
) -> DuplicatesAnswer:
    groups: list[DuplicateGroupAnswer] = []
    for group in duplicate_groups(store.database, model_version):
        members: list[GroupMemberAnswer] = [
            {"sha256": m.sha256, "key": m.key, "label": m.label,
             **picture_urls(lake, m.sha256, base_url), **record_fields(m.work)}
            for m in group.members
        ]
        pairs: list[RelationPair] = [
            {"sha256": p.sha256, "other_sha256": p.other_sha256,
             "similarity": round(p.similarity, SIMILARITY_DIGITS), "hamming": p.hamming}
            for p in group.pairs
        ]
        groups.append({"members": members, "pairs": pairs})
    return {"model_version": model_version, "groups": groups}


def _queue_item(item: QueueItem, lake: ObjectLake, base_url: str | None) -> QueueItemAnswer:
    return {
        "sha256": item.sha256, "key": item.key, "label": item.label,
        "probability": round(item.probability, PROBABILITY_DIGITS),
        "catalogued_probability": None if item.catalogued_probability is None
        else round(item.catalogued_probability, PROBABILITY_DIGITS),
        "reason": item.reason, "wrong_catalogue": item.wrong_catalogue,
        **picture_urls(lake, item.sha256, base_url), **record_fields(item.work),
    }


def review_queue(
    store: EmbeddingStore, lake: ObjectLake, model_version: str, classes: Sequence[str],
    *, min_probability: float, limit: int, base_url: str | None = None,
) -> QueueAnswer:
    items = ReviewStore(store.database).queue(
        model_version, classes, min_probability=min_probability, limit=limit
    )
    return {"model_version": model_version, "classes": list(classes),
            "min_probability": min_probability,
            "items": [_queue_item(item, lake, base_url) for item in items]}


def reports(lake: ObjectLake, limit: int = 20) -> ReportsAnswer:
    return {"reports": [{"batch": r.batch, "parts": r.parts, "updated": r.updated}
                        for r in latest_reports(lake, limit)]}


def report(lake: ObjectLake, batch: str) -> ReportAnswer:
    """One batch's report, its parts merged (the name was checked by the event parser)."""
    merged = read_batch(lake, batch)
    if merged is None:
        raise NotFound(f"No intake report for batch {batch!r}.")
    document = merged.to_json()
    return {"batch": merged.batch, "model_version": merged.model_version,
            "created_at": merged.created_at, "counts": document["counts"],
            "rows": document["rows"], "csv": merged.to_csv()}
