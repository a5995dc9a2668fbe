"""Collection records: what is known about a work besides its picture (the `works` table).

A work is keyed by the SHA-256 of its picture, so its record is shared by every model version's
`images` row and survives reindexing. Records arrive with the pictures as sidecars:

- a CSV beside the pictures, columns `file,title,maker,date,inventory_number,type,permalink,
  licence` (header required, any order, case-insensitive; other columns are kept in `extra`);
- or one JSON object per picture, `<picture name>.json` (the same field names).

`parse_csv` and `record_from_mapping` are the ONE reading of both forms: the local `make ingest`
and an S3 drop of `incoming/<anything>.csv` (split into per-picture `<name>.json` records by
`artlens.ingest`) go through them. A malformed row or field is reported (`problems`) and kept,
never dropped: a bad permalink stays in `extra["invalid"]`, a row whose cells do not match the
header is kept whole in `extra["sidecar_row"]`; the picture is indexed either way.

Overwrite rules (`WorkStore.upsert_many`): a field given by a later drop of the same picture
replaces the stored value; a field it leaves out or empty keeps the stored one; every replaced
non-null value goes to `history` with the time and the drop's key, so no catalogued value is
ever lost silently. `updated_at` moves only when something changed.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from psycopg2 import sql

from artlens.index.database import Cursor, Database

# Sidecar names (beside the pictures in a dropped folder, or under incoming/).
RECORD_SUFFIX = ".json"  # incoming/<picture name>.json
CSV_SUFFIX = ".csv"
SIDECAR_SUFFIXES = (RECORD_SUFFIX, CSV_SUFFIX)
MAX_SIDECAR_BYTES = 8 * 1024 * 1024  # a CSV of ~50,000 rows; anything bigger is refused
MAX_FIELD_CHARS = 2000
# Sidecar column -> record attribute (`type` is the catalogued type; `date` is free text).
COLUMNS = {
    "title": "title", "maker": "maker", "date": "date", "inventory_number": "inventory_number",
    "type": "catalogued_type", "permalink": "permalink", "licence": "licence",
}
FILE_COLUMN = "file"
# Spellings a catalogue may use for the same field.
ALIASES = {"license": "licence", "catalogued_type": "type", "date_text": "date",
           "original_name": "original_name"}
RECORD_FIELDS = ("original_name", "title", "maker", "date", "inventory_number",
                 "catalogued_type", "permalink", "licence")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class WorkFields:
    """What the API shows of a work beside its key (neighbours, map points)."""

    original_name: str | None = None
    title: str | None = None
    maker: str | None = None
    date: str | None = None
    inventory_number: str | None = None
    catalogued_type: str | None = None
    permalink: str | None = None
    licence: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass(frozen=True)
class WorkRecord(WorkFields):
    """One work's record as a sidecar gives it (None: not given), with its other columns."""

    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The per-picture sidecar form (`<name>.json`), which `record_from_mapping` reads."""
        body: dict[str, Any] = {
            "original_name": self.original_name, "title": self.title, "maker": self.maker,
            "date": self.date, "inventory_number": self.inventory_number,
            "type": self.catalogued_type, "permalink": self.permalink, "licence": self.licence,
        }
        body = {name: value for name, value in body.items() if value is not None}
        body.update({name: value for name, value in self.extra.items() if name not in body})
        return body

    def merged_over(self, base: WorkRecord) -> WorkRecord:
        """This record's given fields over `base` (a per-picture JSON over its CSV row)."""
        values = {name: getattr(self, name) for name in RECORD_FIELDS}
        merged = {name: value if value is not None else getattr(base, name)
                  for name, value in values.items()}
        return WorkRecord(**merged, extra={**base.extra, **self.extra})


@dataclass(frozen=True)
class SidecarRows:
    """A parsed CSV: records by the `file` column, and what was wrong with which row."""

    records: dict[str, WorkRecord]
    problems: list[str]


NO_FIELDS = WorkFields()
# The `works` columns behind WorkFields, in its order (joined by the k-NN and map queries).
WORK_COLUMNS = ("original_name", "title", "maker", "date_text", "inventory_number",
                "catalogued_type", "permalink", "licence")


def work_fields(values: Sequence[Any]) -> WorkFields:
    """WorkFields from the WORK_COLUMNS of a joined row (all None: no record)."""
    return WorkFields(*(None if v is None else str(v) for v in values))


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = _SPACES.sub(" ", str(value)).strip()
    return text[:MAX_FIELD_CHARS] or None


def _canonical(name: str) -> str:
    key = name.strip().lstrip("\ufeff").lower().replace(" ", "_").replace("-", "_")
    return ALIASES.get(key, key)


