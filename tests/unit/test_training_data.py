"""Data loading and cleaning on generated folders in all accepted layouts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.imagegen import artwork, encode, jpeg_bytes, near_copy
from training.data import (
    find_files,
    load_pool,
    near_copies_of,
    near_duplicate_groups,
    row_hashes,
    stratified_split,
)

CLASSES = ("drawings", "engraving", "iconography", "painting", "sculpture")


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_flat_layout_loads_and_skips_non_images(tmp_path):
    for c, cls in enumerate(CLASSES[:3]):
        for i in range(4):
            _write(tmp_path / cls / f"{i}.jpg", jpeg_bytes(100 * c + i))
    _write(tmp_path / "painting" / "not-an-image.jpg", b"<html><body>404</body></html>")
    _write(tmp_path / "painting" / "ok.png", encode(artwork(999), "PNG"))
    pool = load_pool(tmp_path, progress=False)
    assert pool.classes == ["drawings", "engraving", "iconography", "painting"]
    assert pool.report["totals"]["unreadable"] == 1
    assert pool.report["unreadable_files"][0]["path"].endswith("not-an-image.jpg")
    assert pool.report["per_class"]["painting"]["kept"] == 1
    assert pool.pixels.shape == (13, 150, 150, 3) and pool.pixels.dtype == np.uint8


def test_kaggle_layout_merges_copies_and_splits_and_groups_duplicates(tmp_path):
    """Both copies x both splits x all classes: one pool; copies across splits collapse."""
    for c, cls in enumerate(CLASSES):
        for i in range(3):
            original = artwork(10 * c + i)
            data = encode(original, "JPEG", quality=92)
            # the same file in both copies (exact duplicate across copies)
            for copy in ("dataset", "musemart"):
                _write(
                    tmp_path / copy / "dataset_updated" / "training_set" / cls / f"{i}.jpg", data
                )
            # a re-encoded near copy of picture 0 in the validation split (leakage across splits)
            if i == 0:
                _write(
                    tmp_path / "dataset" / "dataset_updated" / "validation_set" / cls / "v0.jpg",
                    near_copy(original),
                )
        _write(
            tmp_path / "musemart" / "dataset_updated" / "validation_set" / cls / "v9.jpg",
            jpeg_bytes(500 + c),
        )
    files = find_files(tmp_path)
    assert len(files) == 5 * (3 * 2 + 1 + 1)
    pool = load_pool(tmp_path, progress=False)
    assert pool.classes == sorted(CLASSES)
    totals = pool.report["totals"]
    assert totals["exact_duplicates"] == 15  # the second copy of every training file
    assert totals["near_duplicates"] == 5  # the re-encoded validation copies
    assert totals["kept"] == 5 * 4
    # every kept picture is distinct: no two rows are near copies of each other
    from training.data import phash64

    hashes = np.array([phash64(p) for p in pool.pixels], dtype=np.uint64)
    assert len(set(near_duplicate_groups(hashes))) == len(hashes)


def test_split_layout_and_grouped_split_has_no_leakage(tmp_path):
    for split in ("train", "test"):
        for c, cls in enumerate(CLASSES[:2]):
            for i in range(6):
                img = artwork(1000 * c + i)
                data = encode(img) if split == "train" else near_copy(img)
                _write(tmp_path / split / cls / f"{i}.jpg", data)
    pool = load_pool(tmp_path, progress=False)
    assert pool.report["totals"]["kept"] == 12  # test copies are the train pictures again
    train, test = stratified_split(pool.labels, 0.25, seed=0)
    assert not set(train) & set(test)
    assert set(pool.labels[test]) == {0, 1}  # stratified


def test_cache_is_keyed_by_content(tmp_path):
    data_dir, cache = tmp_path / "d", tmp_path / "cache"
    for c in range(2):
        for i in range(3):
            _write(data_dir / f"class{c}" / f"{i}.jpg", jpeg_bytes(10 * c + i))
    first = load_pool(data_dir, cache_dir=cache, progress=False)
    assert len(list(cache.iterdir())) == 1
    again = load_pool(data_dir, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(first.pixels, again.pixels)
    _write(data_dir / "class0" / "new.jpg", jpeg_bytes(77))
    changed = load_pool(data_dir, cache_dir=cache, progress=False)
    assert len(changed.labels) == 7 and len(list(cache.iterdir())) == 2


def test_single_class_is_refused(tmp_path):
    _write(tmp_path / "only" / "a.jpg", jpeg_bytes(1))
    with pytest.raises(ValueError, match="two class folders"):
        find_files(tmp_path)


def test_one_split_of_a_kaggle_layout_loads_alone_and_its_copies_are_found(tmp_path):
    """The cross-source check: validation_set loads on its own (both copies merged, deduped);
    a main-data picture that is a near copy of one of its pictures is flagged, so the job can
    keep it out of training."""
    main_root, kaggle = tmp_path / "main", tmp_path / "kaggle"
    for c, cls in enumerate(CLASSES[:2]):
        for i in range(3):
            _write(main_root / cls / f"{i}.jpg", jpeg_bytes(100 * c + i))
            _write(
                kaggle / "dataset" / "dataset_updated" / "training_set" / cls / f"t{i}.jpg",
                jpeg_bytes(700 + 10 * c + i),
            )
        for copy in ("dataset", "musemart"):  # the same validation file in both copies
            _write(
                kaggle / copy / "dataset_updated" / "validation_set" / cls / "v.jpg",
                jpeg_bytes(900 + c),
            )
    # main picture 0 of class 0 re-appears, re-encoded, in the validation split
    _write(
        kaggle / "musemart" / "dataset_updated" / "validation_set" / CLASSES[0] / "leak.jpg",
        near_copy(artwork(0)),
    )
    assert all("validation_set" in str(p) for _, p in find_files(kaggle, split="validation_set"))
    val = load_pool(kaggle, progress=False, size=96, split="validation_set")
    train = load_pool(kaggle, progress=False, size=96, split="training_set")
    assert val.pixels.shape[1:] == (96, 96, 3)
    assert val.report["totals"]["exact_duplicates"] == 2 and len(val.labels) == 3
    assert len(train.labels) == 6 and not set(train.paths) & set(val.paths)
    main = load_pool(main_root, progress=False, size=96)
    flagged = near_copies_of(row_hashes(main), row_hashes(val))
    assert [main.paths[i] for i in np.nonzero(flagged)[0]] == [f"{CLASSES[0]}/0.jpg"]
    assert not near_copies_of(row_hashes(train), row_hashes(val)).any()


def test_input_size_changes_pixels_not_rows(tmp_path):
    for c in range(2):
        for i in range(4):
            _write(tmp_path / f"class{c}" / f"{i}.jpg", jpeg_bytes(40 * c + i))
    _write(tmp_path / "class0" / "copy.jpg", near_copy(artwork(0)))
    small = load_pool(tmp_path, cache_dir=tmp_path / "cache", progress=False)
    large = load_pool(tmp_path, cache_dir=tmp_path / "cache", progress=False, size=160)
    assert small.paths == large.paths and large.pixels.shape[1:] == (160, 160, 3)
    np.testing.assert_array_equal(row_hashes(small), row_hashes(large))
    again = load_pool(tmp_path, cache_dir=tmp_path / "cache", progress=False, size=160)
    np.testing.assert_array_equal(again.pixels, large.pixels)
