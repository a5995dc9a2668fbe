"""The fan-out reindex's switch step (artlens.models.versions.activate_reindexed) at scale: it
finds the pictures still missing a row of the new version with one indexed query, embeds
those stragglers, and switches, without ever listing the gallery. Real PostgreSQL + pgvector,
two tiny real ONNX models, a folder lake."""

from __future__ import annotations

from typing import Any

from artlens.ingest import ingest_objects
from artlens.lake import LocalLake
from artlens.models.card import ModelCard
from artlens.models.classifier import OnnxClassifier
from artlens.models.versions import (
    activate_reindexed,
    ensure_model_version,
    reembed_keys,
    versions_of,
)
from tests.imagegen import artwork, encode


class NoListing:
    """The lake, except that listing is an error: the switch must not need it."""

    def __init__(self, lake: LocalLake):
        self._lake = lake

    def list(self, prefix: str) -> list[str]:
        raise AssertionError(f"the switch step listed {prefix}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lake, name)


def indexed_by_old(tmp_path, store, old_card, new_card, pictures: int, seed: int):
    """A folder lake whose `pictures` are indexed by the old model (the current version); the
    lake, the old and the new classifier."""
    lake = LocalLake(tmp_path / "lake", b"switch-step")
    old = OnnxClassifier(ModelCard.load(old_card))
    new = OnnxClassifier(ModelCard.load(new_card))
    ensure_model_version(store, old)
    keys = [f"incoming/p{seed + i}.png" for i in range(pictures)]
    for i, key in enumerate(keys):
        lake.put(key, encode(artwork(seed + i, (90, 70)), "PNG"))
    ingest_objects(keys, lake, old, store)
    return lake, old, new


def test_switch_embeds_the_stragglers_and_switches_without_listing(
    tmp_path, store, tiny_model_card, tiny_model_card_v2
):
    lake, old, new = indexed_by_old(tmp_path, store, tiny_model_card, tiny_model_card_v2, 6, 700)
    gallery = store.keys(old.version)
    assert len(gallery) == 6
    # The map's batches embedded four pictures with the new model; two were ingested (by the
    # serving, old version) while it ran, and one of the old rows lost its gallery object.
    reembed_keys(store, lake, new, gallery[:4])
    (tmp_path / "lake" / gallery[5]).unlink()
    assert versions_of(store).current() == old.version

    report = activate_reindexed(store, NoListing(lake), new)

    assert report.activated is True
    assert versions_of(store).current() == new.version
    assert report.total == 2 and report.embedded == 1 and report.missing == 1
    assert report.unusable_keys == [gallery[5]]
    assert set(store.keys(new.version)) == set(gallery[:5])
    assert store.keys_missing_from(new.version, old.version) == [gallery[5]]


def test_switch_refuses_while_a_straggler_cannot_be_read_for_a_transient_reason(
    tmp_path, store, tiny_model_card, tiny_model_card_v2
):
    lake, old, new = indexed_by_old(tmp_path, store, tiny_model_card, tiny_model_card_v2, 3, 800)

    class Down(NoListing):
        def get(self, key: str, *args: Any, **kwargs: Any) -> bytes:
            raise ConnectionError("injected: S3 is unreachable")

    try:
        activate_reindexed(store, Down(lake), new)
    except ConnectionError:
        pass  # the state machine retries the step; nothing switched meanwhile
    else:
        raise AssertionError("a transient read failure must fail the switch step")
    assert versions_of(store).current() == old.version
