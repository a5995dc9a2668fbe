"""The serving side of the local stack: the real handlers plus what the gateway needs besides.

Imported only after `local_stack.__main__` has set the environment, because the handlers build
their Settings from it at import, exactly as at a Lambda cold start.
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
from artlens.lake import lake_from_settings
from artlens.model import ModelCard
from artlens.settings import Settings
from artlens.store import EmbeddingStore, store_from_settings

log = logging.getLogger("local_stack.runtime")

# Objects the lake route will hand out; anything else is served as a download.
LAKE_CONTENT_TYPES = ("image/",)


@dataclass
class LocalRuntime:
    store: EmbeddingStore
    lake: Any
    model_version: str
    authorizer_handler: Callable[[dict, Any], Any]
    predict_handler: Callable[[dict, Any], Any]
    embed_handler: Callable[[dict, Any], Any]

    def __post_init__(self) -> None:
        self._store_lock = threading.Lock()

    @classmethod
    def start(cls, *, dsn: str, card_path: Path, lake_dir: Path, url_key: str) -> LocalRuntime:
        """Migrate, register the model version, then import (cold-start) the three handlers."""
        from artlens.ingest import ensure_model_version

        settings = Settings.from_env(os.environ, needs=("model", "database", "lake", "token"))
        store = store_from_settings(settings)
        applied = store.migrate()
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        card = ModelCard.load(card_path)
        # ensure_model_version reads only `.version`; the card has it without loading ONNX.
        current = ensure_model_version(store, card)
        if current != card.version:
            log.warning(
                "the index answers with model %s while this model is %s; new pictures are "
                "indexed for both after a reindex (make reindex)", current, card.version,
            )
        lake = lake_from_settings(settings)

        import lambdas.authorizer
        import lambdas.embed
        import lambdas.predict

        return cls(
            store=store,
            lake=lake,
            model_version=card.version,
            authorizer_handler=lambdas.authorizer.handler,
            predict_handler=lambdas.predict.handler,
            embed_handler=lambdas.embed.handler,
        )

    def health(self) -> dict:
        """The model predict answers with, and how many gallery rows it can search."""
        with self._store_lock:
            indexed = self.store.count(self.model_version)
        return {"status": "ok", "model_version": self.model_version, "indexed": indexed}

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
