"""Collection records (issue 14, "Records"): sidecar CSV / per-picture JSON through the local
`make ingest` path and an S3 drop, stored in the `works` table beside the embeddings, and
answered by /predict, /map and GET /works/{key}. Real PostgreSQL + pgvector, the tiny real ONNX
model, a folder lake; S3 is moto (the only mocked part)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest

from artlens.index.database import Database
from artlens.index.works import WorkRecord, WorkStore, WorkUpdate, parse_csv
from artlens.ingest import Status, ingest_objects
from artlens.lake import LocalLake, S3Lake
from artlens.models.classifier import get_classifier
from artlens.models.versions import ensure_model_version
from local_stack.ingest import _incoming_name, collect_records, drop, find_images, write_record
from tests.imagegen import jpeg_bytes
from tests.integration.test_api_contract import call
from tests.integration.test_ingest_s3 import BUCKET
from tests.integration.test_ingest_s3 import s3 as s3  # the fixture: a moto bucket
from tests.integration.test_predict_handler import answer, post
from tests.integration.test_predict_handler import (
    stack as stack,  # the fixture: a gallery of real embeddings, the handler environment
)

RECORD_FIELDS = {"original_name", "title", "maker", "date", "inventory_number",
                 "catalogued_type", "permalink", "licence"}
CSV_TEXT = """file,title,maker,date,inventory_number,type,permalink,licence,credit line
a.jpg,The Harbour,Jane Doe,c. 1650,INV-001,painting,https://museum.example/w/1,CC BY 4.0,Gift
b.jpg,Bad Link,Ann Other,1880,INV-002,drawings,ftp://museum.example/2,,
sub/c.jpg,Mosaic Panel,Unknown,3rd c.,INV-003,mosaic,,,
e.jpg,CSV title,CSV maker,1901,INV-005,engraving,,,
g.jpg,Too,Many,Cells,INV-007,painting,https://museum.example/w/7,CC0,x,EXTRA
,No file,Nobody,1700,INV-008,painting,,,
missing.jpg,Not Here,Nobody,1700,INV-009,painting,,,
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def classifier(tiny_model_card):
    return get_classifier(tiny_model_card)


@pytest.fixture
def works(store) -> WorkStore:
    return WorkStore(store.database)


def collection_folder(root: Path) -> dict[str, bytes]:
    """A dropped folder: six pictures, a CSV (malformed rows among them), a per-picture JSON
    that wins over its CSV row, a stem-named JSON, and one picture without any record."""
    pictures = {name: jpeg_bytes(seed) for seed, name in enumerate(
        ["a.jpg", "b.jpg", "sub/c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg"], start=1400)}
    for name, data in pictures.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "records.csv").write_text(CSV_TEXT)
    (root / "e.jpg.json").write_text(json.dumps({"title": "JSON title", "room": 12}))
    (root / "f.json").write_text(json.dumps({"title": "Still Life", "type": " Paintings "}))
    (root / "orphan.json").write_text(json.dumps({"title": "No picture"}))
    return pictures


def drop_like_make_ingest(directory: Path, incoming: Path) -> tuple[dict[str, str], list[str]]:
    """What `python -m local_stack.ingest DIR` does before the watcher takes over: each
    picture's record, then the picture, into incoming/. Returns {source: incoming key}."""
    images, others = find_images(directory)
    sidecars = [p for p in others if p.suffix in (".csv", ".json")]
    assert len(sidecars) == len(others)  # sidecars are never treated as other files
    records, problems = collect_records(directory, images, sidecars)
    incoming.mkdir(parents=True, exist_ok=True)
    keys = {}
    for index, source in enumerate(images):
        name = source.relative_to(directory).as_posix()
        incoming_name = _incoming_name("run", index, source)
        record = records.get(source, WorkRecord())
        write_record(incoming, incoming_name, replace(record, original_name=name))
        drop(source, incoming, incoming_name)
        keys[name] = f"incoming/{incoming_name}"
    return keys, problems


