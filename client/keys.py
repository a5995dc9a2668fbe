"""`python -m client.keys issue|revoke|list` (make key ARGS="issue --name alice"): API keys for
signed requests, changed live -- the authorizer picks them up within its key cache TTL, no
redeploy.

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
from artlens.auth.keys import FileKeys, SecretsManagerKeys, issue_key, revoke_key, secrets_client
from artlens.errors import NotFound
from artlens.names import API_KEYS_FILE_NAME, ENV_API_KEYS_SECRET_ARN


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
    revoke = commands.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id")
    commands.add_parser("list", help="keys without their secrets")
    args = parser.parse_args(argv)

    if args.aws:
        if not args.secret_arn:
            parser.error("--aws needs --secret-arn (or API_KEYS_SECRET_ARN)")
        backend = SecretsManagerKeys(secrets_client(), args.secret_arn)
        where = args.secret_arn
    else:
        from local_stack.state import resolve_state_dir

        backend = FileKeys(resolve_state_dir(args.state_dir) / API_KEYS_FILE_NAME)
        where = str(backend.path)

    if args.command == "issue":
        key = issue_key(backend, args.name)
        if args.json:
            print(json.dumps({**key.public(), "secret": key.secret}))
        else:
            print(f"Issued {key.key_id} for {key.name!r} in {where}. The secret is shown once:")
            print(f"  ARTLENS_KEY_ID={key.key_id}\n  ARTLENS_KEY_SECRET={key.secret}")
        return 0
    if args.command == "revoke":
        try:
            key = revoke_key(backend, args.key_id)
        except NotFound as exc:
            print(exc.message, file=sys.stderr)
            return 1
        print(json.dumps(key.public()) if args.json else f"Revoked {key.key_id} at {key.revoked}")
        return 0
    keys = [key.public() for key in backend.read().values()]
    if args.json:
        print(json.dumps(keys))
    else:
        for key in keys:
            state = f"revoked {key['revoked']}" if key["revoked"] else "active"
            print(f"{key['key_id']:<22} {key['name']:<24} created {key['created']}  {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
