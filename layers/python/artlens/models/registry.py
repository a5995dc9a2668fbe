"""The model registry: the models a deployment can serve, by version.

A registered version is `<version>/artlens.json` (its card) with the ONNX file the card names
beside it, kept in a `ModelSource`:
  BucketSource   `models/<version>/` of the artifacts bucket (AWS). A version is downloaded
                 once into a cache folder (MODEL_CACHE_DIR, under /tmp on Lambda) and reused by
                 every later invocation of the container.
  FolderSource   `<root>/<version>/` on this machine (the local stack's `.artlens/models/`,
                 tests); the folder is its own cache, so its files are read in place.
Both load the same way (`ModelRegistry.card_for`): the card is read, its version must be the
one asked for, and the ONNX file's SHA-256 must be the card's, checked after every download
and on every reuse of a cached copy; a mismatch raises ModelIntegrityError and is never served.

The default card (MODEL_CARD_PATH, baked into the AWS image) counts as registered under its own
version, so a cold start of the deployed model never waits for the bucket. Predict and embed
serve the database's current version (artlens.models.versions.CurrentModel): when a reindex or
a rollback makes another registered version current, they fetch it from the bucket, with no new
image. Registering a version is publishing its card and ONNX file (`python -m
artlens.models.registry register`, `make register-model`); the functions only read models/.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from artlens.digests import sha256_hex
from artlens.models.card import (
    ModelCard,
    ModelIntegrityError,
    ModelNotRegistered,
    verified_model_bytes,
)
from artlens.models.classifier import OnnxClassifier, classifier_of
from artlens.names import MODEL_CARD_FILE, MODELS_PREFIX
from artlens.settings import Settings

logger = logging.getLogger(__name__)

# A version names a folder of the registry: no separators, no "..", nothing hidden.
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
# Cached versions kept on local disk besides the one just fetched (Lambda's /tmp is 512 MB by
# default; a v2 model is 10 MB): the oldest-used go first.
MAX_CACHED_VERSIONS = 4


class ModelSourceUnavailable(RuntimeError):
    """The registry's store could not be asked (S3 unreachable, access denied): nothing is
    known about the version, so the caller keeps what it serves and asks again later."""


def checked_version(version: str) -> str:
    if not isinstance(version, str) or not _SAFE_VERSION.match(version) or ".." in version:
        raise ModelIntegrityError(f"{version!r} is not a usable model version name")
    return version


def _checked_file_name(name: Any, where: str) -> str:
    """The card's `onnx_file`: a plain file name beside the card, nothing else."""
    if not isinstance(name, str) or not _SAFE_VERSION.match(name) or ".." in name:
        raise ModelIntegrityError(f"{where}: onnx_file {name!r} is not a plain file name")
    return name


def load_verified(card_path: Path, version: str) -> ModelCard:
    """The card at `card_path`, refused unless it is `version` and its ONNX file's SHA-256 is
    the one the card names (every source, every load)."""
    card = ModelCard.load(card_path)
    if card.version != version:
        raise ModelIntegrityError(f"{card_path} holds model version {card.version!r}")
    verified_model_bytes(card)
    return card


class ModelSource(Protocol):
    """Where registered versions live, each as `<version>/artlens.json` + its ONNX file."""

    @property
    def location(self) -> str:
        """Where it is, for messages (a folder, or s3://bucket/models/)."""

    @property
    def root(self) -> Path:
        """The local folder versions are read from (the folder itself, or the cache)."""

    def fetch(self, version: str) -> Path | None:
        """A local path of `version`'s card with its ONNX file beside it, or None when the
        source does not hold that version. Raises ModelIntegrityError for a copy that cannot
        be right (an ONNX file that is not the one its card names), ModelSourceUnavailable
        when the source cannot be asked."""

    def publish(self, card: ModelCard, card_bytes: bytes, model_bytes: bytes) -> None:
        """Store a version the caller has verified (model_bytes match the card) and found
        absent: the ONNX file first and the card last, so a reader that sees a card always
        finds its model."""

    def versions(self) -> list[str]:
        """Every version with a card, sorted."""