def test_a_folder_with_sidecars_through_the_local_path(tmp_path, store, works, classifier):
    folder = tmp_path / "drop"
    pictures = collection_folder(folder)
    lake = LocalLake(tmp_path / "lake", b"records-url-key")
    ensure_model_version(store, classifier)
    keys, problems = drop_like_make_ingest(folder, tmp_path / "lake" / "incoming")

    # The watcher announces every file of incoming/, records included.
    report = ingest_objects(lake.list("incoming/"), lake, classifier, store, batch_size=3)

    assert {report.outcomes[k].status for k in keys.values()} == {Status.INDEXED}
    assert report.indexed == len(pictures) and report.rejected == 0 and report.failed == 0
    assert lake.list("incoming/") == []  # every picture and every record consumed
    # Malformed rows and stray sidecars are reported by the folder's reading ...
    assert any("ftp://museum.example/2" in p and "not an http(s) URL" in p for p in problems)
    assert any("line 6" in p and "cells for" in p for p in problems)
    assert any("line 7" in p and "no usable file name" in p for p in problems)
    assert any("missing.jpg" in p and "not a picture" in p for p in problems)
    assert any("orphan.json" in p for p in problems)
    # ... and the unknown type by the ingest that checked it against the model's classes.
    flagged = report.outcomes[keys["sub/c.jpg"]].problems
    assert any("'mosaic'" in p and "not one of the model's classes" in p for p in flagged)
    assert any("'mosaic'" in p for p in report.problems)

    record = works.get(sha(pictures["a.jpg"]))
    assert record is not None
    assert {k: record[k] for k in ("original_name", "title", "maker", "date", "inventory_number",
                                   "catalogued_type", "permalink", "licence")} == {
        "original_name": "a.jpg", "title": "The Harbour", "maker": "Jane Doe",
        "date": "c. 1650", "inventory_number": "INV-001", "catalogued_type": "painting",
        "permalink": "https://museum.example/w/1", "licence": "CC BY 4.0"}
    assert record["extra"] == {"credit_line": "Gift"}
    assert record["catalogued_type_known"] is True
    assert record["source_key"] == keys["a.jpg"]

    bad_link = works.get(sha(pictures["b.jpg"]))
    assert bad_link["permalink"] is None and bad_link["title"] == "Bad Link"
    assert bad_link["extra"]["invalid"] == {"permalink": "ftp://museum.example/2"}  # kept

    mosaic = works.get(sha(pictures["sub/c.jpg"]))
    assert (mosaic["original_name"], mosaic["catalogued_type"]) == ("sub/c.jpg", "mosaic")
    assert mosaic["catalogued_type_known"] is False

    bare = works.get(sha(pictures["d.jpg"]))
    assert bare["original_name"] == "d.jpg" and bare["title"] is None

    merged = works.get(sha(pictures["e.jpg"]))  # the JSON wins field by field over the CSV
    assert (merged["title"], merged["maker"], merged["catalogued_type"]) == (
        "JSON title", "CSV maker", "engraving")
    assert merged["extra"] == {"room": 12}

    stem = works.get(sha(pictures["f.jpg"]))
    assert (stem["title"], stem["catalogued_type"], stem["catalogued_type_known"]) == (
        "Still Life", "painting", True)

    unparsed = works.get(sha(pictures["g.jpg"]))  # nothing lost: the row kept whole
    assert unparsed["extra"]["sidecar_row"][:3] == ["g.jpg", "Too", "Many"]
    assert unparsed["original_name"] == "g.jpg"


def test_a_new_record_for_a_known_picture_updates_it_and_keeps_the_old_values(
    tmp_path, store, works, classifier
):
    lake = LocalLake(tmp_path / "lake", b"records-url-key")
    ensure_model_version(store, classifier)
    data = jpeg_bytes(1500)
    lake.put("incoming/first.jpg", data)
    lake.put("incoming/first.jpg.json", json.dumps(
        {"title": "Old title", "maker": "Maker", "type": "painting"}).encode())
    first = ingest_objects(lake.list("incoming/"), lake, classifier, store)
    assert first.outcomes["incoming/first.jpg"].status is Status.INDEXED
    before = works.get(sha(data))

    # The same picture again, under another name, with a corrected record (no maker given).
    lake.put("incoming/again.jpg", data)
    lake.put("incoming/again.json", json.dumps(
        {"title": "New title", "type": "sculpture"}).encode())
    again = ingest_objects(lake.list("incoming/"), lake, classifier, store)
    assert again.outcomes["incoming/again.jpg"].status is Status.DUPLICATE
    assert lake.list("incoming/") == []

    after = works.get(sha(data))
    assert (after["title"], after["maker"], after["catalogued_type"]) == (
        "New title", "Maker", "sculpture")  # a field left out keeps its value
    assert after["original_name"] == "again.jpg"
    assert after["updated_at"] > before["updated_at"]
    assert after["created_at"] == before["created_at"]
    [change] = after["history"]
    assert change["fields"] == {"title": "Old title", "catalogued_type": "painting",
                                "original_name": "first.jpg"}
    assert change["source_key"] == "incoming/again.jpg" and change["at"]

    # The same record once more changes nothing (a redelivered message).
    assert WorkStore(store.database).upsert_many(
        [WorkUpdate(sha(data), WorkRecord(title="New title"), None, "incoming/again.jpg")]
    ) == [False]
    assert works.get(sha(data))["updated_at"] == after["updated_at"]


