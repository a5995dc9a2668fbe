"""`python -m local_stack.renditions`: write the missing renditions of works already indexed.

    python -m local_stack.renditions [--dry-run] [--state-dir DIR] [--workers 8]

Ingest writes a work's renditions (renditions/<side>/<sha256>.jpg, artlens.renditions) as it
indexes it; pictures indexed before that have none, and the page shows them only through their
renditions. This looks at every gallery/ object of the running stack's lake and renders what is
missing (only that: a second run writes nothing). --dry-run counts without reading a picture.

Exit status: 0 done (pictures that cannot be rendered are listed with their reason, and do not
stop the others), 2 when the stack is not running.
"""

from __future__ import annotations

import argparse
import sys

from artlens.renditions import DEFAULT_WORKERS, BackfillCounts, backfill_renditions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local_stack.renditions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="state folder (default $ARTLENS_STATE_DIR or .artlens)")
    parser.add_argument("--dry-run", action="store_true",
                        help="count the missing renditions, write nothing")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"lake calls at once (default {DEFAULT_WORKERS}; decodes: 2)")
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be between 1 and 64")
    return args


def summary(counts: BackfillCounts, *, dry_run: bool) -> list[str]:
    verb = "would write" if dry_run else "written"
    lines = [
        f"Renditions of {counts.checked} gallery objects"
        f"{' (dry run: nothing written)' if dry_run else ''}:",
        f"  complete     {counts.complete:>6}  had every rendition",
        f"  {verb:<12} {counts.written:>6}  renditions, for {counts.works} works",
        f"  failed       {len(counts.failed):>6}",
    ]
    lines += [f"    {key}: {reason}" for key, reason in sorted(counts.failed.items())]
    return lines


def main(argv: list[str] | None = None) -> int:
    from artlens.lake import LocalLake
    from artlens.names import GALLERY_PREFIX
    from local_stack.state import running_stack_or_explain

    args = parse_args(argv)
    paths, stack = running_stack_or_explain(args.state_dir, "renditions")
    if stack is None:
        return 2
    # As local_stack.reindex opens it: the stack's folder and its own URL key (no URL is
    # signed here). The database is not needed: the gallery's objects are the works.
    lake = LocalLake(stack.lake_dir, paths.url_key.read_text().strip().encode())
    counts = backfill_renditions(lake, lake.list(GALLERY_PREFIX), dry_run=args.dry_run,
                                 workers=args.workers)
    print("\n".join(summary(counts, dry_run=args.dry_run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
