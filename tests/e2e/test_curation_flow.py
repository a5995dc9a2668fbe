"""Issue 14 end to end, as a collection manager runs it on the local stack: `make ingest` of a
folder with a sidecar CSV (malformed rows among them, an exact and a near duplicate, a
catalogued type the model disagrees with), POST /predict, the batch report (the CLI's `--json`
`report` and GET /reports/{batch}), one curator decision through POST /review/{key} with a
review-scope token, `make duplicates` and `make export-labels`. Every record, rendition and
report row is checked, and every file of the folder is accounted for.

Its own stack (bench.stress.local_stack, own state dir): the session's shared stack is counted
exactly by tests/e2e/test_local_stack.py, which a curated collection would disturb.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from artlens.duplicates import DEFAULTS, hamming, perceptual_hash
from artlens.image import load_image, preprocess
from artlens.models.classifier import get_classifier
from bench.stress import local_stack
from tests.imagegen import artwork, encode

# file -> (title, maker, date, type) of the CSV's well-formed rows; still-life's type is set
# to the class the model finds least likely (a disagreement whatever it predicts).
CSV_ROWS = {
    "harbour.jpg": ("The Harbour", "Jane Doe", "c. 1650", "painting"),
    "portrait.png": ("Portrait of a Lady", "Ann Other", "1880", ""),
    "portrait-small.jpg": ("Portrait of a Lady (copy)", "Ann Other", "1880", "painting"),
    "still-life.jpg": ("Still Life", "Pieter Claesz", "1630", None),
}
MALFORMED = [
    "sub/river.png,River,Someone,1900,drawings,EXTRA",  # too many cells: kept unparsed
    ",No File,Nobody,1700,painting",  # no file name: not applied
    "missing.jpg,Not Here,Nobody,1700,painting",  # names no picture of the folder
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) without raising on 4xx/5xx."""
    call = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(call, timeout=60) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def least_likely_type(card: Path, data: bytes) -> str:
    classifier = get_classifier(card)
    pixels = preprocess(load_image(data, size=classifier.input_size).rgb, classifier.input_size)
    probabilities = classifier.predict(pixels[np.newaxis]).probabilities[0]
    return classifier.classes[int(np.argmin(probabilities))]


def phash_of(card: Path, data: bytes) -> int:
    size = get_classifier(card).input_size
    return perceptual_hash(preprocess(load_image(data, size=size).rgb, size))


def with_exif(img: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Camera Maker"
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


def near_copy_of(img: Image.Image, quality: int, margin: int) -> bytes:
    w, h = img.size
    cropped = img.crop((margin, margin, w - margin, h - margin))
    return encode(cropped.resize((int(w * 0.85), int(h * 0.85))), "JPEG", quality=quality)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_card):
    with local_stack(tmp_path_factory.mktemp("curation_state"), tiny_model_card) as running:
        yield running


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_model_card) -> tuple[Path, dict[str, bytes], dict[str, str]]:
    """The dropped folder; returns it, its pictures by path and the catalogued types."""
    root = tmp_path_factory.mktemp("accession")
    portrait = artwork(1402, (240, 180))
    pictures = {
        "harbour.jpg": with_exif(artwork(1401, (260, 200))),
        "portrait.png": encode(portrait, "PNG"),
        "portrait-small.jpg": near_copy_of(portrait, quality=60, margin=4),
        "still-life.jpg": encode(artwork(1403, (220, 220)), "JPEG", quality=90),
        "sub/river.png": encode(artwork(1406, (210, 170)), "PNG"),
    }
    pictures["copies/harbour.jpg"] = pictures["harbour.jpg"]  # the very same bytes
    types = {name: row[3] for name, row in CSV_ROWS.items() if row[3]}
    types["still-life.jpg"] = least_likely_type(tiny_model_card, pictures["still-life.jpg"])
    for name, data in pictures.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "broken.jpg").write_text("this is not a picture at all\n")
    (root / "notes.txt").write_text("not a picture, not a record\n")
    lines = ["file,title,maker,date,type"]
    for name, (title, maker, date, _) in CSV_ROWS.items():
        lines.append(f"{name},{title},{maker},{date},{types.get(name, '')}")
    (root / "records.csv").write_text("\n".join(lines + MALFORMED) + "\n")
    return root, pictures, types


