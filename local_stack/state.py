"""Where the local stack keeps its state, and how other processes find the running stack.

Layout under the state dir (default `.artlens/`, `--state-dir` or `ARTLENS_STATE_DIR`):
    pg/                   embedded PostgreSQL data (kept across restarts)
    lake/{incoming,gallery,rejected}/
    dlq/                  messages the embed handler failed on too often (one JSON file each)
    token.key, url.key    secrets generated once, mode 0600
    stack.json            written by the running stack: pid, url, dsn (removed on clean stop)
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from artlens.names import INCOMING_PREFIX, LAKE_PREFIXES, REJECTED_PREFIX

DEFAULT_STATE_DIR = ".artlens"
STATE_DIR_ENV = "ARTLENS_STATE_DIR"


def resolve_state_dir(cli_value: str | None = None) -> Path:
    """CLI flag, then ARTLENS_STATE_DIR, then `.artlens` in the working directory."""
    raw = cli_value or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(raw).expanduser().resolve()


class StatePaths:
    """Where each part of the state lives under `root` (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = root
        self.pgdata, self.lake, self.dlq = root / "pg", root / "lake", root / "dlq"
        self.incoming, self.rejected = self.lake / INCOMING_PREFIX, self.lake / REJECTED_PREFIX
        self.token_key, self.url_key = root / "token.key", root / "url.key"
        self.stack_file = root / "stack.json"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for prefix in LAKE_PREFIXES:
            (self.lake / prefix).mkdir(parents=True, exist_ok=True)
        self.dlq.mkdir(exist_ok=True)


def load_or_create_secret(path: Path) -> str:
    """Read a secret file, creating it (0600, 64 random bytes as URL-safe text) on first use.

    Created with O_EXCL so two processes starting at once agree on one key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if not value:
            raise RuntimeError(f"{path} is empty; delete it to generate a new key") from None
        return value
    value = secrets.token_urlsafe(64)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


@dataclass(frozen=True)
class RunningStack:
    """What the server publishes in stack.json for `token`, `ingest` and tests."""

    pid: int
    url: str
    dsn: str
    lake_dir: str
    model_version: str

    @classmethod
    def read(cls, paths: StatePaths) -> RunningStack | None:
        try:
            raw = json.loads(paths.stack_file.read_text())
            return cls(**{name: raw[name] for name in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, paths: StatePaths) -> None:
        tmp = paths.stack_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        os.replace(tmp, paths.stack_file)

    def is_alive(self, timeout: float = 2.0) -> bool:
        """True if the process exists and answers /health."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as response:  # noqa: S310 (loopback URL we wrote)
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


def find_running_stack(paths: StatePaths) -> RunningStack | None:
    stack = RunningStack.read(paths)
    if stack is None or not stack.is_alive():
        return None
    return stack


def running_stack_or_explain(state_dir: str | None, command: str) -> tuple[StatePaths,
                                                                            RunningStack | None]:
    """The state paths and the running stack; None (and why, on stderr) when it is not running,
    for the commands that talk to a running stack (`make ingest`, `make reindex`)."""
    paths = StatePaths(resolve_state_dir(state_dir))
    stack = find_running_stack(paths)
    if stack is None:
        print(f"{command}: the local stack is not running (state {paths.root}); "
              "start it with `make run` in another terminal, then retry", file=sys.stderr)
    return paths, stack
