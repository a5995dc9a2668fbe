"""`python -m local_stack.ingest DIR` (make ingest DIR=...): a folder through the running stack.

Copies the folder's image files (recursively, by extension) into `incoming/` under unique names
(written to a hidden temp name, then renamed, so the watcher never sees half a file), then waits
until each one is indexed, found to be a duplicate, rejected by the embed handler, or parked in
the dead-letter queue. Prints a progress bar (stderr) and a summary (stdout; `--json` for a
machine-readable one).

Records: a CSV in the folder (`file,title,maker,date,inventory_number,type,permalink,licence`;
`file` relative to the CSV's folder; other columns kept) and per-picture `<name>.json` (or
`<stem>.json`) files are read by artlens.index.works, the parser an S3 drop goes through too.
Each picture is dropped with its record beside it as `incoming/<incoming name>.json` (at least
its original path in DIR; a per-picture JSON wins over its CSV row field by field), which the
embed handler stores with the picture. Sidecars are never copied as pictures nor counted as
skipped. Malformed rows, records naming no picture and unknown types are listed in the summary
(`record_problems`); the pictures are indexed regardless.

Intake triage (artlens.triage): the embed handler writes its rows of this run's batch (the run id
names the drops) to `reports/<run id>/` in the lake; this command adds the files it saw fail or
time out, then prints the merged report's summary table (`--json`: the whole report under
`report`). The page lists the same report (GET /reports).

Exit status: 0 when every file was settled (rejections included), 1 on DLQ or timeout,
2 when the stack is not running or DIR is not a folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from artlens.digests import sha256_hex
from artlens.index.works import (
    CSV_SUFFIX,
    MAX_SIDECAR_BYTES,
    RECORD_SUFFIX,
    WorkRecord,
    parse_csv,
    record_from_json,
)
from artlens.names import IMAGE_SUFFIXES, INCOMING_PREFIX, REASON_SUFFIX, REJECTED_PREFIX
from artlens.triage import TriageReport, summary_table
from local_stack.state import RunningStack, StatePaths, running_stack_or_explain
from local_stack.watcher import ignored_reason

POLL_S = 0.25
PARTS_WAIT_S = 10.0  # for the embed handler's report parts, after the last file settled
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Item:
    source: str  # relative to DIR
    incoming_name: str
    sha256: str
    outcome: str = "pending"  # indexed | duplicate | rejected | failed | pending
    reason: str = ""
    message: str = ""


@dataclass
class Summary:
    directory: str
    indexed: int
    duplicates: int
    rejected: int
    failed: int
    timed_out: int
    skipped: int
    seconds: float
    items: list[dict]
    records: int = 0  # pictures dropped with a sidecar record (CSV row or JSON)
    sidecars: int = 0  # CSV and JSON files read as records
    record_problems: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)  # the batch's triage report (artlens.triage)


def find_images(directory: Path) -> tuple[list[Path], list[Path]]:
    """(image files by extension, other files), both sorted. Hidden folders and temporary
    names (local_stack.watcher.ignored_reason) are ignored; other dot-files count."""
    images: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if ignored_reason(name) is not None:
                continue
            path = Path(dirpath) / name
            if not path.is_file():
                continue
            (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return images, others


def is_sidecar(path: Path) -> bool:
    return path.suffix.lower() in (CSV_SUFFIX, RECORD_SUFFIX)


def collect_records(
    directory: Path, images: list[Path], sidecars: list[Path]
) -> tuple[dict[Path, WorkRecord], list[str]]:
    """Each picture's record from the folder's CSVs and per-picture JSONs (a JSON wins over a
    CSV row field by field), and every problem found, named by file and line."""
    pictures = set(images)
    by_stem: dict[Path, list[Path]] = {}
    for image in images:
        by_stem.setdefault(image.with_suffix(""), []).append(image)
    records: dict[Path, WorkRecord] = {}
    problems: list[str] = []

    def read(path: Path) -> bytes | None:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            problems.append(f"{path.relative_to(directory)}: larger than {MAX_SIDECAR_BYTES:,} "
                            "bytes; not read")
            return None
        return path.read_bytes()

    for sheet in (p for p in sidecars if p.suffix.lower() == CSV_SUFFIX):
        name = sheet.relative_to(directory).as_posix()
        data = read(sheet)
        if data is None:
            continue
        rows = parse_csv(data, name)
        problems += rows.problems
        for file_name, record in rows.records.items():
            target = sheet.parent / file_name
            if target not in pictures:
                problems.append(f"{name}: a row names {file_name}, which is not a picture in "
                                f"the folder: {record.to_json()}")
            elif target in records:
                problems.append(f"{name}: {file_name} has a row in another CSV too; the first "
                                "is kept")
            else:
                records[target] = record
    for sidecar in (p for p in sidecars if p.suffix.lower() == RECORD_SUFFIX):
        name = sidecar.relative_to(directory).as_posix()
        base = sidecar.with_suffix("")
        targets = [base] if base in pictures else by_stem.get(base, [])
        if len(targets) != 1:
            problems.append(f"{name}: names no single picture in the folder ({base.name}"
                            f"{'.*' if not base.suffix else ''}); not applied")
            continue
        data = read(sidecar)
        if data is None:
            continue
        given, found = record_from_json(data, name)
        problems += found
        if given is not None:
            target = targets[0]
            records[target] = given.merged_over(records.get(target, WorkRecord()))
    return records, problems


def write_record(incoming: Path, name: str, record: WorkRecord) -> None:
    """`incoming/<name>.json`, written whole (temp name, then rename) before its picture."""
    path = incoming / f"{name}{RECORD_SUFFIX}"
    tmp = incoming / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(record.to_json(), ensure_ascii=False))
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    return sha256_hex(path.read_bytes())  # pictures are a few MB at most (6 MB lake limit)


def _incoming_name(run_id: str, index: int, source: Path) -> str:
    stem = _UNSAFE_NAME.sub("_", source.stem)[:80].strip("._") or "image"
    return f"{run_id}-{index:05d}-{stem}{source.suffix.lower()}"


def drop(source: Path, incoming: Path, name: str) -> None:
    """Copy under a hidden temp name, then rename: the watcher only ever sees whole files."""
    tmp = incoming / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, incoming / name)


def _reason(path: Path) -> dict | None:
    try:
        reason = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or not completely written yet
    return reason if isinstance(reason, dict) else {"error": "unknown", "message": str(reason)}


def _rejection(rejected_dir: Path, key: str, sha256: str, gone_from_incoming: bool
               ) -> tuple[str, str] | None:
    """(reason code, message) once the embed handler has parked `key` under rejected/.

    Rejects are keyed by the SHA-256 of their bytes (artlens.ingest.rejected_key_for), which
    this command knows; a drop too large to be read is parked under a random id, found by the
    original key its reason names."""
    reason = _reason(rejected_dir / f"{sha256}{REASON_SUFFIX}")
    if reason is not None and not (gone_from_incoming or reason.get("source_key") == key):
        reason = None  # an earlier reject of the same bytes; this drop is not processed yet
    if reason is None and gone_from_incoming:
        for path in rejected_dir.glob(f"*{REASON_SUFFIX}"):
            found = _reason(path)
            if found is not None and found.get("source_key") == key:
                reason = found
                break
    if reason is None:
        return None
    code = reason.get("error") or reason.get("code") or reason.get("reason") or "unknown"
    return str(code), str(reason.get("message") or "")


def _dead_lettered(dlq_dir: Path) -> dict[str, str]:
    """incoming key -> last error, for every message in the local DLQ."""
    parked: dict[str, str] = {}
    for path in dlq_dir.glob("*.json"):
        try:
            record = json.loads(path.read_text())
            parked[record["key"]] = record.get("lastError") or "failed"
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return parked


class Ingestion:
    def __init__(self, stack: RunningStack, paths: StatePaths):
        from artlens.index.embeddings import EmbeddingStore

        self.stack = stack
        self.paths = paths
        self.incoming = Path(stack.lake_dir) / INCOMING_PREFIX
        self.rejected_dir = Path(stack.lake_dir) / REJECTED_PREFIX
        self.store = EmbeddingStore(stack.dsn)
        self.report: TriageReport | None = None  # the last run's

    def run(self, directory: Path, timeout_s: float, progress: bool) -> Summary:
        from tqdm import tqdm

        from artlens.models.versions import versions_of

        started = time.monotonic()
        images, found_others = find_images(directory)
        sidecars = [p for p in found_others if is_sidecar(p)]
        others = [p for p in found_others if not is_sidecar(p)]
        records, record_problems = collect_records(directory, images, sidecars)
        # The version the embed handler writes rows for: the current one (a reindex or a
        # rollback since the stack started changes it).
        version = versions_of(self.store).current() or self.stack.model_version
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        items: list[Item] = []
        new_shas: set[str] = set()
        for index, source in enumerate(images):
            item = Item(source=source.relative_to(directory).as_posix(),
                        incoming_name=_incoming_name(run_id, index, source),
                        sha256=_sha256(source))
            # Known before this run, or a second copy within it: the index keeps one row.
            if item.sha256 in new_shas or self.store.has_sha256(item.sha256, version):
                item.outcome = "duplicate?"
            new_shas.add(item.sha256)
            items.append(item)
        for item, source in zip(items, images, strict=True):
            # The record first: the embed handler reads it when it takes the picture.
            record = replace(records.get(source, WorkRecord()), original_name=item.source)
            write_record(self.incoming, item.incoming_name, record)
            drop(source, self.incoming, item.incoming_name)

        with tqdm(total=len(items), unit="img", desc="ingesting", disable=not progress,
                  file=sys.stderr) as bar:
            pending = list(items)
            last_progress = time.monotonic()
            while pending:
                settled = self._settle(pending, version)
                if settled:
                    bar.update(len(settled))
                    last_progress = time.monotonic()
                    pending = [item for item in pending if item not in settled]
                    continue
                if time.monotonic() - last_progress > timeout_s:
                    break
                time.sleep(POLL_S)

        for item in items:
            if item.outcome in ("pending", "duplicate?"):
                item.outcome = "timed_out"
        sheet_problems = _problems_by_sidecar(directory, sidecars, record_problems)
        record_problems += self._unknown_types(items, records, images)
        report = self.report = self._triage(run_id, items, version, sheet_problems)
        count = {name: sum(item.outcome == name for item in items)
                 for name in ("indexed", "duplicate", "rejected", "failed", "timed_out")}
        return Summary(
            directory=str(directory), indexed=count["indexed"], duplicates=count["duplicate"],
            rejected=count["rejected"], failed=count["failed"], timed_out=count["timed_out"],
            skipped=len(others), seconds=round(time.monotonic() - started, 2),
            items=[asdict(item) for item in items], records=len(records),
            sidecars=len(sidecars), record_problems=record_problems,
            report=report.to_json() if report is not None else {},
        )

    def _triage(self, batch: str, items: list[Item], version: str,
                sheet_problems: dict[str, list[str]] | None = None) -> TriageReport | None:
        """The run's report: the embed handler's parts (waited for briefly: a part is written
        just after its rows) plus one part for the files only this command saw settle (dead
        letters, time-outs) and for the folder's sidecars that had problems (malformed rows:
        the pictures are indexed regardless, the report says what was wrong)."""
        if not items:
            return None
        from artlens import triage
        from artlens.lake import LocalLake

        # Only written and read here, never signed: any URL key will do.
        lake = LocalLake(self.stack.lake_dir, url_key=os.urandom(32))
        handled = {item.incoming_name for item in items
                   if item.outcome in ("indexed", "duplicate", "rejected")}
        deadline = time.monotonic() + PARTS_WAIT_S
        while True:
            merged = triage.read_batch(lake, batch)
            seen = {row.file for row in merged.rows} if merged else set()
            if handled <= seen or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        rest = [triage.Entry(file=item.incoming_name, status=item.outcome, sha256=item.sha256,
                             reason=item.reason or None, message=item.message or None,
                             original_name=item.source)
                for item in items if item.incoming_name not in seen]
        rest += [triage.Entry(file=name, status="sidecar", problems=tuple(problems),
                              original_name=name)
                 for name, problems in (sheet_problems or {}).items() if name not in seen]
        if rest:
            triage.write_part(lake, triage.build_report(self.store, version, rest, batch),
                              triage.new_part_name())
        return triage.read_batch(lake, batch)

    def _unknown_types(
        self, items: list[Item], records: dict[Path, WorkRecord], images: list[Path]
    ) -> list[str]:
        """Catalogued types the embed handler flagged: not one of the model's classes."""
        from artlens.index.works import WorkStore

        works = WorkStore(self.store.database)
        flagged = []
        for item, source in zip(items, images, strict=True):
            record = records.get(source)
            if record is None or record.catalogued_type is None or item.outcome not in (
                "indexed", "duplicate"
            ):
                continue
            stored = works.get(item.sha256)
            if stored is not None and stored["catalogued_type_known"] is False:
                flagged.append(f"{item.source}: catalogued type {stored['catalogued_type']!r} "
                               "is not one of the model's classes; kept as catalogued, flagged")
        return flagged

    def _settle(self, pending: list[Item], version: str) -> list[Item]:
        """Items whose fate is now known (their `outcome` is set)."""
        parked = _dead_lettered(self.paths.dlq)
        settled = []
        for item in pending:
            key = f"{INCOMING_PREFIX}{item.incoming_name}"
            if key in parked:
                item.outcome, item.reason = "failed", parked[key]
                settled.append(item)
                continue
            if (self.incoming / f"{item.incoming_name}{RECORD_SUFFIX}").exists():
                continue  # its record is removed last, once stored (or kept with a reject)
            in_incoming = (self.incoming / item.incoming_name).exists()
            rejection = _rejection(self.rejected_dir, key, item.sha256, not in_incoming)
            if rejection is not None:
                item.outcome = "rejected"
                item.reason, item.message = rejection
                settled.append(item)
                continue
            if in_incoming:
                continue
            # Gone from incoming: indexed once its row is visible (the row is written last).
            if self.store.has_sha256(item.sha256, version):
                item.outcome = "duplicate" if item.outcome == "duplicate?" else "indexed"
                settled.append(item)
        return settled


