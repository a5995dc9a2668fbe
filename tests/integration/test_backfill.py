"""The backfill / reindex map run locally (local_stack.backfill) with the real batch handler
(lambdas.batch, the Distributed Map child): real PostgreSQL + pgvector, two tiny real ONNX
models (tiny-0 deployed, tiny-1 registered), a folder lake. Failures are injected into a few
batches, by a lake that fails a read once and by a handler that fails a batch's first call."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from artlens.errors import BadRequest
from artlens.lake import LocalLake
from artlens.models.registry import ModelRegistry
from artlens.models.versions import versions_of
from local_stack.backfill import RESULTS_PREFIX, list_batches, run_map
from local_stack.events import LambdaContext
from tests.imagegen import artwork, encode

URL_KEY = "backfill-url-key"
PICTURES = 11  # + one picture dropped twice: 12 drops, 4 batches of 3


class FlakyLake:
    """The lake, except that the first read of each of `fail_once` keys raises (an S3 5xx)."""

    def __init__(self, lake: LocalLake, fail_once: set[str]):
        self._lake = lake
        self._fail_once = set(fail_once)
        self.failed: list[str] = []

    def get_version(self, key: str, *args: Any, **kwargs: Any):
        if key in self._fail_once:
            self._fail_once.discard(key)
            self.failed.append(key)
            raise ConnectionError(f"injected: reading {key} failed")
        return self._lake.get_version(key, *args, **kwargs)

    def get(self, key: str, *args: Any, **kwargs: Any) -> bytes:
        if key in self._fail_once:
            self._fail_once.discard(key)
            self.failed.append(key)
            raise ConnectionError(f"injected: reading {key} failed")
        return self._lake.get(key, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lake, name)


class FirstCallFails:
    """The handler, except that batches starting with one of `keys` fail `times` calls first
    (the child Lambda crashed or timed out before doing anything)."""

    def __init__(self, handler, first_keys: set[str], times: int = 1):
        self.handler = handler
        self.left = {key: times for key in first_keys}
        self.calls: list[dict] = []

    def __call__(self, event: dict, context: Any) -> dict:
        self.calls.append(event)
        first = event.get("Items", [{}])[0].get("Key")
        if self.left.get(first, 0) > 0:
            self.left[first] -= 1
            raise TimeoutError(f"injected: batch at {first} timed out")
        return self.handler(event, context)


@pytest.fixture
def lake(tmp_path) -> LocalLake:
    return LocalLake(tmp_path / "lake", URL_KEY.encode())


@pytest.fixture
def batch(monkeypatch, tmp_path, pg_dsn, lake, store, tiny_model_card, tiny_model_card_v2):
    """lambdas.batch imported afresh with the environment of the local stack: tiny-0 deployed,
    tiny-1 in the registry."""
    registry = tmp_path / "models"
    assert ModelRegistry(registry, tiny_model_card).register(tiny_model_card_v2) == "tiny-1"
    for name, value in {
        "MODEL_CARD_PATH": str(tiny_model_card), "MODEL_REGISTRY_DIR": str(registry),
        "DATABASE_URL": pg_dsn, "LOCAL_LAKE_DIR": str(Path(lake.root)),
        "LOCAL_URL_KEY": URL_KEY, "LOCAL_URL_BASE": "",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("IMAGES_BUCKET", raising=False)
    sys.modules.pop("lambdas.batch", None)
    module = importlib.import_module("lambdas.batch")
    yield module
    module.reset()


def with_lake(monkeypatch, batch, lake) -> None:
    """Make the handler use `lake` (e.g. a FlakyLake) instead of the one it built."""
    built = batch.deps()
    wrapped = dataclasses.replace(built, serving=dataclasses.replace(built.serving, lake=lake))
    monkeypatch.setattr(batch, "deps", lambda: wrapped)


def drop_pictures(lake: LocalLake) -> dict[str, bytes]:
    drops = {f"incoming/{i:02d}.png": encode(artwork(i), "PNG") for i in range(PICTURES)}
    drops["incoming/99 twin.png"] = drops["incoming/03.png"]  # the same picture, dropped twice
    for key, data in drops.items():
        lake.put(key, data)
    return drops


def no_sleep(delays: list[float]):
    return delays.append


def test_backfill_indexes_every_picture_exactly_once_after_failed_batches(
    monkeypatch, batch, lake, store
):
    drops = drop_pictures(lake)
    chunks = list_batches(lake, "incoming/", 3)
    assert len(chunks) == 4 and sum(map(len, chunks)) == len(drops)
    # Batch 1: one picture's read fails once, after the others of the batch were indexed (a
    # partial batch: the retry must redo only that one). Batch 3: the whole first call fails.
    flaky = FlakyLake(lake, {chunks[1][1]})
    with_lake(monkeypatch, batch, flaky)
    handler = FirstCallFails(batch.handler, {chunks[3][0]})
    delays: list[float] = []

    report = run_map(lake, handler, mode="backfill", batch_size=3, workers=2,
                     tolerated_failure_percent=0, sleep=no_sleep(delays))

    assert flaky.failed == [chunks[1][1]]
    assert report.succeeded and report.failed_batches == 0
    assert report.retries == 2 and len(delays) == 2
    assert len(handler.calls) == 6  # 4 batches + 2 retries
    assert Counter(r.attempts for r in report.results) == {1: 2, 2: 2}
    # Every picture exactly once: one row and one gallery object per distinct picture.
    distinct = {hashlib.sha256(d).hexdigest() for d in drops.values()}
    rows = store.keys("tiny-0")
    assert len(rows) == len(distinct) == PICTURES
    assert {key.removeprefix("gallery/").split(".")[0] for key in rows} == distinct
    assert sorted(lake.list("gallery/")) == rows
    assert lake.list("incoming/") == []
    # The retried partial batch found its other pictures done (moved: skipped), not re-indexed.
    retried_partial = report.results[1].output
    assert retried_partial["indexed"] == 1 and retried_partial["skipped"] == 2
    # Results are those of each batch's succeeding attempt: the two pictures the failed first
    # attempt indexed are counted there, so the batches account for every drop once.
    outputs = [r.output for r in report.results]
    assert sum(o["indexed"] for o in outputs) + retried_partial["skipped"] == PICTURES
    assert sum(o["duplicates"] for o in outputs) == 1  # the twin
    assert sum(o["items"] for o in outputs) == len(drops)
    # The results file, as the ResultWriter writes one per run.
    written = json.loads(lake.get(report.results_key))
    assert report.results_key.startswith(RESULTS_PREFIX)
    assert written["items"] == len(drops) and written["failed_items"] == 0
    assert [r["attempts"] for r in written["results"]] == [1, 2, 1, 2]


def gallery_with_tiny0(monkeypatch, batch, lake) -> int:
    drops = drop_pictures(lake)
    report = run_map(lake, batch.handler, mode="backfill", batch_size=4, workers=2)
    assert report.succeeded
    return len({hashlib.sha256(d).hexdigest() for d in drops.values()})


def test_reindex_switches_only_once_every_batch_succeeded(monkeypatch, batch, lake, store):
    pictures = gallery_with_tiny0(monkeypatch, batch, lake)
    chunks = list_batches(lake, "gallery/", 3)
    handler = FirstCallFails(batch.handler, {chunks[0][0], chunks[2][0]})

    report = run_map(lake, handler, mode="reindex", version="tiny-1", batch_size=3, workers=2,
                     sleep=no_sleep([]))

    assert report.succeeded and report.failed_batches == 0 and report.retries == 2
    assert report.activated is True
    assert handler.calls[-1] == {"activate": {"version": "tiny-1"}}  # after every batch
    assert versions_of(store).current() == "tiny-1"
    assert store.keys("tiny-1") == store.keys("tiny-0")
    assert store.count("tiny-1") == pictures
    assert sum(r.output["embedded"] for r in report.results) == pictures
    assert report.activation["caught_up"] == 0  # the batches had done it all


@pytest.mark.parametrize("tolerated", [0, 50])
def test_reindex_does_not_switch_when_a_batch_keeps_failing(
    monkeypatch, batch, lake, store, tolerated
):
    """0%: the failed batch exceeds the threshold, the run fails. 50%: the run is within its
    tolerance, but a reindex switches only when none failed."""
    gallery_with_tiny0(monkeypatch, batch, lake)
    chunks = list_batches(lake, "gallery/", 3)
    handler = FirstCallFails(batch.handler, {chunks[1][0]}, times=99)

    report = run_map(lake, handler, mode="reindex", version="tiny-1", batch_size=3, workers=2,
                     attempts=3, tolerated_failure_percent=tolerated, sleep=no_sleep([]))

    assert report.failed_batches == 1 and report.failed_items == len(chunks[1])
    assert report.succeeded is (tolerated == 50)
    assert report.activated is False
    assert not any("activate" in call for call in handler.calls)
    assert versions_of(store).current() == "tiny-0"
    # The other batches did their work: a rerun redoes only the failed batch's pictures.
    assert store.count("tiny-1") == sum(map(len, chunks)) - len(chunks[1])
    assert "TimeoutError" in report.results[1].error

    rerun = run_map(lake, batch.handler, mode="reindex", version="tiny-1", batch_size=3)
    assert rerun.activated is True and versions_of(store).current() == "tiny-1"
    assert sum(r.output["embedded"] for r in rerun.results) == len(chunks[1])
    assert sum(r.output["already"] for r in rerun.results) == sum(map(len, chunks[:1] + chunks[2:]))


def test_batch_handler_refuses_keys_outside_the_mode_root(batch):
    event = {"Items": [{"Key": "rejected/x.png"}], "BatchInput": {"mode": "reindex"}}
    with pytest.raises(BadRequest):
        batch.handler(event, LambdaContext("artlens-batch"))
    with pytest.raises(BadRequest):
        batch.handler({"Items": [], "BatchInput": {"mode": "delete"}}, LambdaContext("b"))
