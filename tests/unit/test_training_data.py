"""Data loading and cleaning on generated folders in all accepted layouts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.imagegen import artwork, encode, jpeg_bytes, near_copy
from training.data import find_files, load_pool, near_duplicate_groups, stratified_split

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