def record_from_mapping(
    values: Mapping[str, Any], where: str, original_name: str | None = None
) -> tuple[WorkRecord, list[str]]:
    """A record from a CSV row or a per-picture JSON object, and its problems (`where` names
    the row in them). Unknown fields go to `extra`; an invalid permalink to extra["invalid"]."""
    problems: list[str] = []
    given: dict[str, str | None] = {}
    extra: dict[str, Any] = {}
    invalid: dict[str, Any] = {}
    for raw_name, value in values.items():
        name = _canonical(str(raw_name))
        if name == FILE_COLUMN:
            continue
        if name == "original_name":
            original_name = original_name or _text(value)
        elif name in COLUMNS:
            if isinstance(value, dict | list):
                problems.append(f"{where}: {name} is not text")
                invalid[name] = value
                continue
            given[COLUMNS[name]] = _text(value)
        elif name and value not in (None, ""):
            extra[name] = value
    link = given.get("permalink")
    if link is not None:
        parts = urlsplit(link)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"{where}: permalink {link!r} is not an http(s) URL; kept in extra")
            invalid["permalink"] = link
            given["permalink"] = None
    if invalid:
        carried = extra.get("invalid")
        extra["invalid"] = {**(carried if isinstance(carried, dict) else {}), **invalid}
    return WorkRecord(original_name=original_name, extra=extra, **given), problems


def record_from_json(data: bytes, where: str) -> tuple[WorkRecord | None, list[str]]:
    """A per-picture `<name>.json` sidecar; (None, problems) when it is not a JSON object."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None, [f"{where}: not valid JSON"]
    if not isinstance(document, dict):
        return None, [f"{where}: not a JSON object"]
    return record_from_mapping(document, where)


def sidecar_name(value: str) -> str | None:
    """A CSV `file` cell as a relative path inside the folder, or None when it escapes it."""
    name = value.strip().replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or name.startswith("/"):
        return None
    return "/".join(parts)


def parse_csv(data: bytes, source: str) -> SidecarRows:
    """A sidecar CSV -> records by file name. Every row that cannot be read as given is
    reported; a row with too many or too few cells is kept whole in extra["sidecar_row"]."""
    problems: list[str] = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # never lose the file: legacy exports are often Latin-1
        problems.append(f"{source}: not UTF-8; read as Latin-1")
    # The delimiter is the header's most frequent of , ; and tab (spreadsheets in some locales
    # export with ;): deterministic, unlike guessing from the rows.
    first_line = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first_line.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [_canonical(h) for h in next(reader)]
    except StopIteration:
        return SidecarRows({}, [f"{source}: empty"])
    except csv.Error as exc:
        return SidecarRows({}, [f"{source}: unreadable header ({exc})"])
    if FILE_COLUMN not in header:
        return SidecarRows({}, [f"{source}: no 'file' column in the header"])
    records: dict[str, WorkRecord] = {}
    line = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            line = reader.line_num
            problems.append(f"{source} line {line}: unreadable ({exc}); skipped")
            continue
        line = reader.line_num
        where = f"{source} line {line}"
        if not any(c.strip() for c in cells):
            continue
        row = dict(zip(header, cells, strict=False))
        file_cell = row.get(FILE_COLUMN, "")
        name = sidecar_name(file_cell)
        if name is None:
            problems.append(f"{where}: no usable file name ({file_cell!r}); row not applied: "
                            f"{cells!r}")
            continue
        if name in records:
            problems.append(f"{where}: {name} is listed again; the first row is kept")
            continue
        if len(cells) != len(header):
            problems.append(f"{where}: {len(cells)} cells for {len(header)} columns; the row "
                            "is kept unparsed in extra.sidecar_row")
            records[name] = WorkRecord(extra={"sidecar_row": cells, "sidecar_header": header})
            continue
        record, row_problems = record_from_mapping(row, where)
        problems += row_problems
        records[name] = record
    return SidecarRows(records, problems)


def checked_type(record: WorkRecord, classes: Iterable[str]) -> tuple[WorkRecord, bool | None]:
    """The record with its catalogued type spelled as the model's class when it names one
    (case, surrounding spaces, singular/plural), and whether it does (None: none catalogued).
    An unknown type is kept as catalogued, flagged False."""
    given = record.catalogued_type
    if given is None:
        return record, None
    wanted = given.strip().lower()
    for name in classes:
        if wanted in (name.lower(), name.lower().rstrip("s"), name.lower() + "s"):
            return replace(record, catalogued_type=name), True
    return record, False


# ------------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class WorkUpdate:
    """One drop's record for one picture."""

    sha256: str
    record: WorkRecord
    type_known: bool | None = None
    source_key: str | None = None


# WorkRecord attribute -> works column.
_COLUMN_OF = {"original_name": "original_name", "title": "title", "maker": "maker",
              "date": "date_text", "inventory_number": "inventory_number",
              "catalogued_type": "catalogued_type", "permalink": "permalink",
              "licence": "licence"}
