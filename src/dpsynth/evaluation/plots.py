"""Pictures of a run: projection, per-class accuracy, confusion matrix, decoded samples.

None of these shows a private training record: the projection is fitted on and shows the
held-out *test* embeddings beside synthetic ones, accuracies are aggregates over the test
set, and image grids show decoded *synthetic* samples only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_POINTS = 3000


def _subsample(X: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, ...]:
    if len(X) <= n:
        return np.asarray(X), np.asarray(y)
    rows = np.sort(np.random.default_rng(seed).choice(len(X), n, replace=False))
    return np.asarray(X[rows]), np.asarray(y[rows])


def plot_projection(X_syn: np.ndarray, y_syn: np.ndarray, X_test: np.ndarray,
                    y_test: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Synthetic vs real test embeddings on the test set's first two principal axes."""
    Xt, yt = _subsample(X_test, y_test, MAX_POINTS, 0)
    Xs, ys = _subsample(X_syn, y_syn, MAX_POINTS, 1)
    mean = Xt.mean(0)
    _, _, vt = np.linalg.svd(Xt - mean, full_matrices=False)
    axes2 = vt[:2].T
    Pt, Ps = (Xt - mean) @ axes2, (Xs - mean) @ axes2
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    for ax, P, y, title in ((axes[0], Pt, yt, "real test embeddings (held out)"),
                            (axes[1], Ps, ys, "synthetic embeddings (DP)")):
        for c, name in enumerate(class_names):
            rows = y == c
            ax.scatter(P[rows, 0], P[rows, 1], s=3, alpha=0.5, color=cmap(c % cmap.N),
                       label=name)
        ax.set_title(title)
        ax.set_xlabel("PC 1 (fitted on test)")
    axes[0].set_ylabel("PC 2")
    axes[1].legend(markerscale=4, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_class_accuracy(synthetic: dict[str, float | None],
                            nonprivate: dict[str, float | None] | None,
                            class_names: Sequence[str], path: Path) -> Path:
    """Test accuracy per class: MLP trained on synthetic data vs on real data. A class
    without test records (accuracy None) gets no bar and a "no test records" label."""
    x = np.arange(len(class_names))
    keys = sorted(synthetic, key=int)

    def heights(acc: dict[str, float | None]) -> list[float]:
        return [np.nan if acc[k] is None else acc[k] for k in keys]

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(class_names)), 4))
    width = 0.4 if nonprivate else 0.8
    ax.bar(x - (width / 2 if nonprivate else 0), heights(synthetic), width,
           label="trained on DP synthetic")
    if nonprivate:
        ax.bar(x + width / 2, heights(nonprivate), width,
               label="trained on real data (non-private)")
    for i, k in enumerate(keys):
        if synthetic[k] is None:
            ax.text(x[i], 0.02, "no test records", rotation=90, ha="center", va="bottom",
                    fontsize=7, color="grey")
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrix of the synthetic-trained MLP on the test set."""
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(5, 0.55 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (test set)")
    for i in range(len(cm)):
        for j in range(len(cm)):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_grid(images: np.ndarray, labels: np.ndarray, classes: Sequence[int],
               per_class: int) -> np.ndarray:
    """One row per class of up to ``per_class`` images, 2-pixel gaps; uint8 (H, W[, 3])."""
    images = np.asarray(images)
    h, w = images.shape[1:3]
    channels = images.shape[3:] if images.ndim == 4 else ()
    gap = 2
    grid = np.full(((h + gap) * len(classes) + gap, (w + gap) * per_class + gap, *channels),
                   255, dtype=np.uint8)
    for r, c in enumerate(classes):
        rows = np.flatnonzero(np.asarray(labels) == c)[:per_class]
        for j, i in enumerate(rows):
            top, left = gap + r * (h + gap), gap + j * (w + gap)
            grid[top:top + h, left:left + w] = images[i]
    return grid


def save_image_grid(images: np.ndarray, labels: np.ndarray, classes: Sequence[int],
                    class_names: Sequence[str], per_class: int, path: Path) -> Path:
    """The decoded-sample grid as a PNG with class names down the left side."""
    grid = image_grid(images, labels, classes, per_class)
    rows = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * per_class, 0.6 * rows + 0.4))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255,
              interpolation="nearest")
    h = (grid.shape[0] - 2) / rows
    ax.set_yticks([2 + h * (r + 0.5) for r in range(rows)], list(class_names), fontsize=8)
    ax.set_xticks([])
    ax.set_title("decoded synthetic samples (DP)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
