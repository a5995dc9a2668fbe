"""Curator labels (`python -m training --labels FILE`) as a labelled source of the training data:
a corrected label changes what the next run sees; new pictures are added; bad rows are reported.
No TensorFlow: the listing and cleaning step is what both configs (CNN and v2) read."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter

import numpy as np
import pytest

from tests.imagegen import artwork, encode, jpeg_bytes, near_copy
from training.__main__ import main
from training.data import (
    LABEL_COLUMNS,
    card_data,
    list_pictures,
    load_pool,
    near_copies_of,
    row_hashes,
)

CLASSES = ("drawings", "painting", "sculpture")


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _labels_csv(path, rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    "decision": "correct",
                    "reviewer": "curator@example.org",
                    "decided_at": "2026-11-30T01:00:00Z",
                    "model_version": "2026.11.29-2310-b9125b0",
                    "catalogued_type": "",
                }
                | row
            )
    return path


@pytest.fixture()
def dataset(tmp_path):
    """Three classes x 3 distinct pictures; X = painting/x.jpg."""
    root = tmp_path / "data"
    for c, cls in enumerate(CLASSES):
        for i in range(3):
            _write(root / cls / f"{i}.jpg", jpeg_bytes(100 * c + i))
    x = _write(root / "painting" / "x.jpg", jpeg_bytes(555))
    return root, x


def test_a_corrected_label_changes_what_the_next_run_sees(dataset, tmp_path):
    root, x = dataset
    review = tmp_path / "review"
    new = _write(review / "new" / "n.png", encode(artwork(777), "PNG"))
    rows = [
        # an older decision on X, superseded by the later one below
        {"file": str(x), "sha256": _sha(x.read_bytes()), "label": "sculpture",
         "decided_at": "2026-11-29T09:00:00Z"},
        {"file": str(x), "sha256": _sha(x.read_bytes()), "label": "Drawings"},  # any case
        # relative to the CSV's folder: a picture the data does not have
        {"file": "new/n.png", "sha256": _sha(new.read_bytes()), "label": "sculpture"},
        {"file": "gone/absent.jpg", "sha256": "0" * 64, "label": "painting"},
        {"file": "new/n.png", "sha256": _sha(new.read_bytes()), "label": "tapestry"},
    ]
    labels = _labels_csv(review / "labels.csv", rows)

    before = load_pool(root, progress=False)
    after = load_pool(root, progress=False, labels=[labels])

    def type_of(pool, name):
        return pool.classes[pool.labels[pool.paths.index(name)]]

    assert type_of(before, "painting/x.jpg") == "painting"
    assert type_of(after, "painting/x.jpg") == "drawings"  # the curator's correction
    assert type_of(after, str(new)) == "sculpture"  # added, under its full path
    assert Counter(after.classes[i] for i in after.labels) == {
        "drawings": 4, "painting": 3, "sculpture": 4
    }
    assert Counter(before.classes[i] for i in before.labels) == {
        "drawings": 3, "painting": 4, "sculpture": 3
    }
    assert after.report["per_class"]["painting"]["seen"] == 3
    assert after.report["data_checksum"].startswith(before.report["data_checksum"] + "+labels")

    lab = after.report["labels"]
    assert (lab["rows"], lab["replaced"], lab["added"], lab["skipped"], lab["superseded"]) == (
        5, 1, 1, 2, 1
    )
    reasons = {r["reason"]: r for r in lab["skipped_rows"]}
    assert set(reasons) == {"missing_file", "unknown_label"}
    assert reasons["missing_file"]["line"] == 5
    assert "absent.jpg" in reasons["missing_file"]["message"]
    # the refusal names the label and every class the data knows
    assert "'tapestry'" in reasons["unknown_label"]["message"]
    assert all(c in reasons["unknown_label"]["message"] for c in CLASSES)

    # the card's training.data records what the labels did
    card = card_data(root, after.report)["labels"]
    assert (card["replaced"], card["added"], card["skipped"]) == (1, 1, 2)
    assert card["per_reason"] == {"missing_file": 1, "unknown_label": 1}


def test_the_listing_itself_carries_the_label_for_every_config(dataset, tmp_path):
    root, x = dataset
    labels = _labels_csv(tmp_path / "l.csv", [{"file": str(x), "sha256": "", "label": "sculpture"}])
    listing = list_pictures(root, labels=[labels])
    by_path = {p: c for c, p in listing.files}
    assert by_path[x] == "sculpture"
    assert Counter(c for c, _ in listing.files)["painting"] == 3
    assert listing.labels["replaced"] == 1 and listing.labels["files_relabelled"] == 1
    # without labels the listing is the folders'
    assert {p: c for c, p in list_pictures(root).files}[x] == "painting"


def test_the_cache_never_serves_the_unlabelled_pool(dataset, tmp_path):
    root, x = dataset
    cache = tmp_path / "cache"
    labels = _labels_csv(tmp_path / "l.csv", [{"file": str(x), "sha256": "", "label": "drawings"}])
    plain = load_pool(root, cache_dir=cache, progress=False)
    labelled = load_pool(root, cache_dir=cache, progress=False, labels=[labels])
    assert plain.classes[plain.labels[plain.paths.index("painting/x.jpg")]] == "painting"
    assert labelled.classes[labelled.labels[labelled.paths.index("painting/x.jpg")]] == "drawings"
    assert len(list(cache.iterdir())) == 2


def test_a_correction_by_sha256_alone_needs_no_file(dataset, tmp_path):
    """The export leaves `file` empty for a work that is not in the lake: a picture the data
    holds is still found by its SHA-256; an unknown one is reported."""
    root, x = dataset
    labels = _labels_csv(
        tmp_path / "l.csv",
        [{"file": "", "sha256": _sha(x.read_bytes()), "label": "sculpture"},
         {"file": "", "sha256": "cd" * 32, "label": "sculpture"}],
    )
    pool = load_pool(root, progress=False, labels=[labels])
    assert pool.classes[pool.labels[pool.paths.index("painting/x.jpg")]] == "sculpture"
    lab = pool.report["labels"]
    assert (lab["replaced"], lab["skipped"], lab["per_reason"]) == (1, 1, {"missing_file": 1})
    assert lab["replaced_pictures"][0]["file"] == str(x)


def test_a_mismatched_sha256_is_reported_not_applied(dataset, tmp_path):
    root, x = dataset
    labels = _labels_csv(
        tmp_path / "l.csv", [{"file": str(x), "sha256": "ab" * 32, "label": "drawings"}]
    )
    pool = load_pool(root, progress=False, labels=[labels])
    assert pool.classes[pool.labels[pool.paths.index("painting/x.jpg")]] == "painting"
    assert pool.report["labels"]["per_reason"] == {"sha256_mismatch": 1}


def test_labelled_pictures_go_through_the_same_grouping_and_cross_source_check(dataset, tmp_path):
    """A labelled near copy of a data picture joins that picture's group (one row, the curator's
    type: it can never sit on both sides of the split); a labelled copy of a cross-source
    validation picture is found by the check that keeps such rows out of training."""
    root, _ = dataset
    review = tmp_path / "review"
    copy = _write(review / "copy.jpg", near_copy(artwork(100)))  # painting/0.jpg re-encoded
    val_picture = artwork(4242)
    leak = _write(review / "leak.jpg", near_copy(val_picture))
    kaggle = tmp_path / "kaggle" / "dataset" / "dataset_updated" / "validation_set"
    _write(kaggle / "drawings" / "v.jpg", encode(val_picture))
    _write(kaggle / "painting" / "w.jpg", jpeg_bytes(4343))
    labels = _labels_csv(
        review / "labels.csv",
        [{"file": "copy.jpg", "sha256": "", "label": "drawings"},
         {"file": "leak.jpg", "sha256": "", "label": "drawings"}],
    )
    pool = load_pool(root, progress=False, labels=[labels])
    assert pool.report["labels"]["added"] == 2
    assert pool.report["totals"]["near_duplicates"] == 1  # the copy and painting/0.jpg: one row
    assert str(copy) in pool.paths and "painting/0.jpg" not in pool.paths
    assert pool.classes[pool.labels[pool.paths.index(str(copy))]] == "drawings"
    val = load_pool(tmp_path / "kaggle", progress=False, split="validation_set")
    flagged = near_copies_of(row_hashes(pool), row_hashes(val))
    assert [pool.paths[i] for i in np.nonzero(flagged)[0]] == [str(leak)]


def test_an_unusable_labels_file_stops_the_run_before_any_work(dataset, tmp_path, capsys):
    root, _ = dataset
    assert main(["--data", str(root), "--labels", str(tmp_path / "absent.csv")]) == 2
    assert "absent.csv not found" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.csv", b"path,type\nx.jpg,drawings\n")
    assert main(["--data", str(root), "--labels", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "no file, sha256, label column" in err and ",".join(LABEL_COLUMNS) in err