def test_the_records_of_one_call_are_applied_in_order_even_to_the_same_picture(works):
    first, other = "a" * 64, "b" * 64
    changed = works.upsert_many([
        WorkUpdate(first, WorkRecord(title="First", maker="Maker"), None, "incoming/a1.jpg"),
        WorkUpdate(other, WorkRecord(title="Other", catalogued_type="painting"), True,
                   "incoming/b.jpg"),
        WorkUpdate(first, WorkRecord(title="Second"), None, "incoming/a2.jpg"),
        WorkUpdate(first, WorkRecord(title="Second"), None, "incoming/a2.jpg"),  # no change
    ])
    assert changed == [True, True, True, False]
    again = works.get(first)
    assert (again["title"], again["maker"], again["source_key"]) == (
        "Second", "Maker", "incoming/a2.jpg")
    [change] = again["history"]  # the first record's title, replaced by the second's
    assert change["fields"] == {"title": "First"} and change["source_key"] == "incoming/a2.jpg"
    assert (works.get(other)["catalogued_type"], works.get(other)["catalogued_type_known"]) == (
        "painting", True)


def test_csv_parsing_reports_and_keeps(tmp_path):
    rows = parse_csv(b"file;Title;License;Notes\n./x.jpg;A;CC0;n1\n../y.jpg;B;;\n",
                     "s.csv")
    assert set(rows.records) == {"x.jpg"}
    assert rows.records["x.jpg"].licence == "CC0"  # 'License' is the same field
    assert rows.records["x.jpg"].extra == {"notes": "n1"}
    assert any("../y.jpg" in p for p in rows.problems)  # a path out of the folder: refused
    assert parse_csv(b"title,maker\nA,B\n", "n.csv").problems == ["n.csv: no 'file' column "
                                                                  "in the header"]


# -- S3 drops -----------------------------------------------------------------------------


def test_a_csv_dropped_on_s3_is_split_into_records(s3, store, works, classifier):
    lake = S3Lake(s3, BUCKET)
    ensure_model_version(store, classifier)
    a, b = jpeg_bytes(1600), jpeg_bytes(1601)
    lake.put("incoming/batch/a.jpg", a, "image/jpeg")
    lake.put("incoming/batch/b.jpg", b, "image/jpeg")
    lake.put("incoming/batch/records.csv", (
        b"file,title,maker,type\na.jpg,Harbour,Doe,painting\nb.jpg,Portrait,Roe,portrait\n"
        b",Lost row,Nobody,painting\n"), "text/csv")

    # One SQS batch, pictures announced first: the CSV is still split before they are read.
    keys = ["incoming/batch/a.jpg", "incoming/batch/b.jpg", "incoming/batch/records.csv"]
    report = ingest_objects(keys, lake, classifier, store)

    assert report.outcomes["incoming/batch/records.csv"].status is Status.SIDECAR
    assert report.indexed == 2 and report.rejected == 0 and report.failed == 0
    assert (works.get(sha(a))["title"], works.get(sha(a))["original_name"]) == (
        "Harbour", "batch/a.jpg")
    assert works.get(sha(b))["catalogued_type_known"] is False  # 'portrait': kept, flagged
    assert any("line 4" in p and "no usable file name" in p for p in report.problems)
    # The split's own records were consumed with their pictures; the CSV with a malformed row
    # is kept under rejected/ with its problems listed.
    assert lake.list("incoming/") == []
    [parked] = [k for k in lake.list("rejected/") if k.endswith(".reason.json")]
    reason = json.loads(lake.get(parked))
    assert reason["error"] == "sidecar_problems"
    assert reason["source_key"] == "incoming/batch/records.csv"
    assert b"Lost row" in lake.get(parked.removesuffix(".reason.json"))


