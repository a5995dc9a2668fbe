"""The backfill / reindex map run locally (local_stack.backfill) with the real batch handler
(lambdas.batch, the Distributed Map child): real PostgreSQL + pgvector, two tiny real ONNX
models (tiny-0 deployed, tiny-1 registered), a folder lake. Failures are injected into a few
batches, by a lake that fails a read once and by a handler that fails a batch's first call."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from artlens.batches import parse_items
from artlens.errors import BadRequest, Unavailable
from artlens.lake import LocalLake
from artlens.models.registry import ModelRegistry
from artlens.models.versions import versions_of
from local_stack.backfill import (
    RESULTS_PREFIX,
    list_batches,
    parse_args,
    renditions_summary,
    run_map,
)
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


# --- items from an S3 Inventory manifest (issue 16) -----------------------------------------


def inventory_rows(keys, bucket: str = "artlens-images") -> list[dict]:
    """The Map's items from an inventory report: CSV rows {"Bucket", "Key"}, the key
    URL-encoded as S3 writes CSV inventories."""
    return [{"Bucket": bucket, "Key": quote_plus(key, safe="/")} for key in keys]


def test_inventory_rows_index_only_the_requested_prefix_and_touch_nothing_else(batch, lake, store):
    drops = drop_pictures(lake)
    odd = "incoming/0 a+b%.png"  # a space, a plus and a percent sign: URL-encoded in the CSV
    drops[odd] = encode(artwork(50), "PNG")
    lake.put(odd, drops[odd])
    others = {"uploads/keep.png": encode(artwork(60), "PNG"),
              "gallery/already.png": encode(artwork(61), "PNG")}
    for key, data in others.items():
        lake.put(key, data)
    # A day-old inventory: it still lists a drop indexed (moved) meanwhile.
    gone = "incoming/05-gone.png"
    rows = inventory_rows([*drops, gone, *others])
    assert {"Bucket": "artlens-images", "Key": "incoming/0+a%2Bb%25.png"} in rows

    result = batch.handler(
        {"Items": rows, "BatchInput": {"mode": "backfill", "prefix": "incoming/0",
                                       "version": None}},
        LambdaContext("artlens-batch"),
    )

    under = sorted(k for k in drops if k.startswith("incoming/0"))
    assert len(under) == 11  # 00..09 and the odd name
    assert result["items"] == len(under) + 1  # + the gone one
    assert result["indexed"] == len(under) and result["failed"] == 0
    assert result["skipped"] == 1  # the gone drop: counted, not an error
    # Outside the prefix: incoming/10.png, the twin, and the two objects outside incoming/.
    assert result["outside_prefix"] == 4
    assert sorted(lake.list("incoming/")) == ["incoming/10.png", "incoming/99 twin.png"]
    for key, data in others.items():
        assert lake.get(key) == data  # never read, moved or deleted
    indexed = {hashlib.sha256(drops[k]).hexdigest() for k in under}
    assert {k.removeprefix("gallery/").split(".")[0] for k in store.keys("tiny-0")} == indexed


def test_inventory_rows_reindex_gallery_keys_only(batch, lake, store):
    pictures = gallery_with_tiny0(None, batch, lake)
    lake.put("incoming/late.png", encode(artwork(70), "PNG"))
    rows = inventory_rows([*lake.list("gallery/"), "incoming/late.png", "rejected/x.json"])

    result = batch.handler(
        {"Items": rows, "BatchInput": {"mode": "reindex", "version": "tiny-1"}},  # prefix: root
        LambdaContext("artlens-batch"),
    )

    assert result["embedded"] == pictures and result["outside_prefix"] == 2
    assert store.count("tiny-1") == pictures
    assert versions_of(store).current() == "tiny-0"  # a batch never switches
    assert lake.exists("incoming/late.png")  # a reindex never ingests


def test_inventory_rows_of_another_bucket_or_a_prefix_outside_the_root_are_refused(batch):
    parse = parse_items  # what the handler runs on every event (artlens.batches)
    rows = inventory_rows(["incoming/a.png"], bucket="someone-else")
    event = {"Items": rows, "BatchInput": {"mode": "backfill"}}
    with pytest.raises(BadRequest, match="someone-else"):
        parse(event, "artlens-images")
    assert parse(event, None).keys == ["incoming/a.png"]  # locally: no bucket to compare
    for prefix in ("gallery/", "", 7):
        with pytest.raises(BadRequest, match="prefix"):
            parse({"Items": [], "BatchInput": {"mode": "backfill", "prefix": prefix}})
    with pytest.raises(BadRequest):
        parse({"Items": [{"Bucket": "artlens-images"}], "BatchInput": {"mode": "backfill"}})
    # Listing items keep their rule: outside the mode's root is a bad request, not a skip.
    with pytest.raises(BadRequest):
        parse({"Items": [{"Key": "uploads/x.png"}], "BatchInput": {"mode": "backfill"}})
    listed = parse({"Items": [{"Key": "incoming/a+b.png"}], "BatchInput": {"mode": "backfill"}})
    assert listed.keys == ["incoming/a+b.png"] and listed.outside_prefix == 0  # not decoded


FAKE_AWS = """#!/bin/sh
echo "$@" >> "$CALLS"
arn=arn:aws:states:eu-west-1:1
case "$*" in
  *BackfillStateMachineArn*) echo "$arn:stateMachine:ArtLens-dev-backfill" ;;
  *ArtifactsBucketName*) echo artlens-artifacts ;;
  *ImagesBucketName*) echo artlens-images ;;
  "s3api list-objects-v2"*) echo "$LATEST" ;;
  "stepfunctions start-execution"*) echo "$arn:execution:ArtLens-dev-backfill:x" ;;
  "stepfunctions list-map-runs"*) echo None ;;
  "stepfunctions describe-execution"*) echo SUCCEEDED ;;
