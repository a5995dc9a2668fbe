"""Signing outgoing requests, and a small HTTP client for the ArtLens API (stdlib only).

`predict_file` sends a picture over API Gateway's body limit (MAX_BODY_BYTES) around it: POST
/uploads for a presigned PUT, the PUT (skipped when the service holds the picture already), then
POST /predict {"key": ...}.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit

from artlens.api.events import MAX_BODY_BYTES
from artlens.auth.signing import sign_request

DEFAULT_CONFIG_FILE = Path("~/.config/artlens/client.json")
DEFAULT_TIMEOUT_S = 60.0
# A throttled request (429: API Gateway's usage plan, the local gateway's fair share) is sent
# again after the answer's Retry-After (else 0.5 s, doubling), at most this many times.
DEFAULT_RETRIES = 4
MAX_RETRY_WAIT_S = 30.0  # a Retry-After beyond this is not waited for in full


@dataclass(frozen=True)
class Signer:
    key_id: str
    secret: str = field(repr=False)

    def headers(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None,
        **kwargs: Any,
    ) -> dict[str, str]:
        """The headers to send to `url`: the signature and the signing headers, plus Host and
        (when given) Content-Type, which the signature covers: send them as returned. Its
        path, query and host (with the port as written in the URL) are what is signed."""
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        host = parts.netloc.rpartition("@")[2]  # never userinfo; it is not sent as Host
        return sign_request(
            self.key_id, self.secret, method, parts.path or "/", pairs, body, host=host,
            content_type=content_type, **kwargs,
        )


@dataclass(frozen=True)
class ClientConfig:
    url: str
    key_id: str
    secret: str = field(repr=False)

    @classmethod
    def load(
        cls, environ: Mapping[str, str] = os.environ, config_file: str | Path | None = None
    ) -> ClientConfig:
        """ARTLENS_URL / ARTLENS_KEY_ID / ARTLENS_KEY_SECRET, each falling back to the config
        file (JSON {"url", "key_id", "secret"}; default ~/.config/artlens/client.json)."""
        path = Path(config_file or environ.get("ARTLENS_CONFIG") or DEFAULT_CONFIG_FILE)
        stored: dict[str, Any] = {}
        path = path.expanduser()
        if path.is_file():
            stored = json.loads(path.read_text())
        values = {
            "url": environ.get("ARTLENS_URL") or stored.get("url"),
            "key_id": environ.get("ARTLENS_KEY_ID") or stored.get("key_id"),
            "secret": environ.get("ARTLENS_KEY_SECRET") or stored.get("secret"),
        }
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise ValueError(
                f"missing {', '.join(missing)}: set ARTLENS_URL, ARTLENS_KEY_ID and "
                f"ARTLENS_KEY_SECRET, or write them to {path}"
            )
        return cls(**values)


class ApiError(Exception):
    """A non-2xx answer: `status` and the API's {"error", "message"} body; `retry_after`, the
    seconds the server asked to wait (Retry-After), when it said so."""

    def __init__(self, status: int, body: Any, retry_after: float | None = None):
        self.status = status
        self.body = body
        self.retry_after = retry_after
        code = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {code or body}")


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by API Gateway or our gateway)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < float("inf") else None


class ArtLensClient:
    def __init__(
        self, base_url: str, key_id: str, secret: str, *, timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ):
        self.base_url = base_url.rstrip("/")
        self.signer = Signer(key_id, secret)
        self.timeout = timeout
        self.retries = retries
        self.sleep = time.sleep

    @classmethod
    def from_config(cls, config: ClientConfig, **kwargs: Any) -> ArtLensClient:
        return cls(config.url, config.key_id, config.secret, **kwargs)

    def request(
        self, method: str, path: str, body: bytes = b"", *, params: Mapping[str, Any] | None = None,
        content_type: str | None = None,
    ) -> Any:
        url = self.base_url + path
        if params:
            url += "?" + urlencode({k: str(v) for k, v in params.items()}, quote_via=quote)
        if not content_type and body:
            # urllib would otherwise add a form content type after signing, unsigned.
            content_type = "application/octet-stream"
        attempt = 0
        while True:
            # Signed afresh each time: a resent signature carries a used nonce (a replay).
            headers = self.signer.headers(method, url, body, content_type=content_type or None)
            try:
                return self._send(urllib.request.Request(  # noqa: S310 (the configured API URL)
                    url, data=body if method != "GET" else None, headers=headers, method=method
                ))
            except ApiError as exc:
                if exc.status != 429 or attempt >= self.retries:
                    raise
                wait = exc.retry_after if exc.retry_after is not None else 0.5 * 2 ** attempt
                self.sleep(min(wait, MAX_RETRY_WAIT_S))
                attempt += 1

    def _send(self, request: urllib.request.Request) -> Any:
        """The JSON answer (None for an empty one); ApiError for a non-2xx answer."""
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = raw.decode("utf-8", "replace")[:500]
            raise ApiError(exc.code, payload, _seconds(exc.headers.get("Retry-After"))) from None

    def predict(
        self, image: bytes, *, content_type: str = "application/octet-stream",
        neighbors: int | None = None, scope: str | None = None,
    ) -> dict[str, Any]:
        params = {k: v for k, v in (("neighbors", neighbors), ("scope", scope)) if v is not None}
        return self.request("POST", "/predict", image, params=params, content_type=content_type)

    def predict_file(self, path: str | Path, **kwargs: Any) -> dict[str, Any]:
        path = Path(path)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = path.read_bytes()
        if len(data) > MAX_BODY_BYTES:
            return self.predict_key(self.upload(data, content_type=content_type), **kwargs)
        return self.predict(data, content_type=content_type, **kwargs)

    def upload(self, image: bytes, *, content_type: str = "application/octet-stream") -> str:
        """Put one picture in the service's lake by a presigned PUT; its key."""
        ticket = self.request(
            "POST", "/uploads", json.dumps({
                "sha256": hashlib.sha256(image).hexdigest(), "size": len(image),
                "content_type": content_type,
            }).encode(), content_type="application/json",
        )
        if not ticket["exists"]:
            # Relative in the local stack (its gateway serves the lake), absolute for S3. The
            # URL carries its own signature: no API signature is added.
            url = urljoin(self.base_url + "/", ticket["url"])
            self._send(urllib.request.Request(  # noqa: S310 (a URL the API signed)
                url, data=image, headers=ticket["headers"], method=ticket["method"]
            ))
        return str(ticket["key"])

    def predict_key(
        self, key: str, *, neighbors: int | None = None, scope: str | None = None,
    ) -> dict[str, Any]:
        """POST /predict by reference: a gallery key or an upload's key."""
        params = {k: v for k, v in (("neighbors", neighbors), ("scope", scope)) if v is not None}
        return self.request("POST", "/predict", json.dumps({"key": key}).encode(),
                            params=params, content_type="application/json")

    def collection_map(self, limit: int | None = None) -> dict[str, Any]:
        return self.request("GET", "/map", params={"limit": limit} if limit else None)
