"""`python -m client predict FILE` and `python -m client upload FOLDER`: signed API calls.

Credentials: ARTLENS_URL, ARTLENS_KEY_ID, ARTLENS_KEY_SECRET, or a JSON config file
(--config, $ARTLENS_CONFIG, default ~/.config/artlens/client.json). The secret is never printed.
Exit status: 0 when every request succeeded, 1 when any was refused, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from artlens.names import IMAGE_SUFFIXES
from client.signer import ApiError, ArtLensClient, ClientConfig


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON file with url, key_id, secret")
    parser.add_argument("--url", help="API base URL (overrides ARTLENS_URL)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify one picture; prints the JSON answer")
    predict.add_argument("file", type=Path)
    upload = commands.add_parser("upload", help="classify every picture of a folder; summary")
    upload.add_argument("folder", type=Path)
    upload.add_argument("--json", action="store_true", help="print one JSON line per picture")
    for sub in (predict, upload):
        sub.add_argument("--neighbors", type=int)
        sub.add_argument("--scope", choices=("class", "all"))
    args = parser.parse_args(argv)

    environ = {**os.environ, **({"ARTLENS_URL": args.url} if args.url else {})}
    try:
        config = ClientConfig.load(environ, args.config)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    client = ArtLensClient.from_config(config, timeout=args.timeout)
    options = {"neighbors": args.neighbors, "scope": args.scope}

    if args.command == "predict":
        if not args.file.is_file():
            parser.error(f"{args.file} is not a file")
        try:
            print(json.dumps(client.predict_file(args.file, **options), indent=2))
        except ApiError as exc:
            print(json.dumps({"status": exc.status, **_as_dict(exc.body)}), file=sys.stderr)
            return 1
        return 0

    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    files = _images(args.folder)
    failed = 0
    labels: dict[str, int] = {}
    for path in files:
        name = path.relative_to(args.folder).as_posix()
        try:
            answer = client.predict_file(path, **options)
            row = {"file": name, "status": 200, "label": answer["label"],
                   "probability": answer["probability"]}
            labels[answer["label"]] = labels.get(answer["label"], 0) + 1
        except ApiError as exc:
            failed += 1
            row = {"file": name, "status": exc.status, **_as_dict(exc.body)}
        except OSError as exc:
            failed += 1
            row = {"file": name, "status": None, "error": type(exc).__name__}
        if args.json:
            print(json.dumps(row))
        else:
            detail = f"{row['label']} ({row['probability']:.2f})" if row["status"] == 200 \
                else f"{row['status']} {row.get('error', '')}"
            print(f"{name:<50} {detail}")
    summary = {"files": len(files), "classified": len(files) - failed, "failed": failed,
               "labels": labels}
    print(json.dumps(summary) if args.json else
          f"\n{summary['classified']} of {len(files)} classified, {failed} failed; "
          + ", ".join(f"{k}: {v}" for k, v in sorted(labels.items())))
    return 1 if failed else 0


def _as_dict(body: object) -> dict:
    return body if isinstance(body, dict) else {"error": str(body)}


if __name__ == "__main__":
    sys.exit(main())
