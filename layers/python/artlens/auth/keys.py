"""API client keys for signed requests: {key_id: {name, secret, created, revoked, scopes}}.

Held in one Secrets Manager secret on AWS (a JSON document) or in a 0600 JSON file in the local
stack's state dir. The authorizer reads them through `ApiKeySource`, which caches the document
for `ttl_s`: a key issued or revoked with `python -m client.keys` takes effect within that time
in every container, without a redeploy. Unknown key ids never trigger a refetch, so random ids
cannot turn every request into a Secrets Manager call.

Each key carries its scopes (artlens.names.SCOPES): `predict` for every key, `review` for a
curator's. A document written before scopes existed has none: such keys read as predict-only.
The predict function re-reads the key on every signed request (artlens.auth.signing), so a scope
taken away from a key is refused within the same cache TTL as a revocation.

Secrets are never logged; `ApiKey.__repr__` hides them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from artlens.errors import NotFound, Unauthorized
from artlens.names import SCOPE_PREDICT, SCOPES

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SECRET_BYTES = 32

# What a key or token grants when it names no scope: keys and tokens made before scopes
# existed could only ever predict, so that is all they keep.
DEFAULT_SCOPES: tuple[str, ...] = (SCOPE_PREDICT,)

_log = logging.getLogger(__name__)


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scope names -> sorted, without repeats. ValueError for none, an unknown name, or a bare
    string (which would otherwise be read letter by letter)."""
    if isinstance(scopes, str | bytes):
        raise ValueError("give the scopes as a list of names, not one string")
    names = tuple(sorted(set(scopes)))
    if not names:
        raise ValueError(f"give at least one scope (one of {', '.join(SCOPES)})")
    unknown = [name for name in names if name not in SCOPES]
    if unknown:
        raise ValueError(
            f"unknown scope {', '.join(map(repr, unknown))}; known: {', '.join(SCOPES)}"
        )
    return names


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    secret: str = field(repr=False)
    name: str = ""
    created: str = ""
    revoked: str | None = None
    scopes: tuple[str, ...] = DEFAULT_SCOPES

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "secret": self.secret, "created": self.created,
                "revoked": self.revoked, "scopes": list(self.scopes)}

    def public(self) -> dict[str, Any]:
        """What may be shown or logged: everything but the secret."""
        return {"key_id": self.key_id, "name": self.name, "created": self.created,
                "revoked": self.revoked, "scopes": list(self.scopes)}


def _entry_scopes(entry: Mapping[str, Any]) -> tuple[str, ...] | None:
    """A document entry's scopes; DEFAULT_SCOPES when it has none (written before scopes);
    None when they are malformed (not a list of known names), so the entry is skipped: a key
    never gets more than its document clearly says."""
    if "scopes" not in entry:
        return DEFAULT_SCOPES
    value = entry["scopes"]
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        return None
    try:
        return validate_scopes(value)
    except ValueError:
        return None


def parse_keys(document: Any) -> dict[str, ApiKey]:
    """The key document -> keys; malformed entries are skipped (and named, never their secret)."""
    if not isinstance(document, Mapping):
        raise ValueError("the API key document is not a JSON object")
    keys = {}
    for key_id, entry in document.items():
        scopes = _entry_scopes(entry) if isinstance(entry, Mapping) else None
        if (
            not KEY_ID_PATTERN.match(str(key_id))
            or not isinstance(entry, Mapping)
            or not isinstance(entry.get("secret"), str)
            or not entry["secret"]
            or scopes is None
        ):
            _log.warning("ignoring malformed API key entry %r", str(key_id)[:64])
            continue
        revoked = entry.get("revoked")
        keys[key_id] = ApiKey(
            key_id=key_id, secret=entry["secret"], name=str(entry.get("name") or ""),
            created=str(entry.get("created") or ""),
            revoked=str(revoked) if revoked else None, scopes=scopes,
        )
    return keys


def dump_keys(keys: Mapping[str, ApiKey]) -> str:
    return json.dumps({k: v.to_json() for k, v in sorted(keys.items())}, indent=2)


