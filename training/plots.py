"""Figures: EDA (class balance, per-class mean-RGB histograms), learning curves, confusion
matrix, and the 3D embedding view (self-contained plotly HTML + PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHANNEL_COLOURS = ("#d62728", "#2ca02c", "#1f77b4")


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
    fig.savefig(path, dpi=110)
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
    fig2.savefig(png_path, dpi=110)
    plt.close(fig2)
    return {"pca_explained_variance": [float(r) for r in ratio]}
