"""The one SHA-256 helper: picture identity, body hashes of signed requests, model file checks
and keyed signatures (HMAC) all hash through here, as lowercase hex."""

from __future__ import annotations

import hashlib
import hmac


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hmac_sha256_hex(key: str | bytes, message: str | bytes) -> str:
    raw_key = key.encode("utf-8") if isinstance(key, str) else key
    raw_message = message.encode("utf-8") if isinstance(message, str) else message
    return hmac.new(raw_key, raw_message, hashlib.sha256).hexdigest()