def _problems_by_sidecar(
    directory: Path, sidecars: list[Path], problems: list[str]
) -> dict[str, list[str]]:
    """The folder's sidecars that had problems, each with its own (artlens.index.works names
    the file first: `<name>: ...` or `<name> line <n>: ...`)."""
    found: dict[str, list[str]] = {}
    for sidecar in sidecars:
        name = sidecar.relative_to(directory).as_posix()
        own = [p for p in problems if p.startswith((f"{name}: ", f"{name} line "))]
        if own:
            found[name] = own
    return found


def print_table(summary: Summary, dlq_dir: Path, report: TriageReport | None) -> None:
    print(f"Ingested {len(summary.items)} image file(s) from {summary.directory} "
          f"in {summary.seconds:.1f} s")
    rows = [
        ("indexed", summary.indexed, ""),
        ("duplicates", summary.duplicates, "already in the index; not added again"),
        ("rejected", summary.rejected, "not usable images; see lake/rejected/"),
        ("failed", summary.failed, f"embedding kept failing; see {dlq_dir}"),
        ("timed out", summary.timed_out, "still not settled; see the stack's log"),
        ("skipped", summary.skipped, "not image files by name; not copied"),
    ]
    for name, value, note in rows:
        if value or name in ("indexed", "duplicates", "rejected"):
            print(f"  {name:<11}{value:>6}  {note}".rstrip())
    if summary.sidecars:
        print(f"  records    {summary.records:>6}  pictures with a record from "
              f"{summary.sidecars} sidecar file(s)")
    if summary.record_problems:
        print(f"Record problems ({len(summary.record_problems)}; the pictures are indexed "
              "regardless):")
        for problem in summary.record_problems:
            print(f"  {problem}")
    # Every rejected or failed file, whatever their number (the intake table below shows at
    # most 20 notable rows).
    problems = [item for item in summary.items if item["outcome"] in ("rejected", "failed")]
    if problems:
        width = max(len(item["source"]) for item in problems)
        print("Rejected or failed:")
        for item in problems:
            print(f"  {item['source']:<{width}}  {item['reason']:<20} {item['message']}".rstrip())
    if report is not None:
        print(f"Intake report (reports/{report.batch}/ in the lake; the page lists it):")
        print(summary_table(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_stack.ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--state-dir", help="state folder (default $ARTLENS_STATE_DIR or .artlens)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="give up after this many seconds without progress (default 120)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    directory = args.directory.expanduser().resolve()
    if not directory.is_dir():
        print(f"ingest: {args.directory} is not a folder", file=sys.stderr)
        return 2
    paths, stack = running_stack_or_explain(args.state_dir, "ingest")
    if stack is None:
        return 2

    ingestion = Ingestion(stack, paths)
    summary = ingestion.run(directory, args.timeout, progress=not args.no_progress)
    if args.json:
        print(json.dumps(asdict(summary), indent=2))
    else:
        print_table(summary, paths.dlq, ingestion.report)
    if summary.timed_out:
        print(f"ingest: {summary.timed_out} file(s) were not settled after {args.timeout:.0f} s "
              "without progress; is the stack's watcher running? see its log", file=sys.stderr)
    return 1 if summary.failed or summary.timed_out else 0


if __name__ == "__main__":
    sys.exit(main())