_SELECT = ("SELECT sha256, original_name, title, maker, date_text, inventory_number,"
           " catalogued_type, permalink, licence, catalogued_type_known, extra, history,"
           " source_key, created_at, updated_at FROM works")


class WorkStore:
    """Rows of the `works` table (see the module docstring for the overwrite rules)."""

    def __init__(self, database: Database):
        self.database = database

    def upsert_many(self, updates: Sequence[WorkUpdate]) -> list[bool]:
        """Apply the records in one transaction; per update, True when something changed."""
        if not updates:
            return []

        def work(cur: Cursor) -> list[bool]:
            shas = list(dict.fromkeys(u.sha256 for u in updates))
            # Insert-then-lock: two drops of the same picture at once serialise on the row.
            cur.execute(
                "INSERT INTO works (sha256) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                (shas,),
            )
            cur.execute(_SELECT + " WHERE sha256 = ANY(%s) FOR UPDATE", (shas,))
            current = {row[0]: _row_dict(row) for row in cur.fetchall()}
            statements = [_change(current[u.sha256], u) for u in updates]
            changed = [s for s in statements if s is not None]
            if changed:
                # One round trip for every UPDATE (ingest stores a chunk's records at once),
                # run in order: a picture changed twice in one call is updated twice.
                cur.execute(b";".join(cur.mogrify(query, params) for query, params in changed))
            return [s is not None for s in statements]

        return self.database.transaction(work)

    def get(self, sha256: str) -> dict[str, Any] | None:
        def work(cur: Cursor) -> dict[str, Any] | None:
            cur.execute(_SELECT + " WHERE sha256 = %s", (sha256,))
            row = cur.fetchone()
            return _row_dict(row) if row else None

        return self.database.read(work)

    def sha256_of_drop(self, source_keys: Sequence[str]) -> str | None:
        """The work last dropped under one of these incoming/ keys (a record arriving late)."""

        def work(cur: Cursor) -> str | None:
            cur.execute(
                "SELECT sha256 FROM works WHERE source_key = ANY(%s)"
                " ORDER BY updated_at DESC LIMIT 1", (list(source_keys),),
            )
            row = cur.fetchone()
            return str(row[0]) if row else None

        return self.database.read(work)


def _row_dict(row: Sequence[Any]) -> dict[str, Any]:
    names = ("sha256", "original_name", "title", "maker", "date", "inventory_number",
             "catalogued_type", "permalink", "licence", "catalogued_type_known", "extra",
             "history", "source_key", "created_at", "updated_at")
    return dict(zip(names, row, strict=True))


def _change(
    stored: dict[str, Any], update: WorkUpdate
) -> tuple[sql.Composed, tuple[Any, ...]] | None:
    """The UPDATE that applies `update` to the row `stored` (which it then reflects), or None
    when nothing changes."""
    record = update.record
    changes: dict[str, Any] = {}
    replaced: dict[str, Any] = {}
    for attribute, column in _COLUMN_OF.items():
        value = getattr(record, attribute)
        if value is None or value == stored[attribute]:
            continue
        changes[column] = value
        if stored[attribute] is not None:
            replaced[attribute] = stored[attribute]
    if record.catalogued_type is not None and update.type_known != stored[
        "catalogued_type_known"
    ]:
        changes["catalogued_type_known"] = update.type_known
    extra = {**(stored["extra"] or {}), **record.extra}
    if extra != (stored["extra"] or {}):
        lost = {k: v for k, v in (stored["extra"] or {}).items()
                if k in record.extra and record.extra[k] != v}
        if lost:
            replaced["extra"] = lost
        changes["extra"] = json.dumps(extra)
    if update.source_key is not None and update.source_key != stored["source_key"]:
        changes["source_key"] = update.source_key
    if not changes:
        return None
    # The same picture twice in one call: the second update compares with the first's result.
    for attribute, column in _COLUMN_OF.items():
        if column in changes:
            stored[attribute] = changes[column]
    stored["extra"] = extra
    stored["source_key"] = changes.get("source_key", stored["source_key"])
    stored["catalogued_type_known"] = changes.get(
        "catalogued_type_known", stored["catalogued_type_known"]
    )
    assignments: list[sql.Composable] = [
        sql.SQL("{} = %s").format(sql.Identifier(column)) for column in changes
    ]
    params: list[Any] = list(changes.values())
    if replaced:
        assignments.append(sql.SQL(
            "history = history || jsonb_build_array(jsonb_build_object("
            "'at', now(), 'source_key', %s::text, 'fields', %s::jsonb))"
        ))
        params += [update.source_key, json.dumps(replaced, default=str)]
    query = sql.SQL("UPDATE works SET {}, updated_at = now() WHERE sha256 = %s").format(
        sql.SQL(", ").join(assignments)
    )
    return query, (*params, update.sha256)
