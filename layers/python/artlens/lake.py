"""The object lake: where pictures live. S3 on AWS, a folder in the local stack.

Prefixes (artlens.names): `incoming/` (drops waiting to be indexed), `gallery/<sha256>.<ext>`
(indexed pictures; labels live in the index, not in keys, so a new model never moves objects)
and `rejected/<sha256>` (or `rejected/<uuid>` for a drop too large to read) with
`rejected/<id>.reason.json` beside it, which names the original key.

Ingestion deletes exactly the object it read, never a newer one written under the same name
meanwhile: `get_version` returns the bytes with a version token and `delete_version` removes that
version only (S3: the object version, or an If-Match on its ETag in an unversioned bucket; the
folder: the file is taken by an atomic rename and put back if it is not the one that was read).

`upload_url` lets a program PUT one picture straight into the lake (POST /uploads), past API
Gateway's body limit. The URL binds the method, the key, the Content-Type, the exact length and
the SHA-256 of the bytes (S3: signed `content-length` and `x-amz-checksum-sha256` headers, which
S3 enforces), so what lands under `uploads/<sha256>` is always the picture that hash names.

`cacheable_url_for` signs a GET whose expiry is rounded to the hour, so the page's renditions
(`renditions/`, artlens.renditions) keep one URL for an hour and browsers cache them.
"""

from __future__ import annotations

import base64
import hmac
import os
import stat
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import quote

from artlens.digests import hmac_sha256_hex, sha256_hex
from artlens.errors import BadRequest, ImageRejected, NotFound
from artlens.names import RENDITIONS_PREFIX
from artlens.settings import Settings

DEFAULT_URL_EXPIRES_S = 900
CACHEABLE_URL_PERIOD_S = 3600  # cacheable_url_for: one URL per object and hour
# Stored with renditions on S3, so CloudFront (whose CACHING_OPTIMIZED policy follows it) and
# browsers keep them a day: a rendition's key names its original's SHA-256, so the same URL
# always shows the same picture. Only on the objects, never on a 403 for one not written yet.
RENDITION_CACHE_CONTROL = "public, max-age=86400"
_TMP_PREFIX = ".artlens-tmp-"


@dataclass(frozen=True)
class VersionedObject:
    """What `get_version` read: the bytes (None when the object is larger than max_bytes: it
    was not downloaded), its size, and the token `delete_version` needs to remove exactly it."""

    data: bytes | None
    size: int
    version: str


class ObjectLake(Protocol):
    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes. NotFound if absent; ImageRejected('too_large') past max_bytes."""

    def get_version(self, key: str, max_bytes: int | None = None) -> VersionedObject:
        """The object's bytes and version. NotFound if absent."""

    def delete_version(self, key: str, version: str) -> bool:
        """Delete the object if (and only if) it is still that version; False when the key now
        holds another object, which is left in place."""

    def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None: ...

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        """Write the object unless the key already holds one, in one call; True when written.
        For content-addressed keys, where an object already there is the same bytes."""

    def copy(self, src: str, dst: str) -> None: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]: ...

    def url_for(self, key: str, expires: int = DEFAULT_URL_EXPIRES_S) -> str: ...

    def cacheable_url_for(self, key: str, now: float | None = None) -> str:
        """A GET URL valid for one to two hours (until `cacheable_expiry`) that is the same
        string for every call in the same clock hour, so browsers and CDNs can cache what it
        names (S3Lake cannot pin the signing time: see there). `now` (epoch seconds) defaults
        to the lake's clock."""

    def upload_url(
        self, key: str, content_type: str, size: int, sha256: str,
        expires: int = DEFAULT_URL_EXPIRES_S,
    ) -> str:
        """A URL that takes one PUT of exactly `size` bytes whose SHA-256 (hex) is `sha256`, sent
        with the headers `upload_headers(content_type, sha256)`, until `expires` seconds pass."""


def checksum_header(sha256: str) -> str:
    """`x-amz-checksum-sha256`'s value for a hex digest: the digest's bytes in base64."""
    return base64.b64encode(bytes.fromhex(sha256)).decode("ascii")


def upload_headers(content_type: str, sha256: str) -> dict[str, str]:
    """The headers a PUT to an upload URL must send as they are (the URL's signature covers
    them); the HTTP client adds Content-Length, which must be the size asked for."""
    return {"Content-Type": content_type, "x-amz-checksum-sha256": checksum_header(sha256)}