def test_a_csv_arriving_after_its_pictures_on_s3_still_records_them(s3, store, works,
                                                                      classifier):
    lake = S3Lake(s3, BUCKET)
    ensure_model_version(store, classifier)
    data = jpeg_bytes(1700)
    lake.put("incoming/late.jpg", data, "image/jpeg")
    first = ingest_objects(["incoming/late.jpg"], lake, classifier, store)
    assert first.outcomes["incoming/late.jpg"].status is Status.INDEXED
    assert works.get(sha(data))["title"] is None

    lake.put("incoming/late.csv", b"file,title\nlate.jpg,Arrived Late\n", "text/csv")
    split = ingest_objects(["incoming/late.csv"], lake, classifier, store)
    assert split.outcomes["incoming/late.csv"].status is Status.SIDECAR
    assert lake.list("incoming/") == ["incoming/late.jpg.json"]
    # The record's own notification: applied to the work last dropped under that name.
    late = ingest_objects(["incoming/late.jpg.json"], lake, classifier, store)
    assert late.outcomes["incoming/late.jpg.json"].status is Status.SIDECAR
    assert works.get(sha(data))["title"] == "Arrived Late"
    assert lake.list("incoming/") == []


# -- the API ------------------------------------------------------------------------------


def test_neighbours_map_points_and_works_carry_the_records(stack, pg_dsn):
    seeded, _ = stack
    works = WorkStore(Database(pg_dsn))
    titled = seeded[:20]
    works.upsert_many([
        WorkUpdate(sha(s.data), WorkRecord(
            original_name=f"scan-{i}.png", title=f"Work {i}", maker=f"Maker {i}", date="1700",
            inventory_number=f"INV-{i}", catalogued_type=s.label,
            permalink=f"https://museum.example/w/{i}", licence="CC0", extra={"room": i}),
            True, f"incoming/scan-{i}.png")
        for i, s in enumerate(titled)
    ])
    titles = {s.key: f"Work {i}" for i, s in enumerate(titled)}

    body = answer(post(seeded[30].data, query={"neighbors": "20", "scope": "all"}))
    assert len(body["neighbors"]) == 20
    for neighbour in body["neighbors"]:
        assert set(neighbour) >= RECORD_FIELDS
        assert neighbour["title"] == titles.get(neighbour["key"])
        if neighbour["title"]:
            i = int(neighbour["title"].split()[1])
            assert (neighbour["maker"], neighbour["permalink"]) == (
                f"Maker {i}", f"https://museum.example/w/{i}")
    assert any(n["title"] for n in body["neighbors"])
    assert any(n["title"] is None for n in body["neighbors"])

    points = answer(call("GET", "/map", query={"limit": "1000"}))["points"]
    assert len(points) == len(seeded)
    assert all(set(p) >= RECORD_FIELDS for p in points)
    assert {p["key"]: p["title"] for p in points if p["title"]} == titles
    assert {p["date"] for p in points if p["title"]} == {"1700"}

    work = titled[3]
    by_key = answer(works_call(quote(work.key, safe="")))
    assert by_key["sha256"] == sha(work.data) and by_key["key"] == work.key
    assert (by_key["title"], by_key["maker"], by_key["inventory_number"]) == (
        "Work 3", "Maker 3", "INV-3")
    assert by_key["extra"] == {"room": 3} and by_key["catalogued_type_known"] is True
    assert by_key["label"] == work.label and by_key["url"]
    assert answer(works_call(sha(work.data).upper())) == by_key
    assert answer(works_call(work.key)) == by_key  # passed on decoded: the same work

    untitled = answer(works_call(sha(seeded[40].data)))  # indexed before any record
    assert untitled["title"] is None and untitled["key"] == seeded[40].key

    missing = works_call("0" * 64)
    assert missing["statusCode"] == 404
    assert json.loads(missing["body"])["error"] == "not_found"
    for bad in ("not-a-key", quote("uploads/" + "0" * 64, safe=""), "gallery%2F..%2Fx.jpg"):
        refused = works_call(bad)
        assert refused["statusCode"] == 400, bad
        assert json.loads(refused["body"])["error"] == "bad_key"
    assert works_call(sha(work.data), query={"x": "1"})["statusCode"] == 400


def works_call(key: str, *, query=None) -> dict:
    """GET /works/{key} as API Gateway sends it: the resource template, the path parameter."""
    from lambdas import predict
    from local_stack.events import LambdaContext

    event = {
        "httpMethod": "GET", "resource": "/works/{key}", "path": f"/works/{key}",
        "pathParameters": {"key": key}, "headers": {}, "multiValueHeaders": {},
        "queryStringParameters": query, "multiValueQueryStringParameters": None, "body": None,
        "isBase64Encoded": False,
        "requestContext": {"requestId": "req-works", "authorizer": {"principalId": "dev"}},
    }
    return predict.handler(event, LambdaContext("artlens-predict"))
