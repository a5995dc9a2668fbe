"""`python -m local_stack.token` (make token): print one bearer token for the local stack.

It grants `predict` unless told otherwise: `--scope predict --scope review` for a curator's
token (the review routes need `review`).

Only the token goes to stdout, so `TOKEN=$(make -s token)` works. The signing key is the stack's
`<state>/token.key`, created here if the stack has never run.
"""

from __future__ import annotations

import argparse
import sys

from artlens.names import SCOPE_PREDICT, SCOPES
from local_stack.state import StatePaths, load_or_create_secret, resolve_state_dir

DEFAULT_SUB = "dev"
DEFAULT_TTL_HOURS = 12.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_stack.token", description=__doc__)
    parser.add_argument("--state-dir", help="state folder (default $ARTLENS_STATE_DIR or .artlens)")
    parser.add_argument("--sub", default=DEFAULT_SUB, help="the token's subject (default dev)")
    parser.add_argument("--ttl-hours", type=float, default=DEFAULT_TTL_HOURS,
                        help="lifetime in hours (default 12)")
    parser.add_argument("--scope", dest="scopes", action="append", choices=SCOPES,
                        metavar="SCOPE", help=f"what the token grants, repeatable "
                        f"({', '.join(SCOPES)}; default {SCOPE_PREDICT})")
    args = parser.parse_args(argv)
    if args.ttl_hours <= 0 or not args.sub:
        parser.error("--ttl-hours must be positive and --sub not empty")

    from artlens.auth.tokens import mint_token

    paths = StatePaths(resolve_state_dir(args.state_dir))
    key = load_or_create_secret(paths.token_key)
    print(mint_token(key, args.sub, int(args.ttl_hours * 3600),
                     scopes=args.scopes or (SCOPE_PREDICT,)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
