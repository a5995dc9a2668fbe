"""Measurements for model v2: calibration (temperature, ECE), retrieval (copy recall@1, type
precision@5) and the PCA-whitening that turns pooled backbone features into the embedding.

Everything here is numpy (plus scipy for one 1-D minimisation), so tests run it on synthetic
numbers without TensorFlow.
"""

from __future__ import annotations

import io

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits / temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1.0))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising validation NLL of softmax(logits / T) (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(res.x))


def calibration_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Equal-width confidence bins: per bin count, mean confidence and accuracy."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # a confidence of exactly 1.0 belongs to the last bin
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    acc_sum = np.bincount(idx, weights=correct.astype(float), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "edges": edges.tolist(),
            "count": count.tolist(),
            "confidence": np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan).tolist(),
            "accuracy": np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan).tolist(),
        }


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of |accuracy - confidence| weighted by size."""
    b = calibration_bins(probs, labels, bins)
    count = np.array(b["count"], float)
    gap = np.abs(np.nan_to_num(np.array(b["accuracy"])) - np.nan_to_num(np.array(b["confidence"])))
    return float((gap * count).sum() / max(count.sum(), 1))


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_whitening(features: np.ndarray, dim: int, power: float = 1.0, eps: float = 1e-6):
    """PCA-whitening of L2-normalised features: returns (W [F,dim], b [dim]) such that
    embedding = l2n(l2n(x) @ W + b). `power` 1 is full whitening, 0.5 square-root whitening
    (each component divided by sqrt(eigenvalue) ** power)."""
    x = l2n(features.astype(np.float64))
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    dim = min(dim, vt.shape[0])
    eig = s[:dim] ** 2 / max(len(x) - 1, 1)
    w = vt[:dim].T / (np.sqrt(eig + eps) ** power)[None, :]
    b = -mean @ w
    return w.astype(np.float32), b.astype(np.float32)


def apply_whitening(features: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return l2n(l2n(features.astype(np.float32)) @ w + b)


def copy_recall_at_1(queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of queries whose nearest gallery row (cosine; rows L2-normalised) is targets[i]."""
    sims = l2n(queries) @ l2n(gallery).T
    return float(np.mean(sims.argmax(axis=1) == targets))


def type_precision_at_k(
    queries: np.ndarray, q_labels: np.ndarray, gallery: np.ndarray, g_labels: np.ndarray, k=5
) -> dict:
    """Mean fraction of the k nearest gallery rows sharing the query's type; also per type."""
    sims = l2n(queries) @ l2n(gallery).T
    top = np.argpartition(-sims, kth=min(k, sims.shape[1] - 1), axis=1)[:, :k]
    hits = (g_labels[top] == q_labels[:, None]).mean(axis=1)
    per = {int(c): float(hits[q_labels == c].mean()) for c in np.unique(q_labels)}
    return {"mean": float(hits.mean()), "per_class": per}


# seeds of further copies of one picture (training.duplicates): row + r * stride, r = 1, 2, ...
COPY_SEED_STRIDE = 1_000_003
# the copies of TRAINING pictures the learned whitening is fitted on: seeds no evaluation copy
# uses (those are row + r * COPY_SEED_STRIDE for small r)
WHITENING_COPY_SEEDS = 97 * COPY_SEED_STRIDE


def user_copy(data: bytes, seed: int) -> bytes:
    """A copy of a picture as a visitor would upload it: cropped a little (3-10 % per side),
    rescaled (long side 160-480 px), slightly brighter (5-20 %) and re-encoded as JPEG (q 60-85).
    Deterministic per seed so every model is measured on the same copies."""
    from PIL import Image, ImageEnhance

    from artlens.image import load_image

    rng = np.random.default_rng(seed)
    img = load_image(data, max_bytes=len(data) + 1).rgb
    w, h = img.size
    left, top, right, bottom = (rng.uniform(0.03, 0.10, 4) * [w, h, w, h]).astype(int)
    img = img.crop((left, top, w - right, h - bottom))
    long_side = int(rng.integers(160, 481))
    s = long_side / max(img.size)
    img = img.resize(
        (max(8, round(img.size[0] * s)), max(8, round(img.size[1] * s))),
        Image.Resampling.BICUBIC,
    )
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(1.05, 1.2)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(60, 86)))
    return buf.getvalue()


def fit_learned_whitening(
    clean: np.ndarray, pairs: tuple[np.ndarray, np.ndarray], dim: int, shrink: float = 0.1
):
    """Learned whitening (Radenović, Tolias & Chum 2018): whiten by the covariance of the
    differences between a picture and its augmented views (what a copy changes), then keep the
    `dim` directions along which distinct pictures differ most. Returns (W, b) for
    apply_whitening. `pairs` = (clean features, view features) row-aligned; `shrink` adds that
    fraction of the mean eigenvalue to the within-pair covariance (few pairs, 1280 dimensions).
    """
    x = l2n(clean.astype(np.float64))
    a, v = (l2n(p.astype(np.float64)) for p in pairs)
    mean = x.mean(axis=0)
    d = v - a
    cs = d.T @ d / len(d)
    cs += shrink * np.trace(cs) / len(cs) * np.eye(len(cs))
    ev_s, u_s = np.linalg.eigh(cs)
    p_s = u_s @ np.diag(ev_s**-0.5) @ u_s.T  # C_S^(-1/2)
    z = (x - mean) @ p_s
    cd = z.T @ z / max(len(z) - 1, 1)
    ev_d, u_d = np.linalg.eigh(cd)
    top = np.argsort(ev_d)[::-1][: min(dim, len(ev_d))]
    w = p_s @ u_d[:, top]
    return w.astype(np.float32), (-mean @ w).astype(np.float32)


LAYOUT_GRID = 8


def layout_descriptor(pixels: np.ndarray, grid: int = LAYOUT_GRID) -> np.ndarray:
    """The picture's composition: grey level on a grid x grid raster (area means), minus its
    mean, L2-normalised - unchanged by brightness and contrast, nearly so by small crops and
    JPEG. The graph computes the same with average pooling and a fixed linear layer."""
    g = pixels.astype(np.float32).mean(axis=3)
    n, size = len(g), g.shape[1]
    k = size // grid
    t = g[:, : k * grid, : k * grid].reshape(n, grid, k, grid, k).mean(axis=(2, 4))
    t = t.reshape(n, -1)
    return l2n(t - t.mean(axis=1, keepdims=True))


def combined_embedding(whitened, layout, probs, layout_weight: float, type_weight: float):
    """l2n([l2n(whitened), layout_weight * layout, type_weight * probabilities]) - the numpy
    twin of the exported graph's embedding."""
    parts = [l2n(whitened)]
    if layout_weight:
        parts.append(layout_weight * layout)
    if type_weight:
        parts.append(type_weight * probs)
    return l2n(np.concatenate(parts, axis=1))
