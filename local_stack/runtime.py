"""The serving side of the local stack: the real handlers plus what the gateway needs besides.

Imported only after `local_stack.__main__` has set the environment, which the handlers read on
their first invocation (artlens.wiring), exactly as at a Lambda cold start.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artlens.errors import ArtLensError
from artlens.index.database import database_from_settings
from artlens.index.embeddings import EmbeddingStore
from artlens.lake import LocalLake, lake_from_settings
from artlens.models.card import ModelCard
from artlens.settings import Settings

log = logging.getLogger("local_stack.runtime")

# Objects the lake route will hand out; anything else is served as a download.
LAKE_CONTENT_TYPES = ("image/",)


@dataclass
class LocalRuntime:
    store: EmbeddingStore
    lake: LocalLake
    model_version: str  # the version the index answered with at start
    shipped_version: str  # the model this stack was started with (models/artlens.json)
    authorizer_handler: Callable[[dict[str, Any], Any], Any]
    predict_handler: Callable[[dict[str, Any], Any], Any]
    embed_handler: Callable[[dict[str, Any], Any], Any]

    def __post_init__(self) -> None:
        self._store_lock = threading.Lock()

    @classmethod
    def start(cls, *, dsn: str, card_path: Path, lake_dir: Path, url_key: str) -> LocalRuntime:
        """Migrate, register the model version, then import (cold-start) the three handlers."""
        from artlens.models.versions import ensure_model_version

        settings = Settings.from_env(os.environ, needs=("model", "database", "lake", "token"))
        store = EmbeddingStore(database_from_settings(settings))
        applied = store.migrate()
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        card = ModelCard.load(card_path)
        current = ensure_model_version(store, card)  # the card suffices: no ONNX session
        lake = lake_from_settings(settings)
        assert isinstance(lake, LocalLake)  # the local stack serves signed URLs of a folder

        import lambdas.authorizer
        import lambdas.embed
        import lambdas.predict

        return cls(
            store=store,
            lake=lake,
            model_version=current,
            shipped_version=card.version,
            authorizer_handler=lambdas.authorizer.handler,
            predict_handler=lambdas.predict.handler,
            embed_handler=lambdas.embed.handler,
        )

    def upgrade_notice(self) -> str | None:
        """What to tell the user when the collection is indexed with another model than the one
        this stack ships (after a model update, or after a rollback)."""
        if self.model_version == self.shipped_version:
            return None
        return (
            f"Your collection is indexed with model {self.model_version}, which keeps answering; "
            f"this stack ships model {self.shipped_version}. Move to it with `make reindex` "
            f"(it re-embeds the gallery while {self.model_version} answers, then switches; "
            "`make rollback` switches back)."
        )

    def health(self) -> dict[str, Any]:
        """The model predict answers with (the index's current version, which a reindex or a
        rollback changes while the stack runs), and how many gallery rows it can search."""
        from artlens.models.versions import versions_of

        with self._store_lock:
            current = versions_of(self.store).current() or self.model_version
            indexed = self.store.count(current)
        return {"status": "ok", "model_version": current, "indexed": indexed}

    def lake_object(
        self, key: str, exp: str, sig: str, content_type_for: Callable[[str], str]
    ) -> tuple[bytes, str] | None:
        if not self.lake.verify_url(key, exp, sig):
            return None
        try:
            data = self.lake.get(key)
        except ArtLensError:
            return None
        content_type = content_type_for(key)
        if not content_type.startswith(LAKE_CONTENT_TYPES):
            content_type = "application/octet-stream"
        return data, content_type

    def close(self) -> None:
        with self._store_lock:
            self.store.close()
