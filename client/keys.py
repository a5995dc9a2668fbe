"""`python -m client.keys issue|scopes|revoke|list` (make key ARGS="issue --name alice"): API
keys for signed requests, changed live -- the authorizer and the predict function pick them up
within their key cache TTL, no redeploy.

Scopes: a key grants `predict` unless --scope says otherwise; a curator's key needs `review`
too: make key ARGS="issue --name carol --scope predict --scope review". `scopes KEY_ID --scope
predict` changes what an existing key grants (e.g. takes `review` away).

Local stack: <state>/api_keys.json (mode 0600; --state-dir, default $ARTLENS_STATE_DIR or
.artlens). AWS: --aws --secret-arn ARN (or $API_KEYS_SECRET_ARN), the same JSON document in
Secrets Manager, with the usual AWS credentials of the shell.

`issue` prints the new key's secret once (stdout); nothing else ever prints a secret.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import client  # noqa: F401  (puts the shared library on sys.path when run from a checkout)
from artlens.auth.keys import (
    DEFAULT_SCOPES,
    FileKeys,
    KeyBackend,
    SecretsManagerKeys,
    issue_key,
    revoke_key,
    secrets_client,
    set_key_scopes,
)
from artlens.errors import NotFound
from artlens.names import API_KEYS_FILE_NAME, ENV_API_KEYS_SECRET_ARN, SCOPES


def _scope_option(command: argparse.ArgumentParser, default_help: str) -> None:
    command.add_argument(
        "--scope", dest="scopes", action="append", choices=SCOPES, metavar="SCOPE",
        help=f"what the key grants, repeatable ({', '.join(SCOPES)}); {default_help}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", help="local stack state folder")
    parser.add_argument("--aws", action="store_true", help="keys in Secrets Manager")
    parser.add_argument("--secret-arn", default=os.environ.get(ENV_API_KEYS_SECRET_ARN))
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser("issue", help="create a key; prints its id and secret once")
    issue.add_argument("--name", required=True, help="who the key is for")
    _scope_option(issue, f"default {' '.join(DEFAULT_SCOPES)}")
    scopes = commands.add_parser("scopes", help="replace what an existing key grants")
    scopes.add_argument("key_id")
    _scope_option(scopes, "at least one")
    revoke = commands.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id")
    commands.add_parser("list", help="keys without their secrets")
    args = parser.parse_args(argv)

    backend: KeyBackend
    if args.aws:
        if not args.secret_arn:
            parser.error("--aws needs --secret-arn (or API_KEYS_SECRET_ARN)")
        backend = SecretsManagerKeys(secrets_client(), args.secret_arn)
        where = args.secret_arn
    else:
        from local_stack.state import resolve_state_dir

        local = FileKeys(resolve_state_dir(args.state_dir) / API_KEYS_FILE_NAME)
        backend, where = local, str(local.path)

    if args.command == "issue":
        try:
            key = issue_key(backend, args.name, args.scopes or DEFAULT_SCOPES)
        except ValueError as exc:
            parser.error(str(exc))
        if args.json:
            print(json.dumps({**key.public(), "secret": key.secret}))
        else:
            print(f"Issued {key.key_id} for {key.name!r} (scopes: {' '.join(key.scopes)}) in "
                  f"{where}. The secret is shown once:")
            print(f"  ARTLENS_KEY_ID={key.key_id}\n  ARTLENS_KEY_SECRET={key.secret}")
        return 0
    if args.command == "scopes":
        if not args.scopes:
            parser.error("scopes needs at least one --scope")
        try:
            key = set_key_scopes(backend, args.key_id, args.scopes)
        except NotFound as exc:
            print(exc.message, file=sys.stderr)
            return 1
        print(json.dumps(key.public()) if args.json
              else f"{key.key_id} now grants: {' '.join(key.scopes)}")
        return 0
    if args.command == "revoke":
        try:
            key = revoke_key(backend, args.key_id)
        except NotFound as exc:
            print(exc.message, file=sys.stderr)
            return 1
        print(json.dumps(key.public()) if args.json else f"Revoked {key.key_id} at {key.revoked}")
        return 0
    listed = [stored.public() for stored in backend.read().values()]
    if args.json:
        print(json.dumps(listed))
    else:
        for shown in listed:
            state = f"revoked {shown['revoked']}" if shown["revoked"] else "active"
            print(f"{shown['key_id']:<22} {shown['name']:<24} {' '.join(shown['scopes']):<16} "
                  f"created {shown['created']}  {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
