"""The curators' commands on the running local stack.

    python -m local_stack.curation duplicates [--json]      (make duplicates)
        The collection's near-duplicate groups under the current model (GET /duplicates).
    python -m local_stack.curation export-labels [--out FILE] (make export-labels)
        Every reviewed work's latest decision as the CSV `python -m training --labels FILE`
        reads: file,sha256,label,decision,reviewer,decided_at,model_version,catalogued_type,
        `file` being the picture's absolute path in the local lake.

Exit status: 0 done, 2 when the stack is not running.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from local_stack.state import running_stack_or_explain

LABEL_COLUMNS = ("file", "sha256", "label", "decision", "reviewer", "decided_at",
                 "model_version", "catalogued_type")


def export_labels(dsn: str, lake_dir: str, out: TextIO) -> int:
    """Write the reviewed labels; returns how many rows."""
    from artlens.index.database import Database
    from artlens.index.reviews import ReviewStore
    from artlens.lake import LocalLake

    lake = LocalLake(lake_dir, url_key=os.urandom(32))  # paths only: nothing is signed
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    rows = 0
    for labelled in ReviewStore(Database(dsn)).labels():
        review = labelled.review
        path = str(lake.path_for(labelled.key)) if labelled.key else ""
        writer.writerow([path, review.sha256, review.label, review.decision, review.reviewer,
                         review.decided_at.isoformat(), review.model_version,
                         review.catalogued_type or ""])
        rows += 1
    return rows


def duplicate_groups(dsn: str) -> tuple[str | None, list[dict]]:
    from artlens.index.database import Database
    from artlens.index.embeddings import EmbeddingStore
    from artlens.index.relations import duplicate_groups as groups_of
    from artlens.models.versions import versions_of

    store = EmbeddingStore(Database(dsn))
    version = versions_of(store).current()
    if version is None:
        return None, []
    groups = []
    for group in groups_of(store.database, version):
        groups.append({
            "members": [{"sha256": m.sha256, "key": m.key, "label": m.label,
                         "original_name": m.work.original_name, "title": m.work.title}
                        for m in group.members],
            "pairs": [{"sha256": p.sha256, "other_sha256": p.other_sha256,
                       "similarity": round(p.similarity, 4), "hamming": p.hamming}
                      for p in group.pairs],
        })
    return version, groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_stack.curation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="state folder (default $ARTLENS_STATE_DIR or .artlens)")
    commands = parser.add_subparsers(dest="command", required=True)
    dup = commands.add_parser("duplicates", help="list near-duplicate groups")
    dup.add_argument("--json", action="store_true", help="print the groups as JSON")
    labels = commands.add_parser("export-labels", help="write the reviewed labels as CSV")
    labels.add_argument("--out", type=Path, help="CSV file (default: standard output)")
    args = parser.parse_args(argv)

    paths, stack = running_stack_or_explain(args.state_dir, args.command)
    if stack is None:
        return 2
    if args.command == "export-labels":
        if args.out is None:
            rows = export_labels(stack.dsn, stack.lake_dir, sys.stdout)
        else:
            with args.out.open("w", encoding="utf-8", newline="") as out:
                rows = export_labels(stack.dsn, stack.lake_dir, out)
            print(f"wrote {rows} reviewed label(s) to {args.out}; train with "
                  f"`make train TRAIN_ARGS=\"--labels {args.out}\"`", file=sys.stderr)
        return 0
    version, groups = duplicate_groups(stack.dsn)
    if args.json:
        print(json.dumps({"model_version": version, "groups": groups}, indent=2))
        return 0
    print(f"{len(groups)} near-duplicate group(s) under model {version}")
    for number, group in enumerate(groups, 1):
        print(f"group {number}: {len(group['members'])} works")
        for member in group["members"]:
            name = member["title"] or member["original_name"] or ""
            print(f"  {member['key'] or member['sha256']}  {member['label'] or '-':<12} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
