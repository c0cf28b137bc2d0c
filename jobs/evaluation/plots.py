"""The evaluation report's plots: PNG files from small driver-side inputs (the k sweep, cluster
sizes, a 2-D projection of a bounded sample, the top categories, the centroids' dendrogram)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_k_sweep(sweep: pd.DataFrame, path: Path) -> None:
    """SSE and silhouette per candidate k (``sweep``: k, sse, silhouette_sqeuclidean)."""
    plt = _plt()
    fig, left = plt.subplots(figsize=(6, 3.5))
    sweep = sweep.sort_values("k")
    left.plot(sweep["k"], sweep["sse"], "o-", color="tab:blue", label="SSE (inertia)")
    left.set_xlabel("k")
    left.set_ylabel("SSE", color="tab:blue")
    right = left.twinx()
    right.plot(
        sweep["k"], sweep["silhouette_sqeuclidean"], "s--", color="tab:orange", label="silhouette"
    )
    right.set_ylabel("silhouette (squared Euclidean)", color="tab:orange")
    left.set_xticks(list(sweep["k"]))
    left.set_title("k sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sizes(profiles: pd.DataFrame, path: Path) -> None:
    """Members per cluster, labelled with their share (``profiles``: cluster_id, size, share)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ordered = profiles.sort_values("cluster_id")
    ax.bar(ordered["cluster_id"].astype(str), ordered["size"], color="tab:blue")
    for x, (size, share) in enumerate(zip(ordered["size"], ordered["share"], strict=True)):
        ax.text(x, size, f"{share:.0%}", ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("cluster")
    ax.set_ylabel("members")
    ax.set_title("Cluster sizes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_projection(points: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """First two principal components of a sample (``points``: (m, d), ``labels``: (m,)),
    coloured by cluster."""
    plt = _plt()
    centred = points - points.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ components[:2].T
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for cluster in np.unique(labels):
        mask = labels == cluster
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, alpha=0.6, label=str(cluster))
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"2-D PCA projection of {len(points):,} sampled rows")
    ax.legend(title="cluster", markerscale=2, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def centroid_linkage(centroids: np.ndarray) -> np.ndarray:
    """Average-linkage agglomeration of the k centroids (``centroids``: (k, d)) by Euclidean
    distance: scipy's (k - 1, 4) linkage matrix (merged ids, distance, size).  Needs k >= 2."""
    from scipy.cluster.hierarchy import linkage

    return linkage(np.asarray(centroids, dtype=np.float64), method="average", metric="euclidean")


def nearest_segments(centroids: np.ndarray, cluster_ids: Sequence[int]) -> tuple[int, int, float]:
    """The two segments whose centroids are closest (Euclidean) and their distance."""
    points = np.asarray(centroids, dtype=np.float64)
    gaps = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
    np.fill_diagonal(gaps, np.inf)
    i, j = (int(x) for x in np.unravel_index(int(np.argmin(gaps)), gaps.shape))
    a, b = sorted((int(cluster_ids[i]), int(cluster_ids[j])))
    return a, b, float(gaps[i, j])


def plot_dendrogram(centroids: np.ndarray, cluster_ids: Sequence[int], path: Path) -> None:
    """Dendrogram of the segments' centroids (:func:`centroid_linkage`): which segments are
    near each other, leaves labelled by cluster id."""
    from scipy.cluster.hierarchy import dendrogram

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    dendrogram(
        centroid_linkage(centroids),
        labels=[str(c) for c in cluster_ids],
        ax=ax,
        color_threshold=0,
        above_threshold_color="#4c72b0",
    )
    ax.set_xlabel("cluster")
    ax.set_ylabel("centroid distance (average linkage)")
    ax.set_title("How near the segments are to each other")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_top_categories(profiles: pd.DataFrame, path: Path) -> bool:
    """Heat map: share of each cluster's events in the categories that top any cluster.  Returns
    False, drawing nothing (and removing an earlier chart at ``path``), when no cluster has a
    top category (an item-only log)."""
    ordered = profiles.sort_values("cluster_id")
    shares: dict[int, dict[str, float]] = {
        int(cluster): {t["value"]: t["share"] for t in items(tops)}
        for cluster, tops in zip(ordered["cluster_id"], ordered["top_categories"], strict=True)
    }
    categories = sorted({c for per in shares.values() for c in per})
    if not categories:
        path.unlink(missing_ok=True)
        return False
    plt = _plt()
    matrix = np.array([[shares[c].get(cat, 0.0) for cat in categories] for c in shares])
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(categories) + 2), 0.5 * len(shares) + 2))
    image = ax.imshow(matrix, aspect="auto", cmap="Blues")
    ax.set_xticks(range(len(categories)), categories, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(shares)), [str(c) for c in shares])
    ax.set_ylabel("cluster")
    ax.set_title("Top categories per cluster (share of the cluster's events)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def items(values: Any) -> list[Any]:
    """A list from an array column cell (None, list or NumPy array)."""
    return [] if values is None else list(values)
