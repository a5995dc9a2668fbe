"""The object lake: where pictures live. S3 on AWS, a folder in the local stack.

Prefixes (artlens.names): `incoming/` (drops waiting to be indexed), `gallery/<sha256>.<ext>`
(indexed pictures; labels live in the index, not in keys, so a new model never moves objects)
and `rejected/<name>` with `rejected/<name>.reason.json`.
"""

from __future__ import annotations

import hmac
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import quote

from artlens.digests import hmac_sha256_hex
from artlens.errors import BadRequest, ImageRejected, NotFound
from artlens.settings import Settings

DEFAULT_URL_EXPIRES_S = 900
_TMP_PREFIX = ".artlens-tmp-"


class ObjectLake(Protocol):
    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes. NotFound if absent; ImageRejected('too_large') past max_bytes."""

    def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None: ...

    def copy(self, src: str, dst: str) -> None: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]: ...

    def url_for(self, key: str, expires: int = DEFAULT_URL_EXPIRES_S) -> str: ...


def _too_large(size: int, max_bytes: int) -> ImageRejected:
    return ImageRejected(
        "too_large", f"The object is {size:,} bytes; the limit is {max_bytes:,} bytes."
    )


class S3Lake:
    """An S3 bucket. Missing objects raise NotFound; every other S3 error propagates as is."""

    def __init__(self, s3_client: Any, bucket: str):
        self._s3 = s3_client
        self.bucket = bucket

    @staticmethod
    def _is_missing(exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return False
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "404", "NotFound")

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._is_missing(exc):
                raise NotFound(f"No object {key!r}.") from None
            raise
        body = response["Body"]
        try:
            # Checked before reading so a huge drop never lands in the function's memory.
            size = int(response.get("ContentLength", 0))
            if max_bytes is not None and size > max_bytes:
                raise _too_large(size, max_bytes)
            return body.read()
        finally:
            body.close()

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def copy(self, src: str, dst: str) -> None:
        try:
            # The managed copy switches to multipart for objects past 5 GB.
            self._s3.copy({"Bucket": self.bucket, "Key": src}, self.bucket, dst)
        except Exception as exc:
            if self._is_missing(exc):
                raise NotFound(f"No object {src!r}.") from None
            raise

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._is_missing(exc):
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def url_for(self, key: str, expires: int = DEFAULT_URL_EXPIRES_S) -> str:
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=int(expires)
        )


class LocalLake:
    """A folder with the same key layout, and HMAC-signed URLs served by the local gateway."""

    def __init__(
        self,
        root: str | Path,
        url_key: bytes,
        base_url: str = "",
        *,
        clock: Callable[[], float] = time.time,
    ):
        if not url_key:
            raise ValueError("url_key must not be empty")
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._url_key = bytes(url_key)
        self.base_url = base_url.rstrip("/")
        self._clock = clock

    @staticmethod
    def _checked_key(key: str) -> PurePosixPath:
        """The key as a relative path, judged on its text alone (no file system access).

        Only canonical keys pass ("a/b", never "a//b", "./a" or "a/."), so one object has one
        key and one signed URL.
        """
        if not isinstance(key, str) or not key or "\x00" in key or "\\" in key:
            raise BadRequest("Invalid object key.", code="invalid_key")
        posix = PurePosixPath(key)
        if posix.is_absolute() or ".." in posix.parts or "/".join(posix.parts) != key:
            raise BadRequest("Invalid object key.", code="invalid_key")
        return posix

    def path_for(self, key: str) -> Path:
        """The file behind a key; refuses keys that would leave the lake folder."""
        posix = self._checked_key(key)
        # resolve() also catches a symlink inside the lake that points outside it.
        path = (self.root / posix).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise BadRequest("Invalid object key.", code="invalid_key")
        return path

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        path = self.path_for(key)
        try:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    raise _too_large(size, max_bytes)
                return handle.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"No object {key!r}.") from None

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a watcher or a reader never sees half a file.
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def copy(self, src: str, dst: str) -> None:
        self.put(dst, self.get(src))

    def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def list(self, prefix: str) -> list[str]:
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def _signature(self, key: str, exp: int) -> str:
        return hmac_sha256_hex(self._url_key, f"{key}\n{exp}")

    def url_for(self, key: str, expires: int = DEFAULT_URL_EXPIRES_S) -> str:
        # Text checks only: signing touches no file, and the symlink check happens where the
        # URL is served (get -> path_for).
        self._checked_key(key)
        exp = int(self._clock()) + int(expires)
        sig = self._signature(key, exp)
        return f"{self.base_url}/lake/{quote(key, safe='/')}?exp={exp}&sig={sig}"

    def verify_url(self, key: str, exp: str | int, sig: str) -> bool:
        """True if (key, exp, sig) came from url_for with this url_key and has not expired.

        `key` is the decoded path after `/lake/`.
        """
        try:
            exp_value = int(exp)
            self._checked_key(key)
        except (TypeError, ValueError, BadRequest):
            return False
        if exp_value < self._clock():
            return False
        return hmac.compare_digest(self._signature(key, exp_value).encode(), str(sig).encode())


def lake_from_settings(settings: Settings, *, s3_client: Any = None) -> ObjectLake:
    """The lake a handler uses: the images bucket on AWS, a folder in the local stack."""
    if settings.images_bucket:
        if s3_client is None:
            import boto3
            from botocore.config import Config

            s3_client = boto3.client("s3", config=Config(signature_version="s3v4"))
        return S3Lake(s3_client, settings.images_bucket)
    if settings.local_lake_dir and settings.local_url_key:
        return LocalLake(
            settings.local_lake_dir, settings.local_url_key.encode(), settings.local_url_base
        )
    raise ValueError("settings name no lake")