# --------------------------------------------------------------------------- backends


class KeyBackend(Protocol):
    def read(self) -> dict[str, ApiKey]: ...

    def write(self, keys: Mapping[str, ApiKey]) -> None: ...


class FileKeys:
    """A JSON file, mode 0600, replaced atomically on every write. Absent means no keys."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> dict[str, ApiKey]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        return parse_keys(json.loads(text))

    def write(self, keys: Mapping[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(dump_keys(keys))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


class SecretsManagerKeys:
    """One secret whose SecretString is the key document."""

    def __init__(self, client: Any, secret_arn: str):
        self._client = client
        self.secret_arn = secret_arn

    def read(self) -> dict[str, ApiKey]:
        answer = self._client.get_secret_value(SecretId=self.secret_arn)
        return parse_keys(json.loads(answer.get("SecretString") or "{}"))

    def write(self, keys: Mapping[str, ApiKey]) -> None:
        self._client.put_secret_value(SecretId=self.secret_arn, SecretString=dump_keys(keys))


def secrets_client(*, endpoint_url: str | None = None) -> Any:
    """A Secrets Manager client with short timeouts: the authorizer must answer (deny) long
    before API Gateway's own timeout if Secrets Manager is unreachable, never hang."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "secretsmanager", endpoint_url=endpoint_url,
        config=Config(connect_timeout=2, read_timeout=2, retries={"max_attempts": 2}),
    )


# --------------------------------------------------------------------------- reading


class ApiKeySource:
    """Cached lookups for the authorizer; fails closed (Unauthorized) when keys are unreadable."""

    def __init__(
        self, backend: KeyBackend, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self._backend = backend
        self._ttl_s = float(ttl_s)
        self._clock = clock
        self._keys: dict[str, ApiKey] | None = None
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def get(self, key_id: str) -> ApiKey | None:
        """The key if it exists (revoked or not); None for an unknown id."""
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self._ttl_s:
                try:
                    self._keys = self._backend.read()
                except Exception as exc:  # boto errors, unreadable file, bad JSON
                    _log.error("cannot read the API keys: %s", type(exc).__name__)
                    self._keys = None
                    raise Unauthorized("Authentication is not available.") from None
                self._fetched_at = now
            return self._keys.get(key_id)


# --------------------------------------------------------------------------- management


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def issue_key(
    backend: KeyBackend, name: str, scopes: Iterable[str] = DEFAULT_SCOPES
) -> ApiKey:
    """A new key (id `ak_<hex>`, 256-bit secret) granting `scopes`, saved; the only time the
    secret is shown. ValueError for a bad name or scope."""
    if not name or len(name) > 100:
        raise ValueError("the key needs a name of 1 to 100 characters")
    granted = validate_scopes(scopes)
    keys = backend.read()
    key = ApiKey(
        key_id=f"ak_{secrets.token_hex(8)}", secret=secrets.token_urlsafe(SECRET_BYTES),
        name=name, created=_now_iso(), scopes=granted,
    )
    keys[key.key_id] = key
    backend.write(keys)
    return key


def set_key_scopes(backend: KeyBackend, key_id: str, scopes: Iterable[str]) -> ApiKey:
    """Replace what a key grants (e.g. take `review` away); the secret is unchanged. NotFound
    for an unknown id, ValueError for a bad scope."""
    granted = validate_scopes(scopes)
    keys = backend.read()
    if key_id not in keys:
        raise NotFound(f"No API key {key_id!r}.")
    if keys[key_id].scopes != granted:
        keys[key_id] = replace(keys[key_id], scopes=granted)
        backend.write(keys)
    return keys[key_id]


def revoke_key(backend: KeyBackend, key_id: str) -> ApiKey:
    """Mark a key revoked (kept, so its id is never reissued and audits can name it)."""
    keys = backend.read()
    if key_id not in keys:
        raise NotFound(f"No API key {key_id!r}.")
    if keys[key_id].active:
        keys[key_id] = replace(keys[key_id], revoked=_now_iso())
        backend.write(keys)
    return keys[key_id]
