"""Curator review: the queue of works to look at, the decisions (an audit trail) and the
reviewed labels that the next training run learns from (the `reviews` table).

The queue holds works indexed by the serving version that no curator has decided on yet and
that either
  - disagree: their catalogued type is one of the model's classes and not the model's type, or
  - are uncertain: the model's top probability is under `min_probability`,
ordered by how sure the model is that the catalogue is wrong, 1 - p(catalogued type) (rows
indexed before every probability was kept use their top probability when they disagree), then
the uncertain works without a catalogued type, least sure first.

A decision never touches the catalogue (works.catalogued_type): `confirm` keeps the catalogued
type, `correct` names another class; each is a new row with who, when and the model's view at
that moment, so the trail is complete. The latest decision per work is its reviewed label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg2 import sql

from artlens.errors import BadRequest, NotFound
from artlens.index.database import Cursor, Database
from artlens.index.embeddings import WORKS_SELECT
from artlens.index.works import WorkFields, work_fields

Decision = Literal["confirm", "correct"]
DECISIONS: tuple[Decision, ...] = ("confirm", "correct")
Reason = Literal["disagrees", "uncertain"]
MAX_NOTE_CHARS = 1000


@dataclass(frozen=True)
class QueueItem:
    sha256: str
    key: str
    label: str  # the model's type
    probability: float  # of the model's type
    catalogued_probability: float | None  # p(catalogued type); null: not known
    reason: Reason
    wrong_catalogue: float  # the ordering score: 1 - p(catalogued type); 0 when uncertain only
    work: WorkFields


@dataclass(frozen=True)
class Review:
    id: int
    sha256: str
    decision: Decision
    label: str
    catalogued_type: str | None
    model_label: str | None
    model_probability: float | None
    model_version: str
    reviewer: str
    note: str | None
    decided_at: datetime


@dataclass(frozen=True)
class ReviewedLabel:
    """A work's latest decision, with where its picture is (for training)."""

    review: Review
    key: str | None  # its gallery key (any version's row: the object is the same)
    original_name: str | None


_REVIEW_FIELDS = ("id", "sha256", "decision", "label", "catalogued_type", "model_label",
                  "model_probability", "model_version", "reviewer", "note", "decided_at")
_REVIEW_COLUMNS = sql.SQL(", ").join(sql.Identifier(f) for f in _REVIEW_FIELDS)
_REVIEW_COLUMNS_OF_R = sql.SQL(", ").join(sql.Identifier("r", f) for f in _REVIEW_FIELDS)


def _review(row: Sequence[Any]) -> Review:
    return Review(
        id=int(row[0]), sha256=row[1], decision=row[2], label=row[3], catalogued_type=row[4],
        model_label=row[5],
        model_probability=None if row[6] is None else float(row[6]),
        model_version=row[7], reviewer=row[8], note=row[9], decided_at=row[10],
    )


