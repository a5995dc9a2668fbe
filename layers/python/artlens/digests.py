"""The one SHA-256 helper: picture identity, body hashes of signed requests, model file checks
and keyed signatures (HMAC) all hash through here, as lowercase hex."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """A file's SHA-256, read in 1 MiB chunks (model files and weights are megabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hmac_sha256_hex(key: str | bytes, message: str | bytes) -> str:
    raw_key = key.encode("utf-8") if isinstance(key, str) else key
    raw_message = message.encode("utf-8") if isinstance(message, str) else message
    return hmac.new(raw_key, raw_message, hashlib.sha256).hexdigest()
