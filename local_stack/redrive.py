"""`python -m local_stack.redrive`: put dead-lettered ingestion messages back on the queue.

The local DLQ is one JSON file per message under `<state>/dlq/` (see local_stack.watcher). Once
the cause is fixed (database back, handler deployed, file replaced), redriving a message removes
its DLQ record and marks its `incoming/` object as new (a fresh modification time), so the
watcher announces it again -- the local equivalent of `aws sqs start-message-move-task`
(docs/operations.md). Works whether the stack is running or not; a stopped stack picks the
object up when it starts.

Messages whose object no longer exists cannot be redriven; they are listed and kept (or
dropped with --drop-missing). Exit status 0, or 1 when some message could not be redriven.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from artlens.names import INCOMING_PREFIX
from local_stack.state import StatePaths, resolve_state_dir


def dead_letters(dlq_dir: Path) -> list[tuple[Path, dict]]:
    records = []
    for path in sorted(dlq_dir.glob("*.json")):
        try:
            records.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            print(f"skipping unreadable DLQ file {path.name}", file=sys.stderr)
    return records


def redrive(paths: StatePaths, message_ids: set[str] | None = None,
            drop_missing: bool = False) -> tuple[list[str], list[str]]:
    """(redriven keys, keys that could not be redriven)."""
    moved, missing = [], []
    for path, record in dead_letters(paths.dlq):
        if message_ids and record.get("messageId") not in message_ids:
            continue
        key = str(record.get("key", ""))
        target = paths.lake / key
        if not key.startswith(INCOMING_PREFIX) or not target.is_file():
            missing.append(key)
            if drop_missing:
                path.unlink(missing_ok=True)
            continue
        # A later mtime than the dead-lettered one: the watcher sees a new object version.
        stamp = max(time.time_ns(), target.stat().st_mtime_ns + 1_000_000)
        os.utime(target, ns=(stamp, stamp))
        path.unlink(missing_ok=True)
        moved.append(key)
    return moved, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_stack.redrive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="state folder (default $ARTLENS_STATE_DIR or .artlens)")
    parser.add_argument("--message-id", action="append", help="only these (repeatable)")
    parser.add_argument("--list", action="store_true", help="show the DLQ, change nothing")
    parser.add_argument("--drop-missing", action="store_true",
                        help="delete records whose object is gone")
    args = parser.parse_args(argv)
    paths = StatePaths(resolve_state_dir(args.state_dir))
    if args.list:
        for _, record in dead_letters(paths.dlq):
            print(f"{record.get('messageId')}  {record.get('key')}  "
                  f"receives={record.get('receiveCount')}  error={record.get('lastError')}")
        return 0
    moved, missing = redrive(paths, set(args.message_id or ()), args.drop_missing)
    for key in moved:
        print(f"redriven: {key}")
    for key in missing:
        print(f"cannot redrive (object gone): {key}", file=sys.stderr)
    print(f"{len(moved)} redriven, {len(missing)} not redriven")
    return 1 if missing and not args.drop_missing else 0


if __name__ == "__main__":
    sys.exit(main())
