"""What the model-serving handlers (predict, embed, reindex) and the local stack share: settings,
the model registry, the index and the lake, built from the environment in one call."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from artlens.index.database import database_from_settings
from artlens.index.embeddings import EmbeddingStore
from artlens.lake import ObjectLake, lake_from_settings
from artlens.models.registry import ModelRegistry, registry_from_settings
from artlens.settings import Settings

SERVING_PARTS = ("model", "database", "lake")


@dataclass(frozen=True)
class Serving:
    settings: Settings
    registry: ModelRegistry
    store: EmbeddingStore  # connects on first use
    lake: ObjectLake

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], *, needs: Collection[str] = SERVING_PARTS
    ) -> Serving:
        """Settings validated (ConfigError names what is missing), then the clients."""
        settings = Settings.from_env(environ, needs=needs)
        return cls(
            settings=settings,
            registry=registry_from_settings(settings),
            store=EmbeddingStore(database_from_settings(settings)),
            lake=lake_from_settings(settings),
        )