def test_ingest_predict_report_review_export(stack, folder, tiny_model_card, tmp_path):
    root, pictures, types = folder
    base, lake = stack.base_url, stack.lake_dir
    predict_only = {"Authorization": f"Bearer {stack.token}"}

    # -- make ingest ----------------------------------------------------------------------
    ran = stack.run("local_stack.ingest", str(root), "--no-progress", "--json", "--timeout", "120")
    assert ran.returncode == 0, f"{ran.stdout}\n{ran.stderr}\n{stack.log_tail()}"
    summary = json.loads(ran.stdout)
    assert (summary["indexed"], summary["duplicates"], summary["rejected"], summary["failed"],
            summary["timed_out"], summary["skipped"]) == (5, 1, 1, 0, 0, 1)
    assert (summary["sidecars"], summary["records"]) == (1, 5)  # river's row is kept unparsed
    problems = summary["record_problems"]
    assert any("records.csv line 6" in p and "cells for" in p for p in problems)
    assert any("records.csv line 7" in p and "no usable file name" in p for p in problems)
    assert any("missing.jpg" in p and "not a picture" in p for p in problems)
    items = {item["source"]: item for item in summary["items"]}
    assert set(items) == {*pictures, "broken.jpg"}
    assert items["copies/harbour.jpg"]["outcome"] == "duplicate"
    assert items["broken.jpg"]["outcome"] == "rejected"
    assert not [p for p in (lake / "incoming").rglob("*") if p.is_file()]  # all consumed

    # -- the batch report: every file of the folder accounted for ---------------------------
    report = summary["report"]
    batch = report["batch"]
    rows = {row["original_name"]: row for row in report["rows"]}
    assert len(rows) == len(report["rows"])
    assert set(rows) == {*pictures, "broken.jpg", "records.csv"}  # notes.txt: `skipped` above
    sheet = rows["records.csv"]
    assert sheet["status"] == "sidecar"
    assert all(p in sheet["problems"] for p in problems if p.startswith("records.csv"))
    keys = {}
    for name, data in pictures.items():
        row = rows[name]
        assert row["file"] == items[name]["incoming_name"]
        assert row["status"] == items[name]["outcome"] and row["sha256"] == sha(data)
        assert row["predicted_type"] and 0 < row["probability"] <= 1
        keys[name] = row["key"]
        assert row["key"].startswith(f"gallery/{sha(data)}.")
        catalogued = types.get(name) if name != "copies/harbour.jpg" else types["harbour.jpg"]
        assert row["catalogued_type"] == catalogued, name
        assert row["disagrees"] == (None if catalogued is None
                                    else catalogued != row["predicted_type"]), name
    assert rows["still-life.jpg"]["disagrees"] is True
    copy = rows["copies/harbour.jpg"]
    assert (copy["status"], copy["duplicate_of"], copy["duplicate_of_name"]) == (
        "duplicate", keys["harbour.jpg"], "harbour.jpg")
    assert {rows["portrait.png"]["near_duplicate_of"],
            rows["portrait-small.jpg"]["near_duplicate_of"]} == {keys["portrait.png"],
                                                                  keys["portrait-small.jpg"]}
    assert rows["sub/river.png"]["near_duplicate_of"] is None
    broken = rows["broken.jpg"]
    assert broken["status"] == "rejected" and broken["reason"] in (
        "unsupported_format", "corrupt_image")
    assert report["counts"]["indexed"] == 5 and report["counts"]["disagreements"] >= 1

    status, _, body = request("GET", f"{base}/reports", headers=predict_only)
    assert status == 200, body
    assert json.loads(body)["reports"][0]["batch"] == batch
    status, _, body = request("GET", f"{base}/reports/{batch}", headers=predict_only)
    assert status == 200, body
    served = json.loads(body)
    assert served["rows"] == report["rows"] and served["counts"] == report["counts"]
    as_csv = list(csv.DictReader(io.StringIO(served["csv"])))
    assert [r["original_name"] for r in as_csv] == [r["original_name"] for r in report["rows"]]
    assert (lake / "reports" / batch).is_dir()
    assert request("GET", f"{base}/reports/no-such-batch", headers=predict_only)[0] == 404

    # -- records and renditions of every work ---------------------------------------------
    for name, data in pictures.items():
        status, _, body = request("GET", f"{base}/works/{quote(keys[name], safe='')}",
                                  headers=predict_only)
        assert status == 200, body
        work = json.loads(body)
        assert work["sha256"] == sha(data)
        expected = CSV_ROWS.get(name if name != "copies/harbour.jpg" else "harbour.jpg")
        assert work["title"] == (expected[0] if expected else None), name
        assert work["original_name"] == ("copies/harbour.jpg" if name == "harbour.jpg" else name)
        for side, field in ((256, "thumbnail_url"), (1024, "url")):
            on_disk = lake / "renditions" / str(side) / f"{sha(data)}.jpg"
            assert on_disk.is_file(), name
            url = work[field] if work[field].startswith("http") else base + work[field]
            status, headers, served_bytes = request("GET", url)
            assert status == 200 and headers["Content-Type"] == "image/jpeg"
            shown = Image.open(io.BytesIO(served_bytes))
            assert max(shown.size) <= side and dict(shown.getexif()) == {}
    river = json.loads(request("GET", f"{base}/works/{sha(pictures['sub/river.png'])}",
                               headers=predict_only)[2])
    assert river["extra"]["sidecar_row"][0] == "sub/river.png"  # the malformed row, kept

    # -- predict: the duplicate notices ---------------------------------------------------
    status, _, body = request("POST", f"{base}/predict", pictures["harbour.jpg"],
                              {**predict_only, "Content-Type": "image/jpeg"})
    assert status == 200, body
    exact = json.loads(body)["already_in_collection"]
    assert (exact["kind"], exact["key"], exact["title"]) == (
        "exact", keys["harbour.jpg"], "The Harbour")
    again = near_copy_of(artwork(1402, (240, 180)), quality=45, margin=6)
    assert hamming(phash_of(tiny_model_card, again),
                   phash_of(tiny_model_card, pictures["portrait.png"])) <= DEFAULTS.max_hamming
    status, _, body = request("POST", f"{base}/predict?scope=all", again,
                              {**predict_only, "Content-Type": "image/jpeg"})
    assert status == 200, body
    answer = json.loads(body)
    near = answer["already_in_collection"]
    assert near["kind"] == "near_duplicate"
    assert near["key"] in (keys["portrait.png"], keys["portrait-small.jpg"])
    assert near["title"].startswith("Portrait of a Lady")
    assert all({"title", "maker", "thumbnail_url", "relation"} <= set(n)
               for n in answer["neighbors"])

    # -- review one work ------------------------------------------------------------------
    minted = stack.run("local_stack.token", "--sub", "curator-e2e", "--scope", "predict",
                       "--scope", "review")
    assert minted.returncode == 0, minted.stderr
    curator = {"Authorization": f"Bearer {minted.stdout.strip()}"}
    status, _, body = request("GET", f"{base}/whoami", headers=curator)
    assert json.loads(body)["scopes"] == ["predict", "review"]
    status, _, body = request("GET", f"{base}/review", headers=curator)
    assert status == 200, body
    queue = json.loads(body)["items"]
    still = sha(pictures["still-life.jpg"])
    assert queue[0]["reason"] == "disagrees"
    assert still in {i["sha256"] for i in queue if i["reason"] == "disagrees"}

    corrected = [c for c in ("drawings", "engraving", "iconography", "painting", "sculpture")
                 if c != types["still-life.jpg"]][0]
    decision = json.dumps({"decision": "correct", "type": corrected, "note": "seen in store"})
    review_url = f"{base}/review/{quote(keys['still-life.jpg'], safe='')}"
    status, _, body = request("POST", review_url, decision.encode(),
                              {**predict_only, "Content-Type": "application/json"})
    assert status == 403 and json.loads(body)["error"] == "insufficient_scope"
    status, _, body = request("POST", review_url, decision.encode(),
                              {**curator, "Content-Type": "application/json"})
    assert status == 200, body
    decided = json.loads(body)
    assert (decided["sha256"], decided["label"], decided["reviewer"], decided["decision"]) == (
        still, corrected, "curator-e2e", "correct")
    assert decided["catalogued_type"] == types["still-life.jpg"]
    assert decided["model_version"] == "tiny-0"
    work = json.loads(request("GET", f"{base}/works/{still}", headers=predict_only)[2])
    assert work["catalogued_type"] == types["still-life.jpg"]  # never overwritten
    assert [(r["label"], r["reviewer"]) for r in work["reviews"]] == [(corrected, "curator-e2e")]
    status, _, body = request("GET", f"{base}/review", headers=curator)
    assert still not in {i["sha256"] for i in json.loads(body)["items"]}

    # -- make duplicates ------------------------------------------------------------------
    listed = stack.run("local_stack.curation", "duplicates", "--json")
    assert listed.returncode == 0, listed.stderr
    groups = json.loads(listed.stdout)["groups"]
    assert [{m["key"] for m in g["members"]} for g in groups] == [
        {keys["portrait.png"], keys["portrait-small.jpg"]}]
    status, _, body = request("GET", f"{base}/duplicates", headers=predict_only)
    assert [{m["key"] for m in g["members"]} for g in json.loads(body)["groups"]] == [
        {keys["portrait.png"], keys["portrait-small.jpg"]}]

    # -- make export-labels ---------------------------------------------------------------
    out = tmp_path / "labels.csv"
    exported = stack.run("local_stack.curation", "export-labels", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    [label] = list(csv.DictReader(out.open(encoding="utf-8")))
    assert (label["sha256"], label["label"], label["decision"], label["reviewer"],
            label["model_version"], label["catalogued_type"]) == (
        still, corrected, "correct", "curator-e2e", "tiny-0", types["still-life.jpg"])
    assert Path(label["file"]).is_absolute()
    assert sha(Path(label["file"]).read_bytes()) == still  # the picture training will read
