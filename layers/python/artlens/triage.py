"""Intake triage: what became of every file of an ingest batch, for the person who dropped it.

One row per file: its outcome (indexed, duplicate, rejected, failed, skipped, pending; sidecar:
a CSV or record whose problems the row lists), the model's type and probability, the catalogued
type and whether the two disagree, the work it exactly duplicates (same bytes: the same work),
the work it nearly duplicates or is related to (artlens.duplicates), the rejection's reason, and
the sidecar problems of its row.

A batch is what a person dropped at once: the folder under incoming/ (`incoming/<batch>/...`),
the run of a `make ingest` (its drops are named `<run id>-<n>-<name>`), else the hour of the
drop (`drops-2026-11-30T02`). Pictures of one batch reach many embed invocations (SQS batches of
ten), so each invocation writes its rows as one part, `reports/<batch>/<part>.csv` and `.json`,
and a batch is read as the union of its parts (`read_batch`): no invocation ever rewrites
another's part, so none waits for or overwrites another.
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from artlens.errors import NotFound
from artlens.index.embeddings import EmbeddingStore
from artlens.index.relations import Relation, relations_of
from artlens.index.works import WorkStore
from artlens.ingest import IngestReport, Status, is_sidecar
from artlens.lake import ObjectLake
from artlens.names import INCOMING_PREFIX, REPORTS_PREFIX

CSV_SUFFIX = ".csv"
JSON_SUFFIX = ".json"
FORMATS = {CSV_SUFFIX: "text/csv; charset=utf-8", JSON_SUFFIX: "application/json"}


@dataclass(frozen=True)
class Entry:
    """What the caller knows of one file: its name, outcome and, if read, its SHA-256."""

    file: str
    status: str
    sha256: str | None = None
    reason: str | None = None
    message: str | None = None
    problems: tuple[str, ...] = ()
    original_name: str | None = None


@dataclass(frozen=True)
class TriageRow:
    file: str  # the dropped key's name under incoming/
    status: str
    original_name: str | None = None  # as its record names it (make ingest: the path in DIR)
    sha256: str | None = None
    key: str | None = None  # the work's gallery key
    predicted_type: str | None = None
    probability: float | None = None
    catalogued_type: str | None = None
    disagrees: bool | None = None  # null: nothing catalogued (or not one of the classes)
    duplicate_of: str | None = None  # exact copy: the gallery key of the work already held
    duplicate_of_name: str | None = None  # ... and the name it was first dropped as
    near_duplicate_of: str | None = None  # the most similar near-duplicate work's key
    near_duplicate_similarity: float | None = None
    related_to: str | None = None  # the most similar related work's key
    related_similarity: float | None = None
    reason: str | None = None  # rejected / skipped: the code
    message: str | None = None
    problems: str | None = None  # sidecar problems, "; "-joined

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = tuple(f.name for f in fields(TriageRow))


@dataclass(frozen=True)
class TriageReport:
    batch: str
    model_version: str
    rows: list[TriageRow]
    created_at: str  # ISO 8601, UTC

    def counts(self) -> dict[str, int]:
        counted = Counter(row.status for row in self.rows)
        counted["disagreements"] = sum(bool(row.disagrees) for row in self.rows)
        counted["near_duplicates"] = sum(row.near_duplicate_of is not None for row in self.rows)
        counted["related"] = sum(row.related_to is not None for row in self.rows)
        return dict(sorted(counted.items()))

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch, "model_version": self.model_version,
                "created_at": self.created_at, "counts": self.counts(),
                "rows": [row.as_dict() for row in self.rows]}

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: "" if v is None else v for k, v in row.as_dict().items()})
        return out.getvalue()


def new_part_name(now: datetime | None = None, unique: str | None = None) -> str:
    """`2026-11-30T02-10-00Z-<8 hex>`: sorts by time, unique, safe in a key and a file name."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H-%M-%SZ}-{(unique or uuid.uuid4().hex)[:8]}"


BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# local_stack.ingest names its drops `<run id>-<5+ digits>-<name>`, the run id being
# `YYYYmmddTHHMMSS-<6 hex>`.
_RUN_DROP = re.compile(r"^(\d{8}T\d{6}-[0-9a-f]{6})-\d{5,}-")


def batch_of(key: str, now: datetime | None = None) -> str:
    """The batch a dropped key belongs to (module docstring)."""
    name = key.removeprefix(INCOMING_PREFIX)
    folder, slash, _ = name.partition("/")
    if slash:
        safe = _UNSAFE.sub("_", folder).strip("._-")[:128]
        if safe:
            return safe
    run = _RUN_DROP.match(name)
    if run:
        return run.group(1)
    return f"drops-{(now or datetime.now(UTC)).astimezone(UTC):%Y-%m-%dT%H}"


