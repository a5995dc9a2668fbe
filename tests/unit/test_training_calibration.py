"""Temperature scaling, ECE, and the retrieval measurements, on synthetic numbers."""

from __future__ import annotations

import numpy as np

from training import evaluate as ev


def _calibrated(n=6000, classes=5, seed=0):
    """Logits whose softmax IS the true class distribution: labels drawn from it."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, classes))
    p = ev.softmax(logits)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return logits, labels


def test_temperature_undoes_overconfidence():
    logits, labels = _calibrated()
    over = logits * 3.0  # an overconfident model: the same ranking, sharper probabilities
    t = ev.fit_temperature(over, labels)
    assert 2.6 < t < 3.4
    before = ev.ece(ev.softmax(over), labels)
    after = ev.ece(ev.softmax(over / t), labels)
    assert before > 0.1 and after < 0.03 and after < before / 4
    assert ev.nll(over, labels, t) < ev.nll(over, labels, 1.0)


def test_ece_of_a_calibrated_model_is_small_and_bins_are_complete():
    logits, labels = _calibrated(seed=1)
    probs = ev.softmax(logits)
    assert ev.ece(probs, labels) < 0.03
    bins = ev.calibration_bins(probs, labels)
    assert len(bins["count"]) == ev.ECE_BINS and sum(bins["count"]) == len(labels)
    # confidence exactly 1.0 falls in the last bin, not off the end
    onehot = np.eye(3)[[0, 1, 2]]
    b = ev.calibration_bins(onehot, np.array([0, 1, 0]))
    assert b["count"][-1] == 3 and abs(b["accuracy"][-1] - 2 / 3) < 1e-9
    assert abs(ev.ece(onehot, np.array([0, 1, 0])) - 1 / 3) < 1e-9


def test_copy_recall_and_type_precision():
    rng = np.random.default_rng(0)
    gallery = ev.l2n(rng.normal(size=(50, 16)))
    copies = ev.l2n(gallery[:10] + 0.05 * rng.normal(size=(10, 16)))
    assert ev.copy_recall_at_1(copies, gallery, np.arange(10)) == 1.0
    assert ev.copy_recall_at_1(copies, gallery, np.arange(10)[::-1]) == 0.0
    # two tight type clusters: every neighbour shares the type
    centres = np.array([[5.0] + [0] * 15, [0, 5.0] + [0] * 14])
    labels = np.arange(40) % 2
    pts = centres[labels] + rng.normal(size=(40, 16))
    p5 = ev.type_precision_at_k(pts[:10], labels[:10], pts[10:], labels[10:], k=5)
    assert p5["mean"] == 1.0 and set(p5["per_class"]) == {0, 1}


def test_learned_whitening_suppresses_what_copies_change():
    rng = np.random.default_rng(0)
    n, d = 400, 32
    works = rng.normal(size=(n, d))
    nuisance = np.zeros(d)
    nuisance[0] = 1.0  # a copy moves each picture along one direction, strongly
    views = works + rng.normal(0, 3.0, (n, 1)) * nuisance
    w, b = ev.fit_learned_whitening(works, (works, views), dim=16, shrink=0.01)
    raw = ev.copy_recall_at_1(views, works, np.arange(n))
    whitened = ev.copy_recall_at_1(
        ev.apply_whitening(views, w, b), ev.apply_whitening(works, w, b), np.arange(n)
    )
    assert whitened > raw and whitened > 0.95


def test_layout_descriptor_ignores_brightness_and_contrast():
    rng = np.random.default_rng(0)
    px = rng.integers(40, 200, (2, 64, 64, 3)).astype(np.uint8)
    brighter = np.clip(px.astype(int) * 1.1 + 10, 0, 255).astype(np.uint8)
    a, b = ev.layout_descriptor(px), ev.layout_descriptor(brighter)
    assert a.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.99  # same layout
    assert abs((a[0] * a[1]).sum()) < 0.5  # different pictures differ