esac
"""


def run_backfill_sh(tmp_path, manifest: str, *args: str, latest: str = "None"):
    """infra/run_backfill.sh with MANIFEST=..., against a fake AWS CLI that records its
    calls; returns (the completed process, the start-execution input)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "aws").write_text(FAKE_AWS)
    (fake_bin / "aws").chmod(0o755)
    calls = tmp_path / "calls.log"
    calls.write_text("")
    completed = subprocess.run(
        [str(Path(__file__).resolve().parents[2] / "infra" / "run_backfill.sh"), "dev", *args],
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "CALLS": str(calls), "POLL_S": "0",
             "MANIFEST": manifest, "LATEST": latest},
        capture_output=True, text=True, timeout=60,
    )
    log = calls.read_text().splitlines()
    start = [line for line in log if line.startswith("stepfunctions start-execution")]
    if not start:
        return completed, None, log
    (text,) = start
    return completed, json.loads(text.split(" --input ")[1].split(" --query ")[0]), log


def test_run_backfill_passes_an_inventory_manifest_to_the_state_machine(tmp_path):
    key = "inventory/artlens-images/incoming/2026-11-29T01-00Z/manifest.json"
    completed, started, _ = run_backfill_sh(
        tmp_path, f"s3://artlens-artifacts/{key}", "backfill", "incoming/2024/")
    assert completed.returncode == 0, completed.stderr
    assert started == {"mode": "backfill", "prefix": "incoming/2024/", "version": None,
                       "manifest": {"bucket": "artlens-artifacts", "key": key}}
    # latest: the newest report of the mode's inventory, found by listing inventory/.
    newest = "inventory/artlens-images/gallery/2026-11-30T01-00Z/manifest.json"
    completed, started, log = run_backfill_sh(tmp_path, "latest", "reindex", "gallery/", "v2",
                                              latest=newest)
    assert completed.returncode == 0, completed.stderr
    assert started["manifest"] == {"bucket": "artlens-artifacts", "key": newest}
    assert started["version"] == "v2" and started["mode"] == "reindex"
    (listing,) = [line for line in log if line.startswith("s3api list-objects-v2")]
    assert "--bucket artlens-artifacts --prefix inventory/artlens-images/gallery/" in listing
    # No report yet, or a manifest that is not one: refused before anything starts.
    for manifest, latest in (("latest", "None"), ("s3://b/x.csv", "None"),
                             ('s3://b/a"b/manifest.json', "None")):
        completed, started, _ = run_backfill_sh(tmp_path, manifest, "backfill", "incoming/",
                                                latest=latest)
        assert completed.returncode == 2 and started is None, (manifest, completed.stderr)
        assert "inventory" in completed.stderr or "MANIFEST" in completed.stderr