def entries_of(report: IngestReport) -> list[tuple[str, Entry]]:
    """(key, entry) of an ingest call: every picture, and every sidecar (CSV or record JSON)
    that had problems (a CSV with malformed rows is parked under rejected/; its row here says
    why, so the person who dropped the batch sees it beside the pictures, which are indexed
    regardless). A record consumed with its picture (its own event then finds it gone:
    skipped, not_found) or waiting for it is not a file of its own to report."""
    return [
        (key, Entry(file=key.removeprefix(INCOMING_PREFIX), status=str(outcome.status),
                    sha256=outcome.sha256, reason=outcome.reason, message=outcome.message,
                    problems=tuple(outcome.problems), original_name=outcome.original_name))
        for key, outcome in report.outcomes.items()
        if not is_sidecar(key) or outcome.problems
    ]


def _first_name(stored: dict[str, Any]) -> str | None:
    """The name a work was first dropped as: the oldest replaced original_name, if any."""
    for change in stored.get("history") or []:
        old = (change.get("fields") or {}).get("original_name")
        if old:
            return str(old)
    return stored.get("original_name")


def _best(relations: Iterable[Relation], sha: str, kind: str) -> Relation | None:
    return next((r for r in relations if r.kind == kind and sha in (r.sha256, r.other_sha256)),
                None)


def build_report(
    store: EmbeddingStore, model_version: str, entries: Sequence[Entry], batch: str,
    *, now: datetime | None = None,
) -> TriageReport:
    """Each entry's row, from what the index holds now: a few indexed lookups per picture
    and one relations query for the batch (a part covers one embed invocation, ten drops)."""
    shas = [e.sha256 for e in entries if e.sha256]
    works = WorkStore(store.database)
    stored = {sha: works.get(sha) for sha in dict.fromkeys(shas)}
    images = {sha: store.image_of(sha, model_version) for sha in dict.fromkeys(shas)}
    relations = relations_of(store.database, shas, model_version) if shas else {}
    keys = {sha: (image.key if (image := images.get(sha)) is not None
                  else store.key_of(sha, model_version))
            for sha in dict.fromkeys(shas)}
    rows = []
    for entry in entries:
        sha = entry.sha256
        image = images.get(sha) if sha else None
        work = (stored.get(sha) or {}) if sha else {}
        catalogued = work.get("catalogued_type")
        known = work.get("catalogued_type_known")
        near = _best(relations.get(sha, []), sha, "near_duplicate") if sha else None
        related = _best(relations.get(sha, []), sha, "related") if sha else None
        exact = entry.status == Status.DUPLICATE
        rows.append(TriageRow(
            file=entry.file, status=entry.status, original_name=entry.original_name, sha256=sha,
            key=keys.get(sha) if sha else None,
            predicted_type=image.label if image else None,
            probability=round(image.probability, 6) if image else None,
            catalogued_type=catalogued,
            disagrees=(catalogued != image.label) if image and known else None,
            duplicate_of=keys.get(sha) if exact and sha else None,
            duplicate_of_name=_first_name(work) if exact else None,
            near_duplicate_of=_gallery_of(store, near.other(sha), model_version)
            if near and sha else None,
            near_duplicate_similarity=round(near.similarity, 6) if near else None,
            related_to=_gallery_of(store, related.other(sha), model_version)
            if related and sha else None,
            related_similarity=round(related.similarity, 6) if related else None,
            reason=entry.reason, message=entry.message,
            problems="; ".join(entry.problems) or None,
        ))
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return TriageReport(batch, model_version, rows, moment.isoformat(timespec="seconds"))


def _gallery_of(store: EmbeddingStore, sha256: str, model_version: str) -> str | None:
    return store.key_of(sha256, model_version)


def write_part(lake: ObjectLake, report: TriageReport, part: str) -> list[str]:
    """`reports/<batch>/<part>.csv` and `.json`; returns their keys."""
    base = f"{REPORTS_PREFIX}{report.batch}/{part}"
    lake.put(base + CSV_SUFFIX, report.to_csv().encode("utf-8"), FORMATS[CSV_SUFFIX])
    lake.put(base + JSON_SUFFIX, json.dumps(report.to_json()).encode("utf-8"),
             FORMATS[JSON_SUFFIX])
    return [base + CSV_SUFFIX, base + JSON_SUFFIX]