def cacheable_expiry(now: float) -> int:
    """The expiry of a cacheable URL signed at `now`: the next full hour plus one hour. Every
    call within one clock hour gets the same value, and the URL stays valid for at least an
    hour after it was handed out (a page left open keeps working)."""
    period = CACHEABLE_URL_PERIOD_S
    return (int(now) // period + 2) * period


def _too_large(size: int, max_bytes: int | None) -> ImageRejected:
    return ImageRejected(
        "too_large", f"The object is {size:,} bytes; the limit is {max_bytes or 0:,} bytes."
    )


def _data_of(read: VersionedObject, max_bytes: int | None) -> bytes:
    """`get`'s answer: the bytes, or too_large when they were not read for their size."""
    if read.data is None:
        raise _too_large(read.size, max_bytes)
    return read.data


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
        return _data_of(self.get_version(key, max_bytes), max_bytes)

    def get_version(self, key: str, max_bytes: int | None = None) -> VersionedObject:
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._is_missing(exc):
                raise NotFound(f"No object {key!r}.") from None
            raise
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            version_id = response.get("VersionId")
            # A versioned bucket names each object version; otherwise its ETag identifies the
            # content and delete_version makes the delete conditional on it.
            if version_id and version_id != "null":
                version = f"version:{version_id}"
            else:
                version = f"etag:{response.get('ETag', '')}"
            # Checked before reading so a huge drop never lands in the function's memory.
            if max_bytes is not None and size > max_bytes:
                return VersionedObject(None, size, version)
            return VersionedObject(body.read(), size, version)
        finally:
            body.close()

    def delete_version(self, key: str, version: str) -> bool:
        kind, _, value = version.partition(":")
        if kind == "version":
            # Removes that version only; a newer upload stays the current object. (Needs
            # s3:DeleteObjectVersion on incoming/*.)
            self._s3.delete_object(Bucket=self.bucket, Key=key, VersionId=value)
            return True
        if kind != "etag" or not value:
            raise ValueError(f"not a version token of this lake: {version!r}")
        from botocore.exceptions import ClientError

        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key, IfMatch=value)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412"):
                return False
            if self._is_missing(exc):
                return True
            raise
        return True

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        extra = {}
        if key.startswith(RENDITIONS_PREFIX):
            extra["CacheControl"] = RENDITION_CACHE_CONTROL
        self._s3.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, **extra
        )

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        from botocore.exceptions import ClientError

        try:
            # S3 conditional write: one request instead of a HEAD and a PUT.
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data,
                                ContentType=content_type, IfNoneMatch="*")
        except ClientError as exc:
            # 412: the key holds an object; 409: another write of it is in flight.
            if exc.response.get("Error", {}).get("Code") in (
                    "PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

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

    def cacheable_url_for(self, key: str, now: float | None = None) -> str:
        """A presigned GET valid until `cacheable_expiry`, but NOT the same string within the
        hour: botocore signs with the current time (X-Amz-Date) and offers no supported way to
        choose it (boto/botocore#2647, declined). On AWS the page gets renditions through
        CloudFront instead (RENDITIONS_BASE_URL: stable URLs, cached at the edge), so this is
        only the fallback of a deployment without it. `now` only sets the expiry."""
        now = time.time() if now is None else now
        return self.url_for(key, expires=max(1, cacheable_expiry(now) - int(time.time())))

    def upload_url(
        self, key: str, content_type: str, size: int, sha256: str,
        expires: int = DEFAULT_URL_EXPIRES_S,
    ) -> str:
        # Params that become headers are signed (X-Amz-SignedHeaders): S3 refuses a PUT whose
        # length, type or checksum differs, and checks the checksum against the bytes (BadDigest).
        # Needs s3:PutObject on the key's prefix for the role that signs.
        return self._s3.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket, "Key": key, "ContentType": content_type,
                "ContentLength": int(size), "ChecksumSHA256": checksum_header(sha256),
            },
            ExpiresIn=int(expires),
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
        path = self.root / posix
        # A canonical relative key stays inside the (resolved) root unless one of its own
        # components is a symlink, which may point outside: lstat those few components and
        # resolve() only then. resolve() on every call walked the root's whole path again
        # (~0.1 ms; ingest asks ~7 times a picture).
        if self._has_link(posix):
            path = path.resolve()
            if not path.is_relative_to(self.root) or path == self.root:
                raise BadRequest("Invalid object key.", code="invalid_key")
        return path

    def _has_link(self, posix: PurePosixPath) -> bool:
        """Whether a component of the key, below the root, is a symlink (walked root-side
        first: a component that does not exist yet ends the walk, nothing below it can be)."""
        current = str(self.root)
        for part in posix.parts:
            current = f"{current}/{part}"
            try:
                if stat.S_ISLNK(os.lstat(current).st_mode):
                    return True
            except (FileNotFoundError, NotADirectoryError):
                return False
        return False

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return _data_of(self.get_version(key, max_bytes), max_bytes)

    def get_version(self, key: str, max_bytes: int | None = None) -> VersionedObject:
        path = self.path_for(key)
        try:
            with path.open("rb") as handle:
                info = os.fstat(handle.fileno())
                version = _file_version(info)
                if max_bytes is not None and info.st_size > max_bytes:
                    return VersionedObject(None, info.st_size, version)
                data = handle.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"No object {key!r}.") from None
        return VersionedObject(data, len(data), version)

    def delete_version(self, key: str, version: str) -> bool:
        """Take the file by an atomic rename to a private name, then look at what was taken: the
        file that was read is deleted; a newer one (same name written since) is linked back
        under its name (or beside it if the name was taken yet again)."""
        path = self.path_for(key)
        claimed = path.with_name(f"{_TMP_PREFIX}claim-{uuid.uuid4().hex}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return True  # gone already: nothing of ours is left to delete
        try:
            if _file_version(os.stat(claimed)) == version:
                return True
            try:
                os.link(claimed, path)
            except FileExistsError:
                # The name was taken yet again: keep this one too, under a fresh name (a new
                # drop for the watcher), so no picture is ever lost.
                os.link(claimed, path.with_name(f"{uuid.uuid4().hex[:8]}-{path.name}"))
            return False
        finally:
            claimed.unlink(missing_ok=True)

    @staticmethod
    def _publish(path: Path, data: bytes, move: Callable[[Path, Path], None]) -> None:
        """Write a temporary file beside `path`, then `move` it there, so a watcher or a reader
        never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            move(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._publish(self.path_for(key), data, os.replace)

    def put_if_absent(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> bool:
        path = self.path_for(key)
        if path.is_file():  # a stat costs microseconds here, unlike writing the bytes again
            return False
        try:
            # link() fails when the name exists: whole file or nothing, never overwritten.
            self._publish(path, data, os.link)
        except FileExistsError:
            return False
        return True

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
        # The method is the first line, so a GET link can never pass for an upload or back.
        return hmac_sha256_hex(self._url_key, f"GET\n{key}\n{exp}")

    def _upload_signature(
        self, key: str, exp: int, content_type: str, size: int, checksum: str
    ) -> str:
        return hmac_sha256_hex(
            self._url_key, f"PUT\n{key}\n{exp}\n{content_type}\n{size}\n{checksum}"
        )

    def url_for(self, key: str, expires: int = DEFAULT_URL_EXPIRES_S) -> str:
        # Text checks only: signing touches no file, and the symlink check happens where the
        # URL is served (get -> path_for).
        self._checked_key(key)
        exp = int(self._clock()) + int(expires)
        sig = self._signature(key, exp)
        return f"{self.base_url}/lake/{quote(key, safe='/')}?exp={exp}&sig={sig}"

    def cacheable_url_for(self, key: str, now: float | None = None) -> str:
        """url_for with the expiry rounded (cacheable_expiry): the same URL all hour."""
        self._checked_key(key)
        exp = cacheable_expiry(self._clock() if now is None else now)
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

    def upload_url(
        self, key: str, content_type: str, size: int, sha256: str,
        expires: int = DEFAULT_URL_EXPIRES_S,
    ) -> str:
        """Like S3's presigned PUT: the signature covers the headers the PUT must carry (type,
        length, checksum), which the local gateway passes to verify_upload as it got them."""
        self._checked_key(key)
        exp = int(self._clock()) + int(expires)
        sig = self._upload_signature(key, exp, content_type, int(size), checksum_header(sha256))
        return f"{self.base_url}/lake/{quote(key, safe='/')}?m=PUT&exp={exp}&sig={sig}"

    def verify_upload(
        self, key: str, query: Mapping[str, str], content_type: str, size: int, checksum: str
    ) -> bool:
        """True if a PUT of `size` bytes to `key` with that Content-Type and
        x-amz-checksum-sha256 is what an unexpired upload_url signed. That the bytes match the
        checksum is for the receiver to check once it has them (`matches_checksum`)."""
        try:
            exp_value = int(query.get("exp", ""))
            self._checked_key(key)
        except (TypeError, ValueError, BadRequest):
            return False
        if query.get("m") != "PUT" or exp_value < self._clock():
            return False
        expected = self._upload_signature(key, exp_value, content_type, size, checksum)
        return hmac.compare_digest(expected.encode(), str(query.get("sig", "")).encode())


def matches_checksum(data: bytes, checksum: str) -> bool:
    """Whether `data` is what an x-amz-checksum-sha256 value (base64 SHA-256) names."""
    return hmac.compare_digest(checksum_header(sha256_hex(data)), checksum)


def _file_version(info: os.stat_result) -> str:
    """A file's identity: a replacement (write + rename) has another inode, an overwrite in
    place another size or modification time."""
    return f"file:{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"


def lake_from_settings(settings: Settings, *, s3_client: Any = None) -> ObjectLake:
    """The lake a handler uses: the images bucket on AWS, a folder in the local stack."""
    if settings.images_bucket:
        if s3_client is None:
            import boto3
            from botocore.config import Config

            # One pooled connection per concurrent ingest call (artlens.ingest.Concurrency), or
            # urllib3 drops the extra connections and each call pays a new TLS handshake.
            pool = max(10, settings.ingest_workers)
            s3_client = boto3.client(
                "s3", config=Config(signature_version="s3v4", max_pool_connections=pool)
            )
        return S3Lake(s3_client, settings.images_bucket)
    if settings.local_lake_dir and settings.local_url_key:
        return LocalLake(
            settings.local_lake_dir, settings.local_url_key.encode(), settings.local_url_base
        )
    raise ValueError("settings name no lake")