# --- renditions for works indexed before ingest wrote them (issue 14) -----------------------


class RecordingLake(FlakyLake):
    """A FlakyLake that also records every put (each rendition written, over every attempt)."""

    def __init__(self, lake: LocalLake, fail_once: set[str]):
        super().__init__(lake, fail_once)
        self.puts: list[str] = []

    def put(self, key: str, *args: Any, **kwargs: Any) -> None:
        self.puts.append(key)
        self._lake.put(key, *args, **kwargs)


def test_renditions_map_restores_exactly_the_missing_renditions(monkeypatch, batch, lake, store):
    pictures = gallery_with_tiny0(None, batch, lake)
    works = sorted(lake.list("gallery/"))
    assert len(works) == pictures
    originals = {key: lake.get(key) for key in lake.list("renditions/")}
    assert len(originals) == 2 * pictures  # ingest wrote 256 and 1,024 px of every work
    shas = [key.removeprefix("gallery/").split(".")[0] for key in works]
    # Four works lose both renditions, two lose their 256 px one; five keep both.
    deleted = [f"renditions/{side}/{sha}.jpg" for sha in shas[:4] for side in (256, 1024)]
    deleted += [f"renditions/256/{sha}.jpg" for sha in shas[4:6]]
    for key in deleted:
        lake.delete(key)
    # A gallery object that is no picture (damaged in the lake): reported, never retried.
    garbage = b"not a picture at all"
    broken = f"gallery/{hashlib.sha256(garbage).hexdigest()}.jpg"
    lake.put(broken, garbage)
    # One work's read fails once (an S3 5xx): its batch raises and the map retries it.
    recording = RecordingLake(lake, {works[1]})
    with_lake(monkeypatch, batch, recording)
    done: list[int] = []
    publish = batch.publish_batch_done
    monkeypatch.setattr(batch, "publish_batch_done", lambda m, n: (done.append(n), publish(m, n)))
    delays: list[float] = []

    report = run_map(lake, batch.handler, mode="renditions", batch_size=4, workers=2,
                     sleep=no_sleep(delays))

    assert recording.failed == [works[1]]
    assert report.succeeded and report.failed_batches == 0 and report.activated is None
    assert report.items == pictures + 1 and report.retries == 1 == len(delays)
    # Exactly the missing renditions, each written once over every attempt, and identical to
    # what ingest had written; the others untouched.
    assert sorted(recording.puts) == sorted(deleted)
    assert {key: lake.get(key) for key in lake.list("renditions/")} == originals
    outputs = [r.output for r in report.results]
    assert all(o["mode"] == "renditions" for o in outputs)
    assert sum(o["items"] for o in outputs) == pictures + 1
    assert sum(o["failed"] for o in outputs) == 1
    (listed,) = [o["failed_keys"] for o in outputs if o["failed"]]
    assert list(listed) == [broken] and listed[broken].startswith("unsupported_format: ")
    # The retried batch's first attempt may already have written some: the run's outputs
    # account for every work once, as written or complete.
    assert sum(o["works"] + o["complete"] for o in outputs) == pictures
    assert sorted(done) == sorted(len(r.keys) for r in report.results)  # BatchItemsDone
    assert store.count("tiny-0") == pictures  # the index is not touched
    written = json.loads(lake.get(report.results_key))
    assert written["mode"] == "renditions" and written["failed_items"] == 0
    # What `python -m local_stack.backfill --mode renditions` prints at the end.
    summary = "\n".join(renditions_summary(report))
    assert (f"  written      {sum(o['written'] for o in outputs):>6}  renditions, for "
            f"{sum(o['works'] for o in outputs)} works") in summary
    assert f"  failed       {1:>6}  works that cannot be rendered" in summary
    assert f"    {broken}: unsupported_format" in summary

    recording.puts.clear()
    again = run_map(lake, batch.handler, mode="renditions", batch_size=4, workers=2)

    assert again.succeeded and again.retries == 0
    assert recording.puts == []  # nothing left to write
    outputs = [r.output for r in again.results]
    assert sum(o["written"] for o in outputs) == 0
    assert sum(o["complete"] for o in outputs) == pictures
    assert sum(o["failed"] for o in outputs) == 1  # still reported, still not a failed batch