def report_ingest(
    lake: ObjectLake, store: EmbeddingStore, report: IngestReport, part: str | None = None
) -> list[TriageReport]:
    """The embed function's part of each batch its ingest call touched: written when it
    indexed, found or rejected a picture, or read a sidecar with problems (on S3 a CSV is its
    own event, often its own call); a call that only skipped or failed writes none."""
    by_batch: dict[str, list[Entry]] = {}
    for key, entry in entries_of(report):
        by_batch.setdefault(batch_of(key), []).append(entry)
    written = []
    name = part or new_part_name()
    for batch, entries in by_batch.items():
        if not any(e.status in (Status.INDEXED, Status.DUPLICATE, Status.REJECTED)
                   or e.problems for e in entries):
            continue
        triage = build_report(store, report.model_version, entries, batch)
        write_part(lake, triage, name)
        written.append(triage)
    return written


# Outcomes that end a file's story. A message is delivered at least once, so a file can have
# rows in two parts (failed, then indexed by the retry; indexed, then found again by a
# redelivery): its first settled row is the truth, else its latest.
_SETTLED = frozenset({"indexed", "duplicate", "rejected", "sidecar"})


def read_batch(lake: ObjectLake, batch: str) -> TriageReport | None:
    """A batch's parts as one report, one row per file, by file name (None: no such
    batch)."""
    keys = sorted(k for k in lake.list(f"{REPORTS_PREFIX}{batch}/") if k.endswith(JSON_SUFFIX))
    by_file: dict[str, TriageRow] = {}
    versions: list[str] = []
    created = ""
    for key in keys:  # oldest part first (part names start with their UTC time)
        try:
            document = json.loads(lake.get(key))
        except (ValueError, NotFound):
            continue  # a part being written or removed meanwhile: read at the next request
        versions.append(str(document.get("model_version") or ""))
        created = max(created, str(document.get("created_at") or ""))
        for raw in document.get("rows") or []:
            if not isinstance(raw, dict):
                continue
            row = TriageRow(**{name: raw.get(name) for name in COLUMNS})  # type: ignore[arg-type]
            held = by_file.get(row.file)
            if held is None or held.status not in _SETTLED:
                by_file[row.file] = row
    if not keys:
        return None
    rows = sorted(by_file.values(), key=lambda row: row.file)
    version = versions[-1] if versions else ""
    return TriageReport(batch, version, rows, created)


def summary_table(report: TriageReport, limit: int = 20) -> str:
    """A plain-text table for a terminal: the counts, then the files that need a look
    (rejected, failed, disagreeing, duplicates), at most `limit` of them."""
    lines = [f"batch {report.batch} (model {report.model_version})"]
    lines.append("  " + ", ".join(f"{name}: {count}" for name, count in report.counts().items()))
    notable = [row for row in report.rows if row.status in ("rejected", "failed", "duplicate")
               or row.disagrees or row.near_duplicate_of or row.problems]
    if notable:
        width = min(40, max(len(row.original_name or row.file) for row in notable))
        lines.append(f"  {'file':<{width}}  {'status':<9}  {'type':<12}  note")
        for row in notable[:limit]:
            name = row.original_name or row.file
            lines.append(f"  {name[:width]:<{width}}  {row.status:<9}  "
                         f"{(row.predicted_type or '-'):<12}  {_note(row)}")
        if len(notable) > limit:
            lines.append(f"  ... and {len(notable) - limit} more in the report")
    return "\n".join(lines)


def _note(row: TriageRow) -> str:
    if row.status == "rejected":
        return f"rejected: {row.reason} ({row.message or ''})"
    if row.status == "failed":
        return "failed; will be retried"
    notes = []
    if row.duplicate_of:
        notes.append(f"exact copy of {row.duplicate_of_name or row.duplicate_of}")
    if row.near_duplicate_of:
        notes.append(f"near duplicate of {row.near_duplicate_of} "
                     f"({row.near_duplicate_similarity:.3f})")
    if row.disagrees:
        notes.append(f"catalogued as {row.catalogued_type}, model says {row.predicted_type} "
                     f"({row.probability:.2f})")
    if row.problems:
        notes.append(f"record problems: {row.problems}")
    return "; ".join(notes)


@dataclass(frozen=True)
class ReportListing:
    batch: str
    parts: int
    updated: str  # the newest part's name (UTC time first): when the batch last grew


def latest_reports(lake: ObjectLake, limit: int = 20) -> list[ReportListing]:
    """Batches, the most recently grown first (part names start with their UTC time)."""
    parts: dict[str, list[str]] = {}
    for key in lake.list(REPORTS_PREFIX):
        batch, slash, name = key.removeprefix(REPORTS_PREFIX).partition("/")
        if slash and name.endswith(JSON_SUFFIX) and "/" not in name:
            parts.setdefault(batch, []).append(name.removesuffix(JSON_SUFFIX))
    listed = [ReportListing(batch, len(names), max(names)) for batch, names in parts.items()]
    listed.sort(key=lambda r: (r.updated, r.batch), reverse=True)
    return listed[:limit]
