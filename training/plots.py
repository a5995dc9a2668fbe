"""Figures: EDA (class balance, per-class mean-RGB histograms), learning curves, confusion
matrix, and the 3D embedding view (self-contained plotly HTML + PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHANNEL_COLOURS = ("#d62728", "#2ca02c", "#1f77b4")


def save_small(fig, path: Path, dpi: int = 90) -> None:
    """Save a figure as a 256-colour PNG: figures are committed under docs/model/, and a
    palette PNG of a chart is a fraction of the size at no visible cost."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def class_distribution(report: dict, path: Path) -> None:
    plt = _plt()
    classes = list(report["per_class"])
    seen = [report["per_class"][c]["seen"] for c in classes]
    kept = [report["per_class"][c]["kept"] for c in classes]
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x - 0.2, seen, 0.4, label="files")
    ax.bar(x + 0.2, kept, 0.4, label="distinct pictures kept")
    ax.set_xticks(x, classes)
    ax.set_ylabel("count")
    ax.set_title("Class distribution before and after cleaning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mean_rgb_histograms(
    pixels: np.ndarray, labels: np.ndarray, classes: list[str], path: Path
) -> None:
    """Per class, the distribution of each picture's mean R, G and B intensity (the study's EDA)."""
    plt = _plt()
    means = pixels.reshape(len(pixels), -1, 3).mean(axis=1)
    fig, axes = plt.subplots(1, len(classes), figsize=(3.2 * len(classes), 3), sharey=True)
    for ax, (i, cls) in zip(np.atleast_1d(axes), enumerate(classes), strict=True):
        for ch, colour in enumerate(CHANNEL_COLOURS):
            ax.hist(means[labels == i, ch], bins=32, range=(0, 255), color=colour, alpha=0.5)
        ax.set_title(cls)
        ax.set_xlabel("mean intensity")
    np.atleast_1d(axes)[0].set_ylabel("pictures")
    fig.suptitle("Per-class mean RGB intensity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def learning_curves(cv: dict, path: Path) -> None:
    plt = _plt()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for r in cv["fold_results"]:
        h = r["history"]
        epochs = np.arange(1, len(h["accuracy"]) + 1)
        ax_acc.plot(epochs, h["accuracy"], "--", alpha=0.6, label=f"train f{r['fold'] + 1}")
        ax_acc.plot(epochs, h["val_accuracy"], "-", label=f"val f{r['fold'] + 1}")
        ax_loss.plot(epochs, h["loss"], "--", alpha=0.6)
        ax_loss.plot(epochs, h["val_loss"], "-")
    ax_acc.axvline(cv["best_epoch"], color="grey", lw=0.8)
    ax_acc.set_title(f"{cv['config']}: accuracy per epoch")
    ax_loss.set_title(f"{cv['config']}: loss per epoch")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
    ax_acc.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    plt = _plt()
    m = np.array(matrix)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(m[i, j]),
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Held-out test split")
    fig.tight_layout()
    save_small(fig, path, dpi=100)
    plt.close(fig)


def pca3(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project to 3D with PCA; returns (points [N,3], explained variance ratio [3])."""
    centred = embeddings - embeddings.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    return centred @ vt[:3].T, var[:3] / var.sum()


def embedding_view(embeddings, labels, classes, html_path: Path, png_path: Path) -> dict:
    import plotly.graph_objects as go

    points, ratio = pca3(embeddings)
    fig = go.Figure()
    for i, cls in enumerate(classes):
        sel = labels == i
        fig.add_trace(
            go.Scatter3d(
                x=points[sel, 0],
                y=points[sel, 1],
                z=points[sel, 2],
                mode="markers",
                name=cls,
                marker={"size": 3},
            )
        )
    fig.update_layout(
        title=f"Test-split embeddings, PCA 3D (explained {ratio.sum():.0%})",
        legend={"itemsizing": "constant"},
    )
    fig.write_html(html_path, include_plotlyjs=True, full_html=True)  # no CDN: self-contained

    plt = _plt()
    fig2 = plt.figure(figsize=(7, 6))
    ax = fig2.add_subplot(projection="3d")
    for i, cls in enumerate(classes):
        sel = labels == i
        ax.scatter(points[sel, 0], points[sel, 1], points[sel, 2], s=4, label=cls)
    ax.set_title("Test-split embeddings (PCA 3D)")
    ax.legend(fontsize=8)
    fig2.tight_layout()
    save_small(fig2, png_path, dpi=100)
    plt.close(fig2)
    return {"pca_explained_variance": [float(r) for r in ratio]}


def learning_curves_v2(cv: dict, path: Path) -> None:
    """Per fold: accuracy and loss per epoch, warm-up epochs (frozen features) then fine-tune."""
    plt = _plt()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    warm = 0
    for r in cv["fold_results"]:
        h = r["history"]
        warm = h["phase"].count("warm-up")
        epochs = np.arange(1, len(h["accuracy"]) + 1)
        ax_acc.plot(epochs, h["accuracy"], "--", alpha=0.6, label=f"train f{r['fold'] + 1}")
        ax_acc.plot(epochs, h["val_accuracy"], "-", label=f"val f{r['fold'] + 1}")
        ax_loss.plot(epochs, h["loss"], "--", alpha=0.6)
        ax_loss.plot(epochs, h["val_loss"], "-")
    for ax in (ax_acc, ax_loss):
        ax.axvspan(0.5, warm + 0.5, color="grey", alpha=0.1, lw=0)
        ax.set_xlabel("epoch (shaded: head warm-up; then fine-tuning)")
    ax_acc.set_title(f"{cv['config']}: accuracy (train on augmented views)")
    ax_loss.set_title("loss")
    ax_acc.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_small(fig, path, dpi=90)
    plt.close(fig)


def reliability(calibration: dict, path: Path) -> None:
    """Reliability diagram before and after temperature scaling (15 equal-width bins)."""
    plt = _plt()
    panels = [
        ("bins_before", "before", "ece_15_bins_before"),
        ("bins_after", "after", "ece_15_bins_after"),
    ]
    panels = [p for p in panels if p[0] in calibration]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (key, name, ece_key) in zip(axes[0], panels, strict=True):
        b = calibration[key]
        edges = np.array(b["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        acc = np.array(b["accuracy"], float)
        count = np.array(b["count"])
        ok = count > 0
        ax.bar(
            centres[ok],
            acc[ok],
            width=edges[1] - edges[0],
            edgecolor="k",
            alpha=0.7,
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
        ax.set_xlabel("confidence (max probability)")
        ax.set_ylabel("accuracy")
        t = f", T = {calibration['temperature']:.2f}" if name == "after" else ""
        ax.set_title(f"{name} temperature scaling{t}\nECE {calibration[ece_key]:.4f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_small(fig, path, dpi=90)
    plt.close(fig)


def pick_per_class(labels, probs, per_class: int, seed: int) -> np.ndarray:
    """Row indices: `per_class` random rows per class (correctly classified ones when probs
    are given), for the occlusion figure."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        rows = np.nonzero(labels == c)[0]
        if probs is not None:
            good = rows[probs[rows].argmax(axis=1) == c]
            rows = good if len(good) >= per_class else rows
        out += list(rng.permutation(rows)[:per_class])
    return np.array(out, int)


def occlusion(onnx_path, pixels, labels, classes, path: Path, patch_frac=0.2, stride_frac=0.1):
    """Occlusion sensitivity: how much the true type's probability drops when a grey square
    hides each region (Zeiler & Fergus 2014). Red = the model relies on that region."""
    import onnxruntime as ort

    plt = _plt()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    size = pixels.shape[1]
    patch, stride = max(4, int(size * patch_frac)), max(2, int(size * stride_frac))
    starts = list(range(0, size - patch + 1, stride))
    n = len(pixels)
    cols = min(n, 5)
    rows_n = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(2.3 * cols, 2.5 * rows_n), squeeze=False)
    for k in range(n):
        img = pixels[k].astype(np.float32) / 255.0
        batch = []
        for y0 in starts:
            for x0 in starts:
                m = img.copy()
                m[y0 : y0 + patch, x0 : x0 + patch] = 0.5
                batch.append(m)
        batch = np.stack([img] + batch)
        probs = np.concatenate(
            [
                sess.run(["probabilities"], {"image": batch[s : s + 64]})[0]
                for s in range(0, len(batch), 64)
            ]
        )
        base_p = probs[0, labels[k]]
        drop = (base_p - probs[1:, labels[k]]).reshape(len(starts), len(starts))
        heat = np.zeros((size, size))
        hits = np.zeros((size, size))
        for i, y0 in enumerate(starts):
            for j, x0 in enumerate(starts):
                heat[y0 : y0 + patch, x0 : x0 + patch] += drop[i, j]
                hits[y0 : y0 + patch, x0 : x0 + patch] += 1
        heat /= np.maximum(hits, 1)
        ax = axes[k // cols][k % cols]
        ax.imshow(pixels[k])
        ax.imshow(
            heat,
            cmap="RdBu_r",
            alpha=0.5,
            vmin=-max(abs(heat).max(), 1e-3),
            vmax=max(abs(heat).max(), 1e-3),
        )
        pred = classes[int(probs[0].argmax())]
        ax.set_title(f"{classes[labels[k]]}\np={base_p:.2f}, pred {pred}", fontsize=8)
        ax.axis("off")
    for k in range(n, rows_n * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(
        "Occlusion sensitivity: red = hiding it lowers the true type's probability", fontsize=9
    )
    fig.tight_layout()
    save_small(fig, path, dpi=80)
    plt.close(fig)