def test_renditions_batches_take_gallery_keys_only_and_no_version(batch, lake):
    context = LambdaContext("artlens-batch")
    for items in ([{"Key": "incoming/x.png"}], [{"Key": "renditions/256/x.jpg"}]):
        with pytest.raises(BadRequest):
            batch.handler({"Items": items, "BatchInput": {"mode": "renditions"}}, context)
    with pytest.raises(BadRequest, match="version"):
        batch.handler({"Items": [], "BatchInput": {"mode": "renditions", "version": "tiny-1"}},
                      context)
    # An inventory row outside the requested prefix is skipped, never rendered.
    result = batch.handler(
        {"Items": inventory_rows(["incoming/a.png", "gallery/b.png"], bucket="artlens-images"),
         "BatchInput": {"mode": "renditions", "prefix": "gallery/", "version": None}},
        context,
    )
    assert result["outside_prefix"] == 1 and result["items"] == 1
    assert list(result["failed_keys"]) == ["gallery/b.png"]  # not named by a SHA-256
    assert lake.list("renditions/") == []
    with pytest.raises(ValueError, match="version"):
        run_map(lake, batch.handler, mode="renditions", version="tiny-1")
    with pytest.raises(ValueError, match="gallery/"):
        run_map(lake, batch.handler, mode="renditions", prefix="incoming/")
    assert parse_args(["--mode", "renditions"]).mode == "renditions"


def test_a_renditions_batch_needs_neither_the_model_nor_the_database(batch, lake, monkeypatch):
    """Renditions are pixels from the lake to the lake: the batch function's first call in
    that mode loads no ONNX session and opens no connection, so a database that is down (or
    being upgraded) does not stop a renditions backfill."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://artlens@127.0.0.1:1/nowhere")
    data = encode(artwork(7), "PNG")
    key = f"gallery/{hashlib.sha256(data).hexdigest()}.png"
    lake.put(key, data)
    result = batch.handler({"Items": [{"Key": key}], "BatchInput": {"mode": "renditions"}},
                           LambdaContext("artlens-batch"))
    assert (result["works"], result["failed"]) == (1, 0)
    assert len(lake.list("renditions/")) == 2
    # The modes that embed still find the database down, and say so.
    with pytest.raises(Unavailable, match="index is temporarily unavailable"):
        batch.handler({"Items": [{"Key": key}], "BatchInput": {"mode": "reindex"}},
                      LambdaContext("artlens-batch"))


def test_run_backfill_starts_a_renditions_run_with_the_gallery_as_default_prefix(tmp_path):
    completed, started, _ = run_backfill_sh(tmp_path, "", "renditions")
    assert completed.returncode == 0, completed.stderr
    assert started == {"mode": "renditions", "prefix": "gallery/", "version": None}
    newest = "inventory/artlens-images/gallery/2026-11-30T01-00Z/manifest.json"
    completed, started, log = run_backfill_sh(tmp_path, "latest", "renditions", "gallery/ab",
                                              latest=newest)
    assert completed.returncode == 0, completed.stderr
    assert started == {"mode": "renditions", "prefix": "gallery/ab", "version": None,
                       "manifest": {"bucket": "artlens-artifacts", "key": newest}}
    (listing,) = [line for line in log if line.startswith("s3api list-objects-v2")]
    assert "--prefix inventory/artlens-images/gallery/" in listing
    for args in (("renditions", "gallery/", "v2"), ("delete", "gallery/")):
        completed, started, _ = run_backfill_sh(tmp_path, "", *args)
        assert completed.returncode == 2 and started is None, (args, completed.stderr)
