"""Issue 14's curation backend: renditions, perceptual hashes and duplicate relations written by
ingest, the intake triage report, the curators' review queue and its audit trail, and the API
routes over them (GET /duplicates, /review, /reports, /works/{key}; POST /review/{key} with the
`review` scope; POST /predict's `already_in_collection`).

Real PostgreSQL + pgvector, the tiny real ONNX model, a folder lake, pictures made here.

About the tiny model: its embedding is poor (two unrelated generated pictures are ~0.97-0.99
cosine-similar), so the embedding alone cannot tell a copy from a stranger; the perceptual hash
does (a re-encoded, cropped copy is a few bits away, a stranger ~30 of 64). Every relation
assertion below is therefore stated as what the code guarantees, judged by
DuplicateThresholds.judge on the measured similarity and hash distance, and the near pair is
checked to be one that judge() calls a near duplicate.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from artlens import triage
from artlens.duplicates import DEFAULTS, DuplicateThresholds, hamming, perceptual_hash
from artlens.errors import BadRequest, NotFound
from artlens.image import load_image, preprocess
from artlens.index.embeddings import EmbeddingStore
from artlens.index.relations import duplicate_groups, relations_of
from artlens.index.reviews import ReviewStore
from artlens.index.works import WorkStore
from artlens.ingest import IngestReport, Status, ingest_objects
from artlens.lake import LocalLake
from artlens.models.card import ModelCard
from artlens.models.classifier import OnnxClassifier, get_classifier
from artlens.models.versions import ensure_model_version
from artlens.renditions import rendition_key
from lambdas import predict
from local_stack.events import LambdaContext
from tests.imagegen import artwork, encode
from tests.integration.test_predict_handler import URL_KEY, answer, post

BATCH = "accession-7"
FIRST_PART = "2026-11-30T02-00-00Z-aaaaaaaa"
SECOND_PART = "2026-11-30T02-05-00Z-bbbbbbbb"
CURATOR = {"principalId": "curator-ann", "sub": "curator-ann", "scheme": "bearer",
           "scopes": "predict review"}
PREDICT_ONLY = {"principalId": "visitor", "sub": "visitor", "scheme": "bearer",
                "scopes": "predict"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def with_exif(img: Image.Image) -> bytes:
    """A JPEG carrying EXIF (camera maker, software): renditions must not carry it on."""
    exif = Image.Exif()
    exif[0x010F] = "Camera Maker"
    exif[0x0131] = "Scanner Software 1.0"
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


def near_copy_of(img: Image.Image, quality: int = 60, margin: int = 4) -> bytes:
    """The same picture lightly cropped, rescaled to 85 % and re-encoded as a poorer JPEG."""
    w, h = img.size
    cropped = img.crop((margin, margin - 1, w - margin, h - margin + 1))
    return encode(cropped.resize((int(w * 0.85), int(h * 0.85))), "JPEG", quality=quality)


def model_view(classifier, data: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """(probabilities, embedding, perceptual hash) of one picture, as ingest computes them."""
    size = classifier.input_size
    pixels = preprocess(load_image(data, size=size).rgb, size)
    prediction = classifier.predict(pixels[np.newaxis])
    return prediction.probabilities[0], prediction.embeddings[0], perceptual_hash(pixels)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def classifier_with_duplicates(card_path: Path, folder: Path, duplicates: dict) -> OnnxClassifier:
    """The tiny model under a card that carries `serving.duplicates` (ONNX copied beside)."""
    raw = json.loads(Path(card_path).read_text())
    raw["serving"] = {"duplicates": duplicates}
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(card_path).with_name(raw["onnx_file"]), folder / raw["onnx_file"])
    (folder / "artlens.json").write_text(json.dumps(raw))
    return OnnxClassifier(ModelCard.load(folder / "artlens.json"))


@dataclass
class Collection:
    lake: LocalLake
    store: EmbeddingStore
    classifier: OnnxClassifier
    version: str
    pictures: dict[str, bytes]  # file name in the batch -> bytes
    types: dict[str, str]  # file name -> the type its CSV row catalogues
    first: IngestReport
    second: IngestReport
    parts: list[triage.TriageReport]

    def key(self, name: str) -> str:
        key = self.store.key_of(sha(self.pictures[name]), self.version)
        assert key is not None, name
        return key

    def probabilities(self, name: str) -> list[float]:
        digest = sha(self.pictures[name])

        def work(cur):
            cur.execute("SELECT probabilities FROM images WHERE sha256 = %s AND model_version"
                        " = %s", (digest, self.version))
            return cur.fetchone()[0]

        return list(self.store.database.read(work))


def incoming(name: str) -> str:
    return f"incoming/{BATCH}/{name}"


@pytest.fixture
def collection(tmp_path, store, tiny_model_card, handler_env) -> Collection:
    """A batch dropped in two deliveries, each followed by its triage part:

    1st: harbour (EXIF), portrait, portrait-small (a near copy of portrait), still-life and
         saint (catalogued as types the model finds least likely: disagreements), mosaic (a
         type that is not a class), broken.jpg (text: rejected), and records.csv with a
         malformed row (portrait-small's: too many cells);
    2nd: harbour-copy (the very bytes of harbour: an exact duplicate) and river (with its
         record JSON beside it).
    """
    classifier = get_classifier(tiny_model_card)
    version = ensure_model_version(store, classifier)
    lake = LocalLake(tmp_path / "lake", URL_KEY.encode())
    portrait = artwork(1402, (240, 180))
    pictures = {
        "harbour.jpg": with_exif(artwork(1401, (260, 200))),
        "portrait.png": encode(portrait, "PNG"),
        "portrait-small.jpg": near_copy_of(portrait),
        "still-life.jpg": encode(artwork(1403, (220, 220)), "JPEG", quality=90),
        "saint.jpg": encode(artwork(1404, (180, 240)), "JPEG", quality=90),
        "mosaic.jpg": encode(artwork(1405, (200, 160)), "JPEG", quality=90),
    }
    # The types the model finds least likely: whatever it predicts, the catalogue disagrees.
    least = {name: classifier.classes[int(np.argmin(model_view(classifier, pictures[name])[0]))]
             for name in ("still-life.jpg", "saint.jpg")}
    most = classifier.classes[int(np.argmax(model_view(classifier, pictures["harbour.jpg"])[0]))]
    types = {"harbour.jpg": most, **least, "mosaic.jpg": "mosaic"}
    rows = "\n".join([
        "file,title,maker,date,type",
        f"harbour.jpg,The Harbour,Jane Doe,c. 1650,{most}",
        "portrait.png,Portrait of a Lady,Ann Other,1880,",
        f"still-life.jpg,Still Life,Pieter Claesz,1630,{least['still-life.jpg']}",
        f"saint.jpg,A Saint,Workshop,1500,{least['saint.jpg']}",
        "mosaic.jpg,Mosaic Panel,Unknown,3rd c.,mosaic",
        "portrait-small.jpg,Too,Many,Cells,painting,EXTRA",
    ]) + "\n"
    for name, data in pictures.items():
        lake.put(incoming(name), data)
    lake.put(incoming("broken.jpg"), b"this is not a picture at all\n")
    lake.put(incoming("records.csv"), rows.encode(), "text/csv")

    first = ingest_objects(lake.list("incoming/"), lake, classifier, store, batch_size=3)
    parts = triage.report_ingest(lake, store, first, part=FIRST_PART)

    pictures["harbour-copy.jpg"] = pictures["harbour.jpg"]
    pictures["river.jpg"] = encode(artwork(1406, (210, 170)), "JPEG", quality=88)
    for name in ("harbour-copy.jpg", "river.jpg"):
        lake.put(incoming(name), pictures[name])
    # river's record beside it, as `make ingest` drops them: consumed with its picture, the
    # record's own key is then skipped (not_found) and is no file of the report.
    lake.put(incoming("river.jpg.json"), json.dumps({"title": "River"}).encode(),
             "application/json")
    second = ingest_objects(lake.list("incoming/"), lake, classifier, store)
    parts += triage.report_ingest(lake, store, second, part=SECOND_PART)
    return Collection(lake, store, classifier, version, pictures, types, first, second, parts)


# -- ingest: renditions, hashes, relations, groups ---------------------------------------------


def test_ingest_writes_renditions_hashes_and_relations(collection):
    c = collection
    statuses = {**{k: o.status for k, o in c.first.outcomes.items()},
                **{k: o.status for k, o in c.second.outcomes.items()}}
    new = ["harbour.jpg", "portrait.png", "portrait-small.jpg", "still-life.jpg", "saint.jpg",
           "mosaic.jpg", "river.jpg"]
    assert {statuses[incoming(n)] for n in new} == {Status.INDEXED}
    assert statuses[incoming("harbour-copy.jpg")] is Status.DUPLICATE
    assert c.second.outcomes[incoming("harbour-copy.jpg")].sha256 == sha(c.pictures["harbour.jpg"])
    assert statuses[incoming("broken.jpg")] is Status.REJECTED
    assert statuses[incoming("records.csv")] is Status.SIDECAR
    assert c.lake.list("incoming/") == []  # every file consumed: nothing waits, nothing lost
    assert any("cells for" in p for p in c.first.problems)  # the malformed row, reported ...
    works = WorkStore(c.store.database)
    assert works.get(sha(c.pictures["portrait-small.jpg"]))["extra"]["sidecar_row"][1] == "Too"
    assert works.get(sha(c.pictures["river.jpg"]))["title"] == "River"  # its JSON record

    # ... and every new work has its two renditions, small enough and without metadata.
    for name in new:
        digest = sha(c.pictures[name])
        for side in (256, 1024):
            made = Image.open(io.BytesIO(c.lake.get(rendition_key(digest, side))))
            assert made.format == "JPEG"
            assert max(made.size) <= side
            assert dict(made.getexif()) == {} and "exif" not in made.info, name
            assert "icc_profile" not in made.info
    assert len(c.lake.list("renditions/256/")) == len(c.lake.list("renditions/1024/")) == 7
    # The harbour's original keeps its EXIF (originals are private), the rendition not.
    assert Image.open(io.BytesIO(c.lake.get(c.key("harbour.jpg")))).getexif()[0x010F] == \
        "Camera Maker"

    # works.phash: the dHash of the model's input picture, for every new work.
    def phashes(cur):
        cur.execute("SELECT sha256, phash FROM works")
        return dict(cur.fetchall())

    stored = c.store.database.read(phashes)
    views = {name: model_view(c.classifier, c.pictures[name]) for name in new}
    for name in new:
        assert stored[sha(c.pictures[name])] == views[name][2], name

    # Every stored relation is what judge() says of its measured similarity and distance.
    rules = DuplicateThresholds.from_card(None)
    assert rules == DEFAULTS  # the tiny card has no serving.duplicates
    by_sha = {sha(c.pictures[n]): n for n in new}
    relations = relations_of(c.store.database, list(by_sha), c.version)
    seen = {(r.sha256, r.other_sha256): r for rs in relations.values() for r in rs}
    assert seen, "ingest recorded no relation at all"
    for (a, b), relation in seen.items():
        assert a < b and relation.model_version == c.version
        va, vb = views[by_sha[a]], views[by_sha[b]]
        assert relation.hamming == hamming(va[2], vb[2])
        assert relation.similarity == pytest.approx(cosine(va[1], vb[1]), abs=1e-4)
        assert rules.judge(relation.similarity, relation.hamming) == relation.kind

    # The near pair: one that judge() calls a near duplicate, and recorded as one.
    original, small = views["portrait.png"], views["portrait-small.jpg"]
    measured = (cosine(original[1], small[1]), hamming(original[2], small[2]))
    assert rules.judge(*measured) == "near_duplicate", measured
    pair = tuple(sorted([sha(c.pictures["portrait.png"]), sha(c.pictures["portrait-small.jpg"])]))
    assert seen[pair].kind == "near_duplicate"
    assert seen[pair].hamming == measured[1]
    near_only = {p for p, r in seen.items() if r.kind == "near_duplicate"}
    assert near_only == {pair}  # strangers are ~30 bits apart: never near duplicates
    # The outcome of the later of the two carries the relation too.
    found = c.first.outcomes[incoming("portrait-small.jpg")].relations + \
        c.first.outcomes[incoming("portrait.png")].relations
    assert {tuple(sorted((r.sha256, r.other_sha256))) for r in found
            if r.kind == "near_duplicate"} == {pair}

    [group] = duplicate_groups(c.store.database, c.version)
    assert [m.sha256 for m in group.members] == list(pair)
    assert {m.key for m in group.members} == {c.key("portrait.png"), c.key("portrait-small.jpg")}
    assert {m.work.title for m in group.members} == {"Portrait of a Lady", None}
    assert [(p.sha256, p.other_sha256) for p in group.pairs] == [pair]


def test_the_cards_duplicate_thresholds_decide_what_ingest_records(
    tmp_path, store, tiny_model_card
):
    """With `serving.duplicates` allowing 0 bits of hash difference, the re-encoded copy is no
    near duplicate (at most related): ingest judges by the card, not by DEFAULTS."""
    classifier = classifier_with_duplicates(
        tiny_model_card, tmp_path / "card",
        {"min_similarity": 0.5, "max_hamming": 0, "related_min_similarity": 0.9})
    assert DuplicateThresholds.from_card(classifier.card.raw["serving"]).source == "card"
    ensure_model_version(store, classifier)
    lake = LocalLake(tmp_path / "lake", URL_KEY.encode())
    portrait = artwork(1402, (240, 180))
    pictures = {"a.png": encode(portrait, "PNG"), "b.jpg": near_copy_of(portrait),
                "c.jpg": encode(artwork(1499), "JPEG")}
    for name, data in pictures.items():
        lake.put(f"incoming/{name}", data)
    report = ingest_objects(lake.list("incoming/"), lake, classifier, store)
    assert report.indexed == 3

    views = {n: model_view(classifier, d) for n, d in pictures.items()}
    rules = DuplicateThresholds(0.5, 0, 0.9, "card")
    relations = relations_of(store.database, [sha(d) for d in pictures.values()],
                             classifier.version)
    stored = {tuple(sorted((r.sha256, r.other_sha256))): r
              for rs in relations.values() for r in rs}
    names = list(pictures)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            distance = hamming(views[a][2], views[b][2])
            found = stored.get(tuple(sorted((sha(pictures[a]), sha(pictures[b])))))
            if found is None:  # every pair of three works is among each one's 5 nearest
                assert rules.judge(cosine(views[a][1], views[b][1]), distance) is None
            else:
                assert found.hamming == distance
                assert found.kind == rules.judge(found.similarity, distance) != "near_duplicate"
    assert stored, "the card's related threshold relates these works"
    # The copy is a few bits away, so with max_hamming 0 it can be at most related.
    assert hamming(views["a.png"][2], views["b.jpg"][2]) > 0
    assert duplicate_groups(store.database, "tiny-0") == []


# -- intake triage -----------------------------------------------------------------------------


def test_triage_report_of_a_batch_in_two_parts(collection):
    c = collection
    assert [p.batch for p in c.parts] == [BATCH, BATCH]
    for part in (FIRST_PART, SECOND_PART):
        for suffix in (".csv", ".json"):
            assert c.lake.exists(f"reports/{BATCH}/{part}{suffix}")
    first_csv = c.lake.get(f"reports/{BATCH}/{FIRST_PART}.csv").decode()
    assert list(csv.DictReader(io.StringIO(first_csv))) == [
        {k: "" if v is None else str(v) for k, v in row.as_dict().items()}
        for row in c.parts[0].rows]
    assert json.loads(c.lake.get(f"reports/{BATCH}/{SECOND_PART}.json")) == c.parts[1].to_json()

    merged = triage.read_batch(c.lake, BATCH)
    assert merged is not None and merged.model_version == c.version
    rows = {row.file: row for row in merged.rows}
    # Every file of both deliveries, once (the CSV: for its malformed row).
    assert set(rows) == {f"{BATCH}/{n}" for n in [*c.pictures, "broken.jpg", "records.csv"]}
    assert [row.file for row in merged.rows] == sorted(rows)
    row = lambda name: rows[f"{BATCH}/{name}"]  # noqa: E731

    for name in c.pictures:
        r = row(name)
        assert r.problems is None or name == "mosaic.jpg", (name, r.problems)
        assert r.sha256 == sha(c.pictures[name]) and r.key == c.key(name)
        image = c.store.image_of(r.sha256, c.version)
        assert (r.predicted_type, r.probability) == (image.label, round(image.probability, 6))
        assert r.catalogued_type == (c.types.get(name) if name != "harbour-copy.jpg"
                                     else c.types["harbour.jpg"])
        known = r.catalogued_type is not None and r.catalogued_type != "mosaic"
        assert r.disagrees == ((r.catalogued_type != r.predicted_type) if known else None)
    assert row("still-life.jpg").disagrees is True and row("saint.jpg").disagrees is True
    assert row("portrait.png").disagrees is None  # nothing catalogued
    assert row("mosaic.jpg").disagrees is None  # not one of the classes ...
    assert "'mosaic'" in row("mosaic.jpg").problems  # ... and flagged
    assert row("harbour.jpg").original_name == f"{BATCH}/harbour.jpg"
    # The malformed CSV row: its picture is indexed (row kept whole in its record) and the
    # CSV's own row lists the problem (the CSV is parked under rejected/).
    assert row("portrait-small.jpg").status == "indexed"
    sheet = row("records.csv")
    assert (sheet.status, sheet.sha256, sheet.predicted_type) == ("sidecar", None, None)
    assert "line 7" in sheet.problems and "cells for" in sheet.problems
    small_record = WorkStore(c.store.database).get(sha(c.pictures["portrait-small.jpg"]))
    assert small_record["extra"]["sidecar_row"][0] == "portrait-small.jpg"

    assert row("harbour-copy.jpg").status == "duplicate"
    assert row("harbour-copy.jpg").duplicate_of == c.key("harbour.jpg")
    assert row("harbour-copy.jpg").duplicate_of_name == f"{BATCH}/harbour.jpg"
    assert row("river.jpg").status == "indexed" and row("river.jpg").duplicate_of is None
    assert c.second.outcomes[incoming("river.jpg.json")].status is Status.SKIPPED
    near = row("portrait-small.jpg"), row("portrait.png")
    assert {r.near_duplicate_of for r in near} == {c.key("portrait.png"),
                                                    c.key("portrait-small.jpg")}
    assert all(r.near_duplicate_similarity and r.near_duplicate_similarity > 0.9 for r in near)
    assert row("river.jpg").near_duplicate_of is None
    broken = row("broken.jpg")
    assert (broken.status, broken.sha256, broken.key) == ("rejected", None, None)
    assert broken.reason in ("unsupported_format", "corrupt_image") and broken.message

    counts = merged.counts()
    assert (counts["indexed"], counts["duplicate"], counts["rejected"], counts["sidecar"]) == (
        7, 1, 1, 1)
    assert counts["disagreements"] == sum(bool(r.disagrees) for r in merged.rows) >= 2
    assert counts["near_duplicates"] == 2
    table = triage.summary_table(merged)
    assert f"batch {BATCH}" in table and "rejected: " in table and "exact copy of" in table

    # Listing: the batch that grew last first.
    later = triage.TriageReport("later-batch", c.version, [], "2026-11-30T03:00:00+00:00")
    triage.write_part(c.lake, later, "2026-11-30T03-00-00Z-cccccccc")
    earlier = triage.TriageReport("early-batch", c.version, [], "2026-11-30T01:00:00+00:00")
    triage.write_part(c.lake, earlier, "2026-11-30T01-00-00Z-dddddddd")
    listed = triage.latest_reports(c.lake)
    assert [(r.batch, r.parts, r.updated) for r in listed] == [
        ("later-batch", 1, "2026-11-30T03-00-00Z-cccccccc"),
        (BATCH, 2, SECOND_PART),
        ("early-batch", 1, "2026-11-30T01-00-00Z-dddddddd")]
    assert [r.batch for r in triage.latest_reports(c.lake, limit=1)] == ["later-batch"]
    assert triage.read_batch(c.lake, "no-such-batch") is None


def test_a_csv_in_a_call_of_its_own_still_reports_its_malformed_rows(
    tmp_path, store, tiny_model_card
):
    """On S3 every object is its own event: a CSV often reaches an embed call without any
    picture. Its malformed rows still reach the batch's report (and the CSV is parked)."""
    classifier = get_classifier(tiny_model_card)
    ensure_model_version(store, classifier)
    lake = LocalLake(tmp_path / "lake", URL_KEY.encode())
    lake.put("incoming/box-3/records.csv",
             b"file,title\na.jpg,Fine\n,No file\nb.jpg,Too,Many\n", "text/csv")
    report = ingest_objects(["incoming/box-3/records.csv"], lake, classifier, store)
    [written] = triage.report_ingest(lake, store, report, part=FIRST_PART)
    [sheet] = written.rows
    assert (written.batch, sheet.file, sheet.status) == ("box-3", "box-3/records.csv", "sidecar")
    assert "line 3" in sheet.problems and "line 4" in sheet.problems
    assert triage.read_batch(lake, "box-3").rows == [sheet]
    # The records of its good rows wait in incoming/ for their pictures: no rows of their own.
    waiting = ingest_objects(lake.list("incoming/"), lake, classifier, store)
    assert {o.reason for o in waiting.outcomes.values()} == {"record_waits_for_its_picture"}
    assert triage.report_ingest(lake, store, waiting, part=SECOND_PART) == []


def test_a_file_redelivered_across_parts_is_one_row(tmp_path):
    """SQS delivers at least once: a file failed in one part and indexed by the retry in the
    next, or indexed and then found again by a redelivery, is one row: its first settled one."""
    lake = LocalLake(tmp_path / "lake", URL_KEY.encode())
    row = triage.TriageRow
    parts = {
        "2026-11-30T02-00-00Z-00000001": [row("b/x.jpg", "failed"), row("b/y.jpg", "indexed")],
        "2026-11-30T02-01-00Z-00000002": [row("b/x.jpg", "indexed", sha256="1" * 64),
                                          row("b/y.jpg", "duplicate"), row("b/z.jpg", "skipped")],
        "2026-11-30T02-02-00Z-00000003": [row("b/z.jpg", "indexed")],
    }
    for name, rows in parts.items():
        triage.write_part(lake, triage.TriageReport("b", "tiny-0", rows, name), name)
    merged = triage.read_batch(lake, "b")
    assert [(r.file, r.status, r.sha256) for r in merged.rows] == [
        ("b/x.jpg", "indexed", "1" * 64), ("b/y.jpg", "indexed", None),
        ("b/z.jpg", "indexed", None)]
    assert merged.counts()["indexed"] == 3 and "failed" not in merged.counts()


def test_batch_of_names_what_a_person_dropped_at_once():
    at = datetime(2026, 11, 30, 2, 41, tzinfo=UTC)
    assert triage.batch_of("incoming/accession 7/sub/a.jpg", at) == "accession_7"
    assert triage.batch_of("incoming/20261130T024100-a1b2c3-00004-harbour.jpg", at) == \
        "20261130T024100-a1b2c3"
    assert triage.batch_of("incoming/20261130T024100-a1b2c3-123456-big.jpg", at) == \
        "20261130T024100-a1b2c3"  # a folder of more than 99,999 pictures
    assert triage.batch_of("incoming/loose.jpg", at) == "drops-2026-11-30T02"
    assert triage.batch_of("incoming/.../a.jpg", at) == "drops-2026-11-30T02"  # nothing safe
    for name in ("accession_7", "20261130T024100-a1b2c3", "drops-2026-11-30T02"):
        assert triage.BATCH_NAME.match(name)


# -- curator review ----------------------------------------------------------------------------


def test_review_queue_decisions_and_audit_trail(collection):
    c = collection
    reviews = ReviewStore(c.store.database)
    classes = c.classifier.classes
    queue = reviews.queue(c.version, classes, min_probability=0.6)
    by_sha = {sha(d): n for n, d in c.pictures.items() if n != "harbour-copy.jpg"}
    names = [by_sha[item.sha256] for item in queue]
    # The tiny model is unsure of everything (top probability ~0.2): every work is queued.
    assert sorted(names) == sorted(by_sha.values())
    disagreeing = [item for item in queue if item.reason == "disagrees"]
    assert {by_sha[i.sha256] for i in disagreeing} >= {"still-life.jpg", "saint.jpg"}
    # Disagreements first, the likeliest catalogue errors (1 - p(catalogued)) leading ...
    assert queue[:len(disagreeing)] == disagreeing
    for item in queue:
        name = by_sha[item.sha256]
        probabilities = c.probabilities(name)
        catalogued = c.types.get(name)
        p_catalogued = (probabilities[classes.index(catalogued)]
                        if catalogued in classes else None)
        assert item.catalogued_probability == pytest.approx(p_catalogued, abs=1e-6) \
            if p_catalogued is not None else item.catalogued_probability is None
        expected = 1 - p_catalogued if p_catalogued is not None else 0.0
        assert item.wrong_catalogue == pytest.approx(expected, abs=1e-5), name
        assert item.key == c.key(name) and item.probability < 0.6
    assert [i.wrong_catalogue for i in disagreeing] == sorted(
        (i.wrong_catalogue for i in disagreeing), reverse=True)
    # ... then the uncertain, again by how likely their catalogued type is wrong.
    uncertain = queue[len(disagreeing):]
    assert all(i.reason == "uncertain" for i in uncertain)
    assert [i.wrong_catalogue for i in uncertain] == sorted(
        (i.wrong_catalogue for i in uncertain), reverse=True)
    assert len(reviews.queue(c.version, classes, min_probability=0.6, limit=2)) == 2
    # With a threshold below every probability only the disagreements are left.
    assert reviews.queue(c.version, classes, min_probability=0.0) == disagreeing

    still, saint = sha(c.pictures["still-life.jpg"]), sha(c.pictures["saint.jpg"])
    portrait, mosaic = sha(c.pictures["portrait.png"]), sha(c.pictures["mosaic.jpg"])
    decide = lambda *a, **k: reviews.decide(  # noqa: E731
        *a, model_version=c.version, classes=classes, **k)

    confirmed = decide(still, "confirm", None, reviewer="curator-ann", note="checked the file")
    assert (confirmed.decision, confirmed.label, confirmed.catalogued_type) == (
        "confirm", c.types["still-life.jpg"], c.types["still-life.jpg"])
    image = c.store.image_of(still, c.version)
    assert (confirmed.model_label, confirmed.model_version, confirmed.reviewer) == (
        image.label, c.version, "curator-ann")
    assert confirmed.model_probability == pytest.approx(image.probability, abs=1e-6)
    corrected = decide(saint, "correct", "sculpture", reviewer="curator-bob")
    assert (corrected.label, corrected.catalogued_type) == ("sculpture", c.types["saint.jpg"])
    again = decide(saint, "correct", "painting", reviewer="curator-ann")

    with pytest.raises(BadRequest) as no_type:  # nothing catalogued to confirm
        decide(portrait, "confirm", None, reviewer="curator-ann")
    assert (no_type.value.status, no_type.value.code) == (400, "bad_review")
    with pytest.raises(BadRequest) as unknown_type:  # 'mosaic' is not one of the classes
        decide(mosaic, "confirm", None, reviewer="curator-ann")
    assert unknown_type.value.code == "bad_review"
    for label in ("mosaic", "Sculpture", None):
        with pytest.raises(BadRequest) as bad_label:
            decide(portrait, "correct", label, reviewer="curator-ann")
        assert (bad_label.value.status, bad_label.value.code) == (400, "bad_review")
    for bad in ({"decision": "delete"}, {"reviewer": ""}, {"note": "x" * 1001}):
        args = {"decision": "correct", "reviewer": "curator-ann", **bad}
        with pytest.raises(BadRequest):
            decide(portrait, args["decision"], "painting", reviewer=args["reviewer"],
                   note=args.get("note"))
    with pytest.raises(NotFound) as unknown_work:
        decide("0" * 64, "correct", "painting", reviewer="curator-ann")
    assert unknown_work.value.status == 404
    with pytest.raises(NotFound):  # known work, but not indexed by that version
        reviews.decide(portrait, "correct", "painting", reviewer="curator-ann",
                       model_version="tiny-9", classes=classes)

    history = reviews.history(saint)
    assert [(h.decision, h.label, h.reviewer) for h in history] == [
        ("correct", "sculpture", "curator-bob"), ("correct", "painting", "curator-ann")]
    assert history[0].decided_at <= history[1].decided_at and history[0].id < history[1].id
    assert all(h.model_version == c.version and h.catalogued_type == c.types["saint.jpg"]
               for h in history)
    assert history[1] == again
    # The catalogue is never overwritten by a decision.
    works = WorkStore(c.store.database)
    assert works.get(saint)["catalogued_type"] == c.types["saint.jpg"]
    assert works.get(still)["catalogued_type"] == c.types["still-life.jpg"]

    labels = {entry.review.sha256: entry for entry in reviews.labels()}
    assert set(labels) == {still, saint}
    assert labels[saint].review.label == "painting"  # the latest decision
    assert labels[still].review.label == c.types["still-life.jpg"]
    assert labels[saint].key == c.key("saint.jpg")
    assert labels[saint].original_name == f"{BATCH}/saint.jpg"

    left = {i.sha256 for i in reviews.queue(c.version, classes, min_probability=0.6)}
    assert left == {i.sha256 for i in queue} - {still, saint}


# -- the routes --------------------------------------------------------------------------------


def call(method: str, resource: str, *, path: str | None = None, params=None, body=None,
         query=None, authorizer=None) -> dict:
    event = {
        "httpMethod": method, "resource": resource, "path": path or resource,
        "pathParameters": params, "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {}, "queryStringParameters": query,
        "multiValueQueryStringParameters": None,
        "body": None if body is None else json.dumps(body), "isBase64Encoded": False,
        "requestContext": {"requestId": "req-curation",
                           "authorizer": authorizer or {"principalId": "dev"}},
    }
    return predict.handler(event, LambdaContext("artlens-predict"))


def review_call(key: str, body, authorizer) -> dict:
    encoded = quote(key, safe="")
    return call("POST", "/review/{key}", path=f"/review/{encoded}", params={"key": encoded},
                body=body, authorizer=authorizer)


def report_call(batch: str) -> dict:
    return call("GET", "/reports/{batch}", path=f"/reports/{batch}", params={"batch": batch})


def test_curation_routes(collection):
    c = collection
    portrait, small = c.key("portrait.png"), c.key("portrait-small.jpg")

    dups = answer(call("GET", "/duplicates"))
    assert dups["model_version"] == c.version
    [group] = dups["groups"]
    assert {m["key"] for m in group["members"]} == {portrait, small}
    for member in group["members"]:
        assert member["thumbnail_url"] and member["url"] and "original_name" in member
    assert {m["title"] for m in group["members"]} == {"Portrait of a Lady", None}
    [pair] = group["pairs"]
    assert {pair["sha256"], pair["other_sha256"]} == {sha(c.pictures["portrait.png"]),
                                                      sha(c.pictures["portrait-small.jpg"])}
    assert pair["hamming"] <= DEFAULTS.max_hamming
    assert answer(call("GET", "/duplicates", query={"x": "1"}), 400)["error"] == "bad_query"

    queue = answer(call("GET", "/review", query={"limit": "50"}))
    assert queue["model_version"] == c.version and queue["classes"] == list(c.classifier.classes)
    assert queue["min_probability"] == 0.6
    items = queue["items"]
    expected = ReviewStore(c.store.database).queue(c.version, c.classifier.classes,
                                                   min_probability=0.6)
    assert [i["sha256"] for i in items] == [e.sha256 for e in expected]
    first = items[0]
    assert first["reason"] == "disagrees" and first["title"] and first["thumbnail_url"]
    assert len(answer(call("GET", "/review", query={"limit": "1"}))["items"]) == 1
    assert answer(call("GET", "/review", query={"limit": "0"}), 400)["error"]

    # Writing needs the review scope: a predict-only token is refused, and nothing is stored.
    refused = answer(review_call(first["key"], {"decision": "confirm"}, PREDICT_ONLY), 403)
    assert refused["error"] == "insufficient_scope"
    assert answer(review_call(first["key"], {"decision": "confirm"}, {"principalId": "dev"}),
                  403)["error"] == "insufficient_scope"
    assert ReviewStore(c.store.database).history(first["sha256"]) == []

    decided = answer(review_call(first["key"], {"decision": "confirm", "note": "seen"}, CURATOR))
    assert (decided["sha256"], decided["decision"], decided["reviewer"]) == (
        first["sha256"], "confirm", "curator-ann")
    assert decided["label"] == decided["catalogued_type"] and decided["note"] == "seen"
    assert decided["model_version"] == c.version and decided["decided_at"]
    saint = c.key("saint.jpg")
    by_sha = answer(review_call(sha(c.pictures["saint.jpg"]),
                                {"decision": "correct", "type": "sculpture"}, CURATOR))
    assert (by_sha["label"], by_sha["catalogued_type"]) == ("sculpture", c.types["saint.jpg"])

    for body in ({"decision": "correct"}, {"decision": "confirm", "type": "painting"},
                 {"decision": "maybe"}, {"decision": "confirm", "extra": 1}, ["confirm"],
                 {"decision": "correct", "type": "mosaic"}):
        bad = answer(review_call(saint, body, CURATOR), 400)
        assert bad["error"] == "bad_review", body
    no_type = answer(review_call(portrait, {"decision": "confirm"}, CURATOR), 400)
    assert no_type["error"] == "bad_review"
    unknown = answer(review_call("f" * 64, {"decision": "correct", "type": "painting"}, CURATOR),
                     404)
    assert unknown["error"] == "not_found"
    assert answer(review_call("not-a-key", {"decision": "confirm"}, CURATOR), 400)["error"] == \
        "bad_key"
    assert answer(call("GET", "/review/{key}", path=f"/review/{quote(saint, safe='')}",
                       params={"key": quote(saint, safe="")}), 405)["error"] == \
        "method_not_allowed"
    after = answer(call("GET", "/review"))["items"]
    assert {first["sha256"], sha(c.pictures["saint.jpg"])}.isdisjoint(i["sha256"] for i in after)

    detail = answer(call("GET", "/works/{key}", path=f"/works/{quote(saint, safe='')}",
                         params={"key": quote(saint, safe="")}))
    assert detail["key"] == saint and detail["title"] == "A Saint"
    assert detail["catalogued_type"] == c.types["saint.jpg"]  # untouched by the correction
    assert [(r["decision"], r["label"], r["reviewer"]) for r in detail["reviews"]] == [
        ("correct", "sculpture", "curator-ann")]
    assert all(r["kind"] != "near_duplicate" for r in detail["relations"])
    near = answer(call("GET", "/works/{key}", path=f"/works/{sha(c.pictures['portrait.png'])}",
                       params={"key": sha(c.pictures["portrait.png"])}))
    assert {(r["key"], r["kind"]) for r in near["relations"] if r["kind"] == "near_duplicate"} \
        == {(small, "near_duplicate")}
    assert near["reviews"] == []
    stored = relations_of(c.store.database, [sha(c.pictures["portrait.png"])], c.version)
    assert len(near["relations"]) == len(stored[sha(c.pictures["portrait.png"])])

    listed = answer(call("GET", "/reports"))["reports"]
    assert listed == [{"batch": BATCH, "parts": 2, "updated": SECOND_PART}]
    report = answer(report_call(BATCH))
    merged = triage.read_batch(c.lake, BATCH)
    assert report["rows"] == [row.as_dict() for row in merged.rows]
    assert report["counts"] == merged.counts() and report["csv"] == merged.to_csv()
    assert report["model_version"] == c.version
    assert len(list(csv.DictReader(io.StringIO(report["csv"])))) == len(report["rows"]) == 10
    assert answer(report_call("no-such-batch"), 404)["error"] == "not_found"
    for bad in ("..", "-x", "a%2Fb", "a b"):
        assert answer(report_call(bad), 400)["error"] == "bad_batch", bad

    # A picture already in the gallery, sent again: the answer says which work it is.
    harbour = c.pictures["harbour.jpg"]
    exact = answer(post(harbour, content_type="image/jpeg"))["already_in_collection"]
    assert (exact["kind"], exact["key"], exact["sha256"]) == (
        "exact", c.key("harbour.jpg"), sha(harbour))
    assert (exact["similarity"], exact["hamming"], exact["title"]) == (1.0, 0, "The Harbour")
    assert exact["thumbnail_url"] and exact["url"]
    # Another re-encoding of the portrait: the nearest work, when judge() says so, is named.
    again = near_copy_of(artwork(1402, (240, 180)), quality=45, margin=6)
    body = answer(post(again, content_type="image/jpeg"))
    _, embedding, phash = model_view(c.classifier, again)
    view = model_view(c.classifier, c.pictures["portrait.png"])
    assert DEFAULTS.judge(cosine(embedding, view[1]), hamming(phash, view[2])) == \
        "near_duplicate"
    already = body["already_in_collection"]
    assert already is not None and already["kind"] == "near_duplicate"
    assert already["key"] in (portrait, small)
    assert already["hamming"] <= DEFAULTS.max_hamming
    stranger = answer(post(encode(artwork(1777), "JPEG"), content_type="image/jpeg"))
    assert stranger["already_in_collection"] is None
