"""A lake with S3's per-call latency, offline: the local folder lake behind a fixed wait.

Every object call (get, get_version, put, put_if_absent, copy, delete, delete_version, exists,
list) sleeps `latency_s` before it runs, as a request to S3 from a Lambda in the same region
waits for its answer (small GET/PUT/DELETE: typically 20-40 ms first byte; the bench states the
value it used). The wait is a sleep, so it blocks the calling thread only, like a socket read:
threads making other calls meanwhile are not slowed, which is what a bounded pool over the
thread-safe boto3 client gets on S3. Bandwidth is not modelled: bench pictures are tens of KB.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from artlens.lake import DEFAULT_URL_EXPIRES_S, ObjectLake, VersionedObject

DEFAULT_LATENCY_S = 0.030


class SlowLake:
    """Delegates to `inner` after `latency_s` per call; counts the calls it delayed."""

    def __init__(self, inner: ObjectLake, latency_s: float = DEFAULT_LATENCY_S):
        if latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        self.inner, self.latency_s = inner, latency_s
        self.calls = 0
        self._lock = threading.Lock()

    def _wait(self) -> None:
        with self._lock:
            self.calls += 1
        time.sleep(self.latency_s)

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        self._wait()
        return self.inner.get(key, max_bytes)

    def get_version(self, key: str, max_bytes: int | None = None) -> VersionedObject:
        self._wait()
        return self.inner.get_version(key, max_bytes)

    def delete_version(self, key: str, version: str) -> bool:
        self._wait()
        return self.inner.delete_version(key, version)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._wait()
        self.inner.put(key, data, content_type)

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        self._wait()
        return self.inner.put_if_absent(key, data, content_type)

    def copy(self, src: str, dst: str) -> None:
        self._wait()
        self.inner.copy(src, dst)

    def delete(self, key: str) -> None:
        self._wait()
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        self._wait()
        return self.inner.exists(key)

    def list(self, prefix: str) -> list[str]:
        self._wait()
        return self.inner.list(prefix)

    def url_for(self, key: str, expires: int = DEFAULT_URL_EXPIRES_S) -> str:
        return self.inner.url_for(key, expires)  # signed locally: no request to S3

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
