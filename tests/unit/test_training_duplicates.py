"""The near-duplicate threshold choice (training.duplicates) on synthetic numbers, and that its
block and hashes are what serving (artlens.duplicates) reads and computes. No TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from artlens.duplicates import DuplicateThresholds, hamming, perceptual_hash
from artlens.image import image_to_input, load_image
from tests.imagegen import jpeg_bytes
from training.data import resize_to
from training.duplicates import (
    calibrate,
    choose_related,
    choose_thresholds,
    flag_rate,
    hamming_between,
    hashes_of,
    measure,
)


def _separated(rng, n=400, rows=200, k=5):
    copy_sim = rng.uniform(0.95, 1.0, n)
    copy_ham = rng.integers(0, 7, n)  # 0..6 bits
    d_sim = np.sort(rng.uniform(0.3, 0.8, (rows, k)), axis=1)[:, ::-1]
    d_ham = rng.integers(20, 41, (rows, k))
    return copy_sim, copy_ham, d_sim, d_ham


def test_separated_copies_get_bounds_between_copies_and_distinct_works():
    copy_sim, copy_ham, d_sim, d_ham = _separated(np.random.default_rng(0))
    t = choose_thresholds(copy_sim, copy_ham, d_sim, d_ham, target=0.99)
    assert t["target_met"] and t["copy_flag_rate"] >= 0.99
    assert t["distinct_false_flag_rate"] == 0.0
    assert 0.8 < t["min_similarity"] <= 0.95
    assert 6 <= t["max_hamming"] < 20
    assert t["margin"] > 0
    # the card value is rounded down to 0.01: it flags at least as many copies
    assert t["min_similarity"] == np.floor(t["unrounded_min_similarity"] * 100) / 100


def test_overlapping_distributions_report_the_false_flags_they_cost():
    rng = np.random.default_rng(1)
    copy_sim = np.clip(rng.normal(0.85, 0.07, 1000), 0, 1)
    copy_ham = rng.integers(0, 25, 1000)
    d_sim = np.clip(rng.normal(0.78, 0.06, (500, 1)), 0, 1)
    d_ham = rng.integers(5, 35, (500, 1))
    # no cap on false flags: the 99 % target is met, and what it costs is reported
    free = choose_thresholds(copy_sim, copy_ham, d_sim, d_ham, target=0.99, max_false=1.0)
    assert free["target_met"] and free["copy_flag_rate"] >= 0.99
    assert free["distinct_false_flag_rate"] > 0.2
    # at most 1 % false flags: the target is out of reach, said so, and the cap holds
    capped = choose_thresholds(copy_sim, copy_ham, d_sim, d_ham, target=0.99, max_false=0.01)
    assert not capped["target_met"]
    assert 0 < capped["copy_flag_rate"] < 0.99
    assert 0 < capped["distinct_false_flag_rate"] <= 0.01
    assert capped["min_similarity"] > free["min_similarity"]
    # the trade-off table is monotone: allowing more false flags never flags fewer copies
    rates = [p["copy_flag_rate"] for p in capped["tradeoff"]]
    assert rates == sorted(rates) and rates[-1] > rates[0]


def test_a_row_counts_once_when_any_of_its_neighbours_is_flagged():
    sim = np.array([[0.95, 0.94], [0.95, 0.5], [0.5, 0.4]])
    ham = np.array([[30, 3], [30, 3], [0, 0]])
    # row 0: its second neighbour passes both tests; row 1: none passes both; row 2: too far
    assert flag_rate(sim, ham, 0.9, 10) == pytest.approx(1 / 3)
    assert flag_rate(sim[:, 0], ham[:, 0], 0.9, 40) == pytest.approx(2 / 3)


def test_related_is_a_high_percentile_of_the_nearest_other_work():
    rng = np.random.default_rng(2)
    nearest = rng.uniform(0.4, 0.9, 1000)
    same_type = rng.random(1000) < 0.97
    r = choose_related(nearest, same_type, percentile=95)
    assert r["related_min_similarity"] == pytest.approx(
        np.ceil(np.percentile(nearest, 95) * 100) / 100
    )
    assert 0.04 <= r["share_of_originals_with_related"] <= 0.05  # rounded up: a bit fewer
    # nearest works of another type below 0.8: the type-agreement bound takes over
    mixed = np.where(nearest < 0.8, rng.random(1000) < 0.3, True)
    r = choose_related(nearest, mixed, percentile=50)
    assert r["related_min_similarity"] >= 0.75
    assert r["type_agreement_above"] >= 0.9


def test_measure_excludes_the_original_itself_and_the_block_is_what_serving_reads():
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(60, 16)).astype(np.float32)
    g_hash = rng.integers(-(2**63), 2**63 - 1, 60, dtype=np.int64)
    labels = rng.integers(0, 3, 60)
    originals = np.arange(20)
    copy_of = np.tile(originals, 3)
    copies = gallery[copy_of] + rng.normal(scale=0.05, size=(60, 16)).astype(np.float32)
    c_hash = g_hash[copy_of] ^ np.int64(0b101)  # 2 bits flipped
    m = measure(gallery, g_hash, labels, originals, copies, c_hash, copy_of, k=4)
    assert m["copy_sim"].min() > 0.95 and set(m["copy_ham"]) == {2}
    assert m["distinct_sim"].shape == (20, 4)
    assert not (m["distinct_index"] == originals[:, None]).any()  # never itself
    assert (m["copy_other_sim"][:, 0] < m["copy_sim"]).all()  # the original is not "other"
    block = calibrate(m, target=0.99, max_false=0.0)
    assert block["measured"]["copy_flag_rate"] >= 0.99 and block["measured"]["target_met"]
    assert "copies" in block["basis"] and str(block["max_hamming"]) in block["basis"]
    t = DuplicateThresholds.from_card({"duplicates": block})
    assert t.source == "card"
    assert (t.min_similarity, t.max_hamming, t.related_min_similarity) == (
        block["min_similarity"], block["max_hamming"], block["related_min_similarity"]
    )
    assert t.judge(float(m["copy_sim"][0]), int(m["copy_ham"][0])) == "near_duplicate"


def test_hashes_are_the_ones_serving_computes():
    size = 160
    data = [jpeg_bytes(s, size=(300, 220)) for s in range(4)]
    cached_form = np.stack([resize_to(load_image(d, size=size).rgb, size) for d in data])
    served = [perceptual_hash(image_to_input(d, size)) for d in data]
    ours = hashes_of(cached_form)
    assert ours.tolist() == served
    assert hamming_between(ours[0], ours[1]) == hamming(served[0], served[1]) > 0


def test_a_missed_target_is_said_in_the_basis_with_the_closest_pairs():
    rng = np.random.default_rng(4)
    n, rows = 600, 300
    m = {
        "copy_sim": np.clip(rng.normal(0.85, 0.07, n), 0, 1),
        "copy_ham": rng.integers(0, 25, n),
        "distinct_sim": np.clip(rng.normal(0.78, 0.06, (rows, 2)), 0, 1),
        "distinct_ham": rng.integers(5, 35, (rows, 2)),
        "distinct_same_type": rng.random(rows) < 0.95,
        "distinct_index": rng.integers(0, rows, (rows, 2)),
        "copy_other_sim": np.clip(rng.normal(0.7, 0.06, (n, 2)), 0, 1),
        "copy_other_ham": rng.integers(5, 35, (n, 2)),
    }
    m["distinct_sim"] = np.sort(m["distinct_sim"], axis=1)[:, ::-1]
    block = calibrate(m, names=[f"w{i}.jpg" for i in range(rows)])
    measured = block["measured"]
    assert not measured["target_met"] and measured["distinct_false_flag_rate"] <= 0.01
    assert "out of reach" in block["basis"] and "closest_distinct_pairs" in block["basis"]
    top = measured["closest_distinct_pairs"][0]
    assert top["similarity"] == pytest.approx(m["distinct_sim"][:, 0].max(), abs=1e-4)
    assert len(top["files"]) == 2
