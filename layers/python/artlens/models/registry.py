"""The model registry: the models a deployment can serve, by version.

A folder of versions, `<root>/<version>/artlens.json` with the ONNX file beside it, plus the
default card the process was deployed with. Predict serves the database's current version from
it (artlens.models.versions.CurrentModel), so a reindex or a rollback changes what predict
answers with without a redeploy. On AWS the registry is the image's `/var/task/models/`
(read-only): a rollback there needs the previous version's files in the image
(`models/<version>/`) or restored from the artifacts bucket into a new image; otherwise predict
falls back to the default model.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import uuid
from pathlib import Path

from artlens.digests import sha256_hex
from artlens.models.card import (
    ModelCard,
    ModelIntegrityError,
    ModelNotRegistered,
    verified_model_bytes,
)
from artlens.models.classifier import OnnxClassifier, classifier_of
from artlens.names import MODEL_CARD_FILE
from artlens.settings import Settings

# A version names a folder of the registry: no separators, no "..", nothing hidden.
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class ModelRegistry:
    """The models a deployment can serve, by version: `<root>/<version>/artlens.json` + ONNX.

    `default_card` is the model the process was deployed with (MODEL_CARD_PATH); it counts as
    registered under its own version even when it lives outside `root` (the AWS image keeps it
    at `models/artlens.json`, the registry's root itself).
    """

    def __init__(self, root: str | Path, default_card: str | Path | None = None):
        self.root = Path(root).expanduser().resolve()
        self.default_card_path = (
            Path(default_card).expanduser().resolve() if default_card is not None else None
        )

    @functools.cached_property
    def default_card(self) -> ModelCard | None:
        return ModelCard.load(self.default_card_path) if self.default_card_path else None

    def path_for(self, version: str) -> Path:
        """Where `version`'s card lives in the registry (whether or not it is there)."""
        if not isinstance(version, str) or not _SAFE_VERSION.match(version) or ".." in version:
            raise ModelIntegrityError(f"{version!r} is not a usable model version name")
        return self.root / version / MODEL_CARD_FILE

    def register(self, card_path: str | Path) -> str:
        """Copy a card and its ONNX file into `<root>/<version>/`; returns the version.

        Idempotent: registering the same model again does nothing. A different model under a
        version that is already registered is refused, because rows in the index carry only
        the version and must stay comparable with the model that serves it.
        """
        card = ModelCard.load(card_path)
        target = self.path_for(card.version)
        model_bytes = verified_model_bytes(card)
        if target.parent.exists():
            self._check_registered(card, target)
            return card.version
        self.root.mkdir(parents=True, exist_ok=True)
        # Build the version folder beside its final place, then rename it in one step, so a
        # reader (predict in another process) never sees a card without its ONNX file.
        staging = self.root / f".{card.version}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()
        try:
            (staging / card.onnx_path.name).write_bytes(model_bytes)
            shutil.copyfile(Path(card_path).expanduser().resolve(), staging / MODEL_CARD_FILE)
            try:
                os.rename(staging, target.parent)
            except OSError:
                if not target.parent.exists():
                    raise
                self._check_registered(card, target)  # registered meanwhile by another process
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return card.version

    @staticmethod
    def _check_registered(card: ModelCard, target: Path) -> None:
        """The registered copy of `card.version` is this very model, intact."""
        existing = ModelCard.load(target)
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
                f"delete {target.parent} and register the model again"
            )

    def card_for(self, version: str) -> ModelCard | None:
        """The card of `version`, or None when the registry does not hold it."""
        default = self.default_card
        if default is not None and default.version == version:
            return default
        path = self.path_for(version)
        if not path.is_file():
            return None
        card = ModelCard.load(path)
        if card.version != version:
            raise ModelIntegrityError(f"{path} holds model version {card.version!r}")
        return card

    def require(self, version: str) -> ModelCard:
        card = self.card_for(version)
        if card is None:
            raise ModelNotRegistered(
                f"model version {version!r} is not in the registry at {self.root}"
            )
        return card

    def classifier_for(self, version: str, threads: int = 1) -> OnnxClassifier:
        """The process-wide classifier of `version` (its ONNX file's SHA-256 is verified)."""
        return classifier_of(self.require(version), threads)

    def default_classifier(self, threads: int = 1) -> OnnxClassifier:
        if self.default_card is None:
            raise ModelIntegrityError("this registry has no default model card")
        return classifier_of(self.default_card, threads)


def registry_from_settings(settings: Settings) -> ModelRegistry:
    """MODEL_REGISTRY_DIR, or the folder of MODEL_CARD_PATH (the AWS image's models/)."""
    if not settings.model_card_path:
        raise ValueError("settings name no model card")
    root = settings.model_registry_dir or Path(settings.model_card_path).parent
    return ModelRegistry(root, settings.model_card_path)