class ReviewStore:
    def __init__(self, database: Database):
        self.database = database

    def queue(
        self, model_version: str, classes: Sequence[str], *, min_probability: float,
        limit: int = 50,
    ) -> list[QueueItem]:
        """Works waiting for a curator (module docstring), most likely catalogue errors
        first."""

        def work(cur: Cursor) -> list[tuple[Any, ...]]:
            cur.execute(sql.SQL(
                """
                WITH candidates AS (
                  SELECT i.sha256, i.key, i.label, i.probability,
                         CASE WHEN w.catalogued_type_known THEN
                           i.probabilities[array_position(%(classes)s::text[],
                                                          w.catalogued_type)]
                         END AS p_catalogued,
                         -- COALESCE: nothing catalogued (NULL) must not sort first
                         COALESCE(w.catalogued_type_known AND w.catalogued_type <> i.label,
                                  false) AS disagrees,
                         {works}
                  FROM images i JOIN works w ON w.sha256 = i.sha256
                  WHERE i.model_version = %(version)s
                    AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.sha256 = i.sha256)
                    AND ((w.catalogued_type_known AND w.catalogued_type <> i.label)
                         OR i.probability < %(min_probability)s)
                )
                SELECT *, CASE
                    WHEN disagrees THEN 1 - COALESCE(p_catalogued, 1 - probability)
                    WHEN p_catalogued IS NOT NULL THEN 1 - p_catalogued
                    ELSE 0 END AS wrong_catalogue
                FROM candidates
                ORDER BY disagrees DESC, wrong_catalogue DESC, probability ASC, sha256
                LIMIT %(limit)s
                """).format(works=WORKS_SELECT),
                {"classes": list(classes), "version": model_version,
                 "min_probability": float(min_probability), "limit": max(0, int(limit))},
            )
            return cur.fetchall()

        items = []
        for row in self.database.read(work):
            sha, key, label, probability, p_catalogued, disagrees = row[:6]
            items.append(QueueItem(
                sha256=sha, key=key, label=label, probability=float(probability),
                catalogued_probability=None if p_catalogued is None else float(p_catalogued),
                reason="disagrees" if disagrees else "uncertain",
                wrong_catalogue=round(float(row[-1]), 6),
                work=work_fields(row[6:-1]),
            ))
        return items

    def decide(
        self, sha256: str, decision: str, label: str | None, *, reviewer: str,
        model_version: str, classes: Sequence[str], note: str | None = None,
    ) -> Review:
        """Store one decision. `confirm` needs a catalogued type that is one of the classes
        (it becomes the label); `correct` needs `label`, one of the classes. The work must be
        indexed by `model_version` (its view is recorded beside the decision)."""
        if decision not in DECISIONS:
            raise BadRequest("'decision' must be 'confirm' or 'correct'.", code="bad_review")
        if not reviewer:
            raise BadRequest("A decision needs a reviewer.", code="bad_review")
        if note is not None and len(note) > MAX_NOTE_CHARS:
            raise BadRequest(f"'note' is longer than {MAX_NOTE_CHARS} characters.",
                             code="bad_review")

        def work(cur: Cursor) -> Review:
            cur.execute(
                "SELECT w.catalogued_type, w.catalogued_type_known, i.label, i.probability"
                " FROM works w LEFT JOIN images i"
                "   ON i.sha256 = w.sha256 AND i.model_version = %s"
                " WHERE w.sha256 = %s FOR UPDATE OF w",
                (model_version, sha256),
            )
            row = cur.fetchone()
            if row is None or row[2] is None:
                raise NotFound(f"The collection holds no work with SHA-256 {sha256} under "
                               f"model {model_version}.")
            catalogued, known, model_label, probability = row
            if decision == "confirm":
                if not known:
                    raise BadRequest(
                        "There is no catalogued type among the model's classes to confirm; "
                        "use 'correct' with a label.", code="bad_review")
                chosen = catalogued
            else:
                if label not in classes:
                    raise BadRequest(f"'label' must be one of {', '.join(classes)}.",
                                     code="bad_review")
                chosen = label
            cur.execute(
                sql.SQL("INSERT INTO reviews (sha256, decision, label, catalogued_type,"
                        " model_label, model_probability, model_version, reviewer, note)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {}")
                .format(_REVIEW_COLUMNS),
                (sha256, decision, chosen, catalogued, model_label, probability, model_version,
                 reviewer, note),
            )
            return _review(cur.fetchone() or ())

        return self.database.transaction(work)

    def history(self, sha256: str) -> list[Review]:
        """Every decision on one work, oldest first (the audit trail)."""

        def work(cur: Cursor) -> list[tuple[Any, ...]]:
            cur.execute(sql.SQL("SELECT {} FROM reviews WHERE sha256 = %s"
                                " ORDER BY decided_at, id").format(_REVIEW_COLUMNS), (sha256,))
            return cur.fetchall()

        return [_review(row) for row in self.database.read(work)]

    def labels(self) -> list[ReviewedLabel]:
        """The latest decision of every reviewed work, with its picture's key."""

        def work(cur: Cursor) -> list[tuple[Any, ...]]:
            cur.execute(sql.SQL(
                "SELECT DISTINCT ON (r.sha256) {},"
                " (SELECT i.key FROM images i WHERE i.sha256 = r.sha256"
                "  ORDER BY i.created_at DESC LIMIT 1), w.original_name"
                " FROM reviews r JOIN works w ON w.sha256 = r.sha256"
                " ORDER BY r.sha256, r.decided_at DESC, r.id DESC"
            ).format(_REVIEW_COLUMNS_OF_R))
            return cur.fetchall()

        return [ReviewedLabel(_review(row[:11]), row[11], row[12])
                for row in self.database.read(work)]