class FolderSource:
    """`<root>/<version>/` on this machine, read in place (the local stack, tests)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    @property
    def location(self) -> str:
        return f"{self.root}/"

    def fetch(self, version: str) -> Path | None:
        path = self.root / checked_version(version) / MODEL_CARD_FILE
        return path if path.is_file() else None

    def publish(self, card: ModelCard, card_bytes: bytes, model_bytes: bytes) -> None:
        target = self.root / checked_version(card.version)
        self.root.mkdir(parents=True, exist_ok=True)
        # Build the version folder beside its final place, then rename it in one step, so a
        # reader (predict in another process) never sees a card without its ONNX file.
        staging = self.root / f".{card.version}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()
        try:
            (staging / card.onnx_path.name).write_bytes(model_bytes)
            (staging / MODEL_CARD_FILE).write_bytes(card_bytes)
            try:
                os.rename(staging, target)
            except OSError:
                if not target.exists():
                    raise
                # Registered meanwhile by another process: the caller checks it is this model.
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if not p.name.startswith(".") and (p / MODEL_CARD_FILE).is_file())


class BucketSource:
    """`models/<version>/` of an S3 bucket, downloaded once into `cache_dir/<version>/`.

    Existence is asked with a listing of `models/<version>/` (the functions may list models/
    and read models/* only; a GET of a missing key would be a 403 without a bucket-wide
    ListBucket). A cached copy is re-verified on every reuse and downloaded again when it
    fails; a download whose ONNX file is not the one its card names is refused and never
    cached. Thread-safe: one fetch at a time per source.
    """

    def __init__(self, s3_client: Any | Callable[[], Any], bucket: str,
                 cache_dir: str | Path, prefix: str = MODELS_PREFIX):
        # A factory defers boto3's import and client set-up to the first fetch: a container
        # that serves only the baked-in default model never builds it.
        self._client_factory = s3_client if callable(s3_client) and not hasattr(
            s3_client, "get_object") else None
        self._client = None if self._client_factory else s3_client
        self.bucket = bucket
        self.prefix = prefix
        self.root = Path(cache_dir).expanduser().resolve()
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def s3(self) -> Any:
        if self._client is None:
            assert self._client_factory is not None
            self._client = self._client_factory()
        return self._client

    def key(self, version: str, name: str) -> str:
        return f"{self.prefix}{checked_version(version)}/{name}"

    def fetch(self, version: str) -> Path | None:
        folder = self.root / checked_version(version)
        card_path = folder / MODEL_CARD_FILE
        with self._lock:
            if card_path.is_file():
                try:
                    load_verified(card_path, version)
                    os.utime(folder)  # recently used: the last to be pruned
                    return card_path
                except ModelIntegrityError as exc:
                    logger.warning("the cached copy of model %s is damaged (%s); downloading "
                                   "it again", version, exc)
                    shutil.rmtree(folder, ignore_errors=True)
            return self._download(version, folder)

    def _download(self, version: str, folder: Path) -> Path | None:
        listed = set(self._call(self._list, f"{self.prefix}{version}/"))
        card_key = self.key(version, MODEL_CARD_FILE)
        if card_key not in listed:
            return None
        card_bytes = self._call(self._get, card_key)
        where = f"{self.location}{version}/{MODEL_CARD_FILE}"
        try:
            raw = json.loads(card_bytes)
            expected = str(raw["onnx_sha256"]).lower()
        except (ValueError, KeyError, TypeError):
            raise ModelIntegrityError(f"{where} is not a model card") from None
        onnx_name = _checked_file_name(raw.get("onnx_file"), where)
        onnx_key = self.key(version, onnx_name)
        if onnx_key not in listed:
            raise ModelIntegrityError(f"{where} names {onnx_name}, which is not beside it")
        model_bytes = self._call(self._get, onnx_key)
        actual = sha256_hex(model_bytes)
        if actual != expected:
            raise ModelIntegrityError(
                f"refused {self.location}{version}/{onnx_name}: its SHA-256 is {actual}, its "
                f"card says {expected} (tampered with or damaged; register the model again "
                "under a new version)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{version}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()
        try:
            (staging / onnx_name).write_bytes(model_bytes)
            (staging / MODEL_CARD_FILE).write_bytes(card_bytes)
            try:
                os.rename(staging, folder)
            except OSError:
                if not folder.exists():
                    raise  # else: cached meanwhile by another process, verified below
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        load_verified(folder / MODEL_CARD_FILE, version)  # what landed on disk, read back
        self._prune(keep=version)
        logger.info("model %s fetched from %s", version, self.location)
        return folder / MODEL_CARD_FILE

    def _prune(self, keep: str) -> None:
        cached = [p for p in self.root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != keep]
        cached.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in cached[MAX_CACHED_VERSIONS - 1:]:
            shutil.rmtree(stale, ignore_errors=True)

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def _get(self, key: str) -> bytes:
        response = self.s3.get_object(Bucket=self.bucket, Key=key)
        with response["Body"] as body:
            return body.read()

    def _call(self, fn: Callable[[str], Any], arg: str) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(arg)
        except (BotoCoreError, ClientError) as exc:
            raise ModelSourceUnavailable(f"{self.location}: {exc}") from exc

    def publish(self, card: ModelCard, card_bytes: bytes, model_bytes: bytes) -> None:
        # The checksum makes S3 itself refuse bytes that changed on the way (BadDigest).
        for name, data in ((card.onnx_path.name, model_bytes), (MODEL_CARD_FILE, card_bytes)):
            self.s3.put_object(
                Bucket=self.bucket, Key=self.key(card.version, name), Body=data,
                ChecksumSHA256=_checksum(data),
                ContentType="application/json" if name == MODEL_CARD_FILE
                else "application/octet-stream",
            )

    def versions(self) -> list[str]:
        found = {key[len(self.prefix):].split("/", 1)[0]
                 for key in self._call(self._list, self.prefix)
                 if key.endswith("/" + MODEL_CARD_FILE)}
        return sorted(found)


def _checksum(data: bytes) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


class ModelRegistry:
    """The models a deployment can serve, by version, from one `ModelSource` (a folder path
    means a FolderSource).

    `default_card` is the model the process was deployed with (MODEL_CARD_PATH); it counts as
    registered under its own version even when the source lacks it (the AWS image keeps it at
    `models/artlens.json`).
    """

    def __init__(self, source: ModelSource | str | Path,
                 default_card: str | Path | None = None):
        self.source: ModelSource = (
            FolderSource(source) if isinstance(source, (str, Path)) else source
        )
        self.default_card_path = (
            Path(default_card).expanduser().resolve() if default_card is not None else None
        )

    @property
    def root(self) -> Path:
        """The local folder registered versions are read from (a folder, or the cache)."""
        return self.source.root

    @property
    def location(self) -> str:
        return self.source.location

    @functools.cached_property
    def default_card(self) -> ModelCard | None:
        return ModelCard.load(self.default_card_path) if self.default_card_path else None

    def path_for(self, version: str) -> Path:
        """Where `version`'s card is read from locally (whether or not it is there)."""
        return self.root / checked_version(version) / MODEL_CARD_FILE

    def register(self, card_path: str | Path) -> str:
        """Publish a card and its ONNX file as `<version>/` of the source; returns the version.

        Idempotent: registering the same model again does nothing. A different model under a
        version that is already registered is refused, because rows in the index carry only
        the version and must stay comparable with the model that serves it.
        """
        card_path = Path(card_path).expanduser().resolve()
        card = ModelCard.load(card_path)
        checked_version(card.version)
        model_bytes = verified_model_bytes(card)
        if self.source.fetch(card.version) is None:
            self.source.publish(card, card_path.read_bytes(), model_bytes)
        self._check_registered(card)  # ours, or registered meanwhile by someone else
        return card.version

    def _check_registered(self, card: ModelCard) -> None:
        """The registered copy of `card.version` is this very model, intact."""
        fetched = self.source.fetch(card.version)
        if fetched is None:
            raise ModelNotRegistered(f"{card.version} did not reach {self.location}")
        existing = ModelCard.load(fetched)
        if existing.onnx_sha256 != card.onnx_sha256:
            raise ModelIntegrityError(
                f"model version {card.version!r} is already registered with another model "
                f"(ONNX SHA-256 {existing.onnx_sha256}); give the new model a new version"
            )
        try:
            registered = sha256_hex(existing.onnx_path.read_bytes())
        except OSError:
            registered = "unreadable"
        if registered != existing.onnx_sha256:
            raise ModelIntegrityError(
                f"the registered copy {existing.onnx_path} is damaged ({registered}); "
                f"delete {fetched.parent} and register the model again"
            )

    def card_for(self, version: str) -> ModelCard | None:
        """The verified card of `version`, or None when the registry does not hold it."""
        default = self.default_card
        if default is not None and default.version == version:
            return default
        path = self.source.fetch(version)
        return None if path is None else load_verified(path, version)

    def require(self, version: str) -> ModelCard:
        card = self.card_for(version)
        if card is None:
            raise ModelNotRegistered(
                f"model version {version!r} is not in the registry at {self.location}"
            )
        return card

    def versions(self) -> list[str]:
        """Every registered version (the default model's included)."""
        found = set(self.source.versions())
        if self.default_card is not None:
            found.add(self.default_card.version)
        return sorted(found)

    def classifier_for(self, version: str, threads: int = 1) -> OnnxClassifier:
        """The process-wide classifier of `version` (its ONNX file's SHA-256 is verified)."""
        return classifier_of(self.require(version), threads)

    def default_classifier(self, threads: int = 1) -> OnnxClassifier:
        if self.default_card is None:
            raise ModelIntegrityError("this registry has no default model card")
        return classifier_of(self.default_card, threads)


def s3_client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(signature_version="s3v4",
                                            retries={"mode": "standard"}))


def registry_from_settings(settings: Settings, *, s3: Any = None) -> ModelRegistry:
    """ARTIFACTS_BUCKET (AWS: models/ of the bucket, cached in MODEL_CACHE_DIR), else
    MODEL_REGISTRY_DIR, else the folder of MODEL_CARD_PATH (the image's models/ alone)."""
    if not settings.model_card_path:
        raise ValueError("settings name no model card")
    if settings.artifacts_bucket:
        source: ModelSource = BucketSource(
            s3 if s3 is not None else s3_client, settings.artifacts_bucket,
            settings.model_cache_dir,
        )
        return ModelRegistry(source, settings.model_card_path)
    root = settings.model_registry_dir or Path(settings.model_card_path).parent
    return ModelRegistry(root, settings.model_card_path)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None, *, s3: Any = None) -> int:
    """`python -m artlens.models.registry {register CARD | list} (--bucket B | --folder DIR)`:
    publish a model version (make register-model) or list the registered ones."""
    parser = argparse.ArgumentParser(prog="python -m artlens.models.registry",
                                     description=main.__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--bucket", help="the artifacts bucket (models/<version>/)")
    where.add_argument("--folder", help="a folder registry (the local stack's .artlens/models)")
    parser.add_argument("--cache-dir", default=None,
                        help="where --bucket copies are verified (default: a temporary folder)")
    commands = parser.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register", help="publish a card and its ONNX file")
    register.add_argument("card", help="model card JSON (its ONNX file beside it)")
    commands.add_parser("list", help="the registered versions")
    args = parser.parse_args(argv)

    import tempfile

    with tempfile.TemporaryDirectory(prefix="artlens-register-") as scratch:
        source: ModelSource = (
            FolderSource(args.folder) if args.folder
            else BucketSource(s3 if s3 is not None else s3_client, args.bucket,
                              args.cache_dir or scratch)
        )
        registry = ModelRegistry(source)
        try:
            if args.command == "list":
                for version in registry.versions():
                    print(version)
                return 0
            version = registry.register(args.card)
        except (ModelIntegrityError, ModelSourceUnavailable) as exc:
            print(f"register: {exc}", file=sys.stderr)
            return 1
    print(f"registered {version} in {registry.location}{version}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
