"""Ingestion and reindexing with a real model, a real PostgreSQL + pgvector and a folder lake."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from artlens.errors import NotFound, Unavailable
from artlens.image import image_to_input
from artlens.index.embeddings import EmbeddingStore
from artlens.ingest import Status, ingest_objects
from artlens.lake import LocalLake
from artlens.models.classifier import get_classifier
from artlens.models.versions import ensure_model_version, reindex, rollback, versions_of


def picture(seed: int, fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def lake(tmp_path):
    return LocalLake(tmp_path / "lake", b"test-url-key")



@pytest.fixture
def classifier(tiny_model_card):
    return get_classifier(tiny_model_card)


def test_ingest_a_folder(lake, store, classifier):
    pictures = {
        "incoming/a.png": picture(1, "PNG"),
        "incoming/sub dir/bé.jpg": picture(2, "JPEG"),
        "incoming/c.gif": picture(3, "GIF"),
        "incoming/d.webp": picture(4, "WEBP"),
    }
    for key, data in pictures.items():
        lake.put(key, data)
    lake.put("incoming/notes.txt", b"not a picture at all")
    lake.put("incoming/a copy.png", pictures["incoming/a.png"])  # same bytes, other name
    assert ensure_model_version(store, classifier) == classifier.version

    keys = lake.list("incoming/")
    report = ingest_objects(keys, lake, classifier, store, batch_size=2)

    assert list(report.outcomes) == keys
    assert (report.indexed, report.duplicates, report.rejected, report.failed) == (4, 1, 1, 0)
    assert lake.list("incoming/") == []

    extensions = {"a.png": "png", "sub dir/bé.jpg": "jpg", "c.gif": "gif", "d.webp": "webp"}
    expected_gallery = {
        f"gallery/{sha(pictures['incoming/' + name])}.{ext}" for name, ext in extensions.items()
    }
    assert set(lake.list("gallery/")) == expected_gallery
    for key, data in pictures.items():
        outcome = report.outcomes[key]
        assert outcome.sha256 == sha(data)
        assert lake.get(outcome.gallery_key) == data
        assert outcome.label in classifier.classes
    assert set(store.keys(classifier.version)) == expected_gallery
    assert store.count() == 4

    rejected = f"rejected/{sha(b'not a picture at all')}"
    assert lake.list("rejected/") == [rejected, rejected + ".reason.json"]
    assert lake.get(rejected) == b"not a picture at all"
    reason = json.loads(lake.get(rejected + ".reason.json"))
    assert reason["error"] == "unsupported_format"
    assert reason["source_key"] == "incoming/notes.txt"
    assert reason["name"] == "notes.txt"
    assert reason["message"]
    assert report.outcomes["incoming/notes.txt"].reason == "unsupported_format"

    # The stored embedding is the model's: the picture finds itself first.
    query = classifier.predict(image_to_input(pictures["incoming/c.gif"])).embeddings[0]
    top = store.nearest(query, k=1)
    assert top[0].sha256 == sha(pictures["incoming/c.gif"])
    assert top[0].similarity == pytest.approx(1.0, abs=1e-4)


def test_ingest_is_idempotent(lake, store, classifier):
    ensure_model_version(store, classifier)
    data = picture(10)
    lake.put("incoming/x.png", data)
    first = ingest_objects(["incoming/x.png"], lake, classifier, store)
    assert first.outcomes["incoming/x.png"].status is Status.INDEXED

    # The same message delivered again after it was processed: nothing left to do.
    again = ingest_objects(["incoming/x.png", "incoming/x.png"], lake, classifier, store)
    assert [o.status for o in again.outcomes.values()] == [Status.SKIPPED]
    assert again.outcomes["incoming/x.png"].reason == "not_found"

    # The same picture dropped again under other names, twice in one batch.
    lake.put("incoming/y.png", data)
    lake.put("incoming/z.png", data)
    dropped = ingest_objects(["incoming/y.png", "incoming/z.png"], lake, classifier, store)
    assert {o.status for o in dropped.outcomes.values()} == {Status.DUPLICATE}
    assert store.count() == 1
    assert lake.list("incoming/") == []
    assert lake.list("gallery/") == [f"gallery/{sha(data)}.png"]


def test_only_incoming_objects_are_consumed(lake, store, classifier):
    ensure_model_version(store, classifier)
    lake.put("gallery/keep.png", picture(11))
    report = ingest_objects(["gallery/keep.png"], lake, classifier, store)
    assert report.outcomes["gallery/keep.png"].status is Status.SKIPPED
    assert lake.exists("gallery/keep.png")


def test_a_database_outage_fails_items_without_losing_them(lake, classifier):
    down = EmbeddingStore("postgresql://nobody@127.0.0.1:9/none")
    lake.put("incoming/p.png", picture(12))
    report = ingest_objects(["incoming/p.png"], lake, classifier, down)
    outcome = report.outcomes["incoming/p.png"]
    assert outcome.status is Status.FAILED
    assert isinstance(outcome.error, Unavailable)
    assert report.failed_keys == ["incoming/p.png"]
    assert lake.exists("incoming/p.png")  # still there for the retry


class CountingStore(EmbeddingStore):
    """The real store, counting the calls ingest makes and failing chosen upsert_many calls."""

    def __init__(self, dsn, fail_upsert_calls=()):
        super().__init__(dsn)
        self.calls: dict[str, int] = {}
        self.fail_upsert_calls = set(fail_upsert_calls)

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    def existing_sha256(self, *args, **kwargs):
        self._count("existing_sha256")
        return super().existing_sha256(*args, **kwargs)

    def upsert_many(self, rows):
        if self._count("upsert_many") in self.fail_upsert_calls:
            raise Unavailable("injected: the transaction did not commit")
        return super().upsert_many(rows)

    def has_sha256(self, *args, **kwargs):
        self._count("has_sha256")
        return super().has_sha256(*args, **kwargs)

    def upsert(self, row):
        self._count("upsert")
        return super().upsert(row)


def test_ingest_asks_the_database_twice_per_chunk_and_fails_only_the_chunk_hit(
    lake, pg_dsn, classifier
):
    store = CountingStore(pg_dsn, fail_upsert_calls={2})
    store.migrate()
    ensure_model_version(store, classifier)
    keys = [f"incoming/{i}.png" for i in range(7)]
    for i, key in enumerate(keys):
        lake.put(key, picture(300 + i))
    store.calls.clear()

    report = ingest_objects(keys, lake, classifier, store, batch_size=3)
    assert store.calls == {"existing_sha256": 3, "upsert_many": 3}  # chunks of 3, 3, 1
    assert report.failed_keys == keys[3:6]  # exactly the second chunk
    assert all(isinstance(report.outcomes[k].error, Unavailable) for k in keys[3:6])
    assert [report.outcomes[k].status for k in keys[:3] + keys[6:]] == [Status.INDEXED] * 4
    assert lake.list("incoming/") == keys[3:6]  # kept for the retry
    assert store.count() == 4

    retry = ingest_objects(report.failed_keys, lake, classifier, store, batch_size=3)
    assert (retry.indexed, retry.failed) == (3, 0)
    assert lake.list("incoming/") == []
    assert store.count() == 7
    assert set(store.keys()) == set(lake.list("gallery/"))
    store.close()


def test_one_failed_gallery_write_fails_only_that_picture(lake, store, classifier):
    ensure_model_version(store, classifier)
    broken = picture(400)
    keys = ["incoming/ok1.png", "incoming/broken.png", "incoming/ok2.png"]
    for key, data in zip(keys, (picture(401), broken, picture(402)), strict=True):
        lake.put(key, data)
    original_put = lake.put

    def put(key, data, content_type="application/octet-stream"):
        if key == f"gallery/{sha(broken)}.png":
            raise OSError("disk full")
        original_put(key, data, content_type)

    lake.put = put
    report = ingest_objects(keys, lake, classifier, store)
    assert report.failed_keys == ["incoming/broken.png"]
    assert (report.indexed, store.count()) == (2, 2)
    assert lake.list("incoming/") == ["incoming/broken.png"]
    assert not store.existing_sha256([sha(broken)], classifier.version)


def test_ingest_writes_rows_for_the_classifier_version_while_queries_stay(
    lake, store, classifier, tiny_model_card_v2
):
    ensure_model_version(store, classifier)
    newer = get_classifier(tiny_model_card_v2)
    assert ensure_model_version(store, newer) == classifier.version
    lake.put("incoming/n.png", picture(13))
    ingest_objects(["incoming/n.png"], lake, newer, store)
    assert store.count(newer.version) == 1
    assert store.count() == 0  # the current version is unchanged until a reindex


class Interrupted(RuntimeError):
    pass


def test_reindex_switches_only_when_complete_and_rolls_back(
    lake, store, classifier, tiny_model_card_v2
):
    ensure_model_version(store, classifier)
    drops = {f"incoming/{i}.png": picture(100 + i) for i in range(5)}
    for key, data in drops.items():
        lake.put(key, data)
    assert ingest_objects(list(drops), lake, classifier, store).indexed == 5
    old = classifier.version
    new = get_classifier(tiny_model_card_v2)
    assert new.version != old
    probe = classifier.predict(image_to_input(picture(100))).embeddings[0]

    def stop_after_first_batch(done, total):
        raise Interrupted(f"{done}/{total}")

    with pytest.raises(Interrupted):
        reindex(store, lake, new, batch_size=2, progress=stop_after_first_batch)
    assert versions_of(store).current() == old
    assert store.count(old) == 5
    assert store.count(new.version) == 2
    # Queries keep answering from the old version meanwhile.
    assert len(store.nearest(probe, k=5)) == 5
    assert {n.key for n in store.nearest(probe, k=5)} == set(store.keys(old))

    seen = []
    report = reindex(store, lake, new, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert report.total == 3 and report.embedded == 3  # resumed, not restarted
    assert seen == [(2, 3), (3, 3)]
    assert report.activated and report.previous_version == old
    assert versions_of(store).current() == new.version
    assert store.count() == 5
    assert set(store.keys(new.version)) == set(lake.list("gallery/"))

    assert rollback(store) == old
    assert versions_of(store).current() == old
    assert rollback(store) == new.version
    assert versions_of(store).current() == new.version


def test_rollback_without_previous_version(store, classifier):
    ensure_model_version(store, classifier)
    with pytest.raises(NotFound):
        rollback(store)


def test_incoming_is_kept_when_the_gallery_write_fails(lake, store, classifier):
    ensure_model_version(store, classifier)
    lake.put("incoming/q.png", picture(14))
    (lake.root / "gallery").write_bytes(b"")  # a file where the gallery folder must go
    report = ingest_objects(["incoming/q.png"], lake, classifier, store)
    assert report.outcomes["incoming/q.png"].status is Status.FAILED
    assert lake.exists("incoming/q.png")
    assert store.count() == 0


def test_reindex_handler(lake, store, classifier, tiny_model_card_v2, pg_dsn, monkeypatch):
    import importlib
    import sys
    from types import SimpleNamespace

    from artlens.errors import BadRequest

    ensure_model_version(store, classifier)
    drops = [f"incoming/{i}.png" for i in range(3)]
    for i, key in enumerate(drops):
        lake.put(key, picture(200 + i))
    ingest_objects(drops, lake, classifier, store)
    gallery = lake.list("gallery/")

    for name, value in {
        "MODEL_CARD_PATH": str(tiny_model_card_v2), "DATABASE_URL": pg_dsn,
        "LOCAL_LAKE_DIR": str(lake.root), "LOCAL_URL_KEY": "test-url-key",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("IMAGES_BUCKET", "DB_SECRET_ARN", "TOKEN_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    sys.modules.pop("lambdas.reindex", None)
    reindex_handler = importlib.import_module("lambdas.reindex").handler
    context = SimpleNamespace(
        function_name="f", memory_limit_in_mb=512, aws_request_id="r",
        invoked_function_arn="arn:aws:lambda:eu-west-1:123456789012:function:f",
    )

    def handler(event, _):
        return reindex_handler(event, context)

    new_version = get_classifier(tiny_model_card_v2).version

    with pytest.raises(BadRequest):
        handler({"keys": ["incoming/0.png"]}, None)
    partial = handler({"keys": gallery[:1]}, None)
    assert partial["embedded"] == 1 and partial["activated"] is False
    assert versions_of(store).current() == classifier.version
    complete = handler({}, None)
    assert complete["embedded"] == 2 and complete["activated"] is True
    assert versions_of(store).current() == new_version


# -- LocalLake: the folder lake and its signed URLs -----------------------------------------


def test_local_lake_signed_urls(tmp_path):
    from urllib.parse import unquote, urlsplit

    now = [1_000_000.0]
    lake = LocalLake(tmp_path, b"k1", "http://127.0.0.1:8000", clock=lambda: now[0])
    key = "gallery/sous-bois été #1.png"
    lake.put(key, b"data")
    url = lake.url_for(key)
    parts = urlsplit(url)
    assert parts.netloc == "127.0.0.1:8000"
    assert " " not in url and "é" not in url and "#" not in url
    query = dict(p.split("=") for p in parts.query.split("&"))
    assert int(query["exp"]) == 1_000_000 + 900
    decoded = unquote(parts.path.removeprefix("/lake/"))
    assert decoded == key
    assert lake.verify_url(decoded, query["exp"], query["sig"])
    assert not lake.verify_url(decoded, query["exp"], "0" * 64)
    assert not lake.verify_url("gallery/other.png", query["exp"], query["sig"])
    assert not lake.verify_url(decoded, str(int(query["exp"]) + 1), query["sig"])
    assert not lake.verify_url(decoded, "soon", query["sig"])
    assert not LocalLake(tmp_path, b"k2", clock=lambda: now[0]).verify_url(
        decoded, query["exp"], query["sig"]
    )
    now[0] += 901
    assert not lake.verify_url(decoded, query["exp"], query["sig"])


@pytest.mark.parametrize(
    "key",
    [
        "../outside.png", "/etc/passwd", "gallery/../../x", "", "a\\b", "gallery/",
        "gallery//x.png", "./gallery/x.png", "gallery/x.png/.", ".", "gallery/\x00.png",
    ],
)
def test_local_lake_refuses_keys_outside_its_folder(tmp_path, key):
    from artlens.errors import BadRequest

    lake = LocalLake(tmp_path / "lake", b"k")
    for operation in (lake.get, lake.exists, lake.delete, lake.url_for):
        with pytest.raises(BadRequest):
            operation(key)
    with pytest.raises(BadRequest):
        lake.put(key, b"x")
    assert not lake.verify_url(key, "9999999999", "0" * 64)
    assert not (tmp_path / "outside.png").exists()


def test_local_lake_refuses_symlinks_that_lead_out_of_its_folder(tmp_path):
    from artlens.errors import BadRequest

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"secret")
    lake = LocalLake(tmp_path / "lake", b"k")
    (lake.root / "gallery").symlink_to(outside, target_is_directory=True)  # a folder link
    (lake.root / "incoming").mkdir()
    (lake.root / "incoming" / "x.png").symlink_to(outside / "secret.png")  # a file link
    for key in ("gallery/secret.png", "incoming/x.png"):
        with pytest.raises(BadRequest):
            lake.get(key)
    with pytest.raises(BadRequest):
        lake.put("gallery/new.png", b"x")
    assert not (outside / "new.png").exists()
    # A link that stays inside the folder is followed.
    (lake.root / "incoming" / "kept.png").write_bytes(b"kept")
    (lake.root / "uploads").symlink_to(lake.root / "incoming", target_is_directory=True)
    assert lake.get("uploads/kept.png") == b"kept"


def test_local_lake_signs_urls_from_the_key_text_alone(tmp_path, monkeypatch):
    import pathlib

    lake = LocalLake(tmp_path, b"k", clock=lambda: 1_000.0)

    def no_file_system(self, *args, **kwargs):
        raise AssertionError(f"url_for touched the file system for {self}")

    monkeypatch.setattr(pathlib.Path, "resolve", no_file_system)
    monkeypatch.setattr(pathlib.Path, "stat", no_file_system)
    url = lake.url_for("gallery/not written yet.png")
    query = dict(p.split("=") for p in url.split("?", 1)[1].split("&"))
    assert lake.verify_url("gallery/not written yet.png", query["exp"], query["sig"])


def test_local_lake_objects(tmp_path):
    from artlens.errors import ImageRejected

    lake = LocalLake(tmp_path, b"k")
    with pytest.raises(NotFound):
        lake.get("incoming/none.png")
    with pytest.raises(NotFound):
        lake.copy("incoming/none.png", "rejected/none.png")
    lake.put("incoming/a/b.png", b"12345")
    (tmp_path / "incoming" / ".artlens-tmp-half").write_bytes(b"half written")
    assert lake.list("incoming/") == ["incoming/a/b.png"]
    assert lake.list("gallery/") == []
    with pytest.raises(ImageRejected) as too_large:
        lake.get("incoming/a/b.png", max_bytes=4)
    assert too_large.value.code == "too_large"
    lake.copy("incoming/a/b.png", "gallery/b.png")
    lake.delete("incoming/a/b.png")
    lake.delete("incoming/a/b.png")  # deleting twice is fine
    assert not lake.exists("incoming/a/b.png")
    assert lake.get("gallery/b.png") == b"12345"


# --------------------------------------------------------------------------- issue 13


class LakeWithARacingUpload(LocalLake):
    """Someone drops a new picture under the same name while the batch is being indexed: right
    after the first gallery write, between the read and the delete of the drop."""

    def __init__(self, root, key: str, replacement: bytes):
        super().__init__(root, b"test-url-key")
        self.key, self.replacement, self.raced = key, replacement, False

    def put(self, key, data, content_type="application/octet-stream"):
        super().put(key, data, content_type)
        if key.startswith("gallery/") and not self.raced:
            self.raced = True
            super().put(self.key, self.replacement)


def test_a_drop_replaced_during_its_ingest_survives_and_is_indexed(tmp_path, store, classifier):
    ensure_model_version(store, classifier)
    first, second = picture(31), picture(32)
    lake = LakeWithARacingUpload(tmp_path / "lake", "incoming/same.png", second)
    lake.put("incoming/same.png", first)

    report = ingest_objects(["incoming/same.png"], lake, classifier, store)
    assert lake.raced
    assert report.outcomes["incoming/same.png"].sha256 == sha(first)
    # The replacement was not deleted unseen: it is still there, and its own event indexes it.
    assert lake.get("incoming/same.png") == second
    again = ingest_objects(["incoming/same.png"], lake, classifier, store)
    assert again.outcomes["incoming/same.png"].status is Status.INDEXED
    assert {row for row in store.keys(classifier.version)} == {
        f"gallery/{sha(first)}.png", f"gallery/{sha(second)}.png"}
    assert lake.list("incoming/") == []


def test_local_delete_version_removes_only_what_was_read(tmp_path):
    lake = LocalLake(tmp_path / "lake", b"k")
    lake.put("incoming/a.png", b"one")
    read = lake.get_version("incoming/a.png")
    assert read.data == b"one" and read.size == 3
    assert lake.delete_version("incoming/a.png", read.version)
    assert not lake.exists("incoming/a.png")
    assert lake.delete_version("incoming/a.png", read.version)  # gone already: fine

    lake.put("incoming/b.png", b"old")
    old = lake.get_version("incoming/b.png")
    lake.put("incoming/b.png", b"new")
    assert not lake.delete_version("incoming/b.png", old.version)
    assert lake.get("incoming/b.png") == b"new"
    assert lake.list("incoming/") == ["incoming/b.png"]  # no claim file left behind

    too_big = lake.get_version("incoming/b.png", max_bytes=2)
    assert too_big.data is None and too_big.size == 3


def test_rejects_are_keyed_by_content_and_never_overwrite_each_other(lake, store, classifier):
    ensure_model_version(store, classifier)
    long_name = "n" * 246 + ".txt"  # 250 bytes: the name plus ".reason.json" exceeds NAME_MAX
    drops = {
        "incoming/bad.txt": b"first bad drop",
        "incoming/sub/bad.txt": b"second bad drop, same name",
        f"incoming/{long_name}": b"a long name",
    }
    for key, data in drops.items():
        lake.put(key, data)
    report = ingest_objects(list(drops), lake, classifier, store)
    assert report.rejected == 3 and report.failed == 0
    # Then a drop named like the reason of the first: it cannot overwrite anything.
    lake.put("incoming/bad.txt.reason.json", b'{"error": "forged"}')
    assert ingest_objects(["incoming/bad.txt.reason.json"], lake, classifier, store).rejected == 1
    drops["incoming/bad.txt.reason.json"] = b'{"error": "forged"}'

    for key, data in drops.items():
        parked = f"rejected/{sha(data)}"
        assert lake.get(parked) == data
        reason = json.loads(lake.get(parked + ".reason.json"))
        assert reason["source_key"] == key and reason["error"] == "unsupported_format"
        assert reason["name"] == key.removeprefix("incoming/")
    assert len(lake.list("rejected/")) == 2 * len(drops)
    assert lake.list("incoming/") == []


def test_a_drop_too_large_to_read_is_parked_under_a_fresh_id(lake, store, classifier):
    ensure_model_version(store, classifier)
    lake.put("incoming/huge.png", picture(33))
    report = ingest_objects(["incoming/huge.png"], lake, classifier, store, max_bytes=100)
    assert report.outcomes["incoming/huge.png"].reason == "too_large"
    (reason_key,) = [k for k in lake.list("rejected/") if k.endswith(".reason.json")]
    reason = json.loads(lake.get(reason_key))
    assert reason["source_key"] == "incoming/huge.png" and reason["sha256"] is None
    assert lake.get(reason_key.removesuffix(".reason.json")) == picture(33)
