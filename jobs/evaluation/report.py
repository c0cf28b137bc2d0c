"""The evaluation report: ``report.md`` plus PNG plots, from small driver-side inputs.

Everything here is already aggregated (metrics, profiles, the k sweep) or a bounded sample (the
2-D projection), so it is plain pandas / NumPy / matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Metrics shown in the comparison table, with the direction that is better.
TABLE_METRICS = (
    ("ari_vs_truth", "higher"),
    ("nmi_vs_truth", "higher"),
    ("purity_vs_truth", "higher"),
    ("silhouette_cosine", "higher"),
    ("silhouette_exact_sample", "higher"),
    ("davies_bouldin", "lower"),
    ("calinski_harabasz", "higher"),
    ("size_min_share", "higher"),
    ("size_entropy", "higher"),
    ("stability_ari_mean", "higher"),
)
METHOD_ORDER = ("embedding", "tfidf_tokens_baseline", "tfidf_baseline", "random_baseline")


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


def plot_top_categories(profiles: pd.DataFrame, path: Path) -> None:
    """Heat map: share of each cluster's events in the categories that top any cluster."""
    plt = _plt()
    ordered = profiles.sort_values("cluster_id")
    shares: dict[int, dict[str, float]] = {
        int(cluster): {t["value"]: t["share"] for t in _items(tops)}
        for cluster, tops in zip(ordered["cluster_id"], ordered["top_categories"], strict=True)
    }
    categories = sorted({c for per in shares.values() for c in per})
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


def _items(values: Any) -> list[Any]:
    """A list from an array column cell (None, list or NumPy array)."""
    return [] if values is None else list(values)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"


def comparison_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table: one row per metric, one column per method, best value in bold."""
    methods = [m for m in METHOD_ORDER if m in metrics]
    lines = [
        "| metric | better | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for name, direction in TABLE_METRICS:
        values = [metrics[m].get(name) for m in methods]
        present = [v for v in values if v is not None and not math.isnan(v)]
        if not present:
            continue
        best = max(present) if direction == "higher" else min(present)
        cells = [f"**{_fmt(v)}**" if v == best else _fmt(v) for v in values]
        lines.append(f"| {name} | {direction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def margins(metrics: Mapping[str, Mapping[str, float]], metric: str = "ari_vs_truth") -> list[str]:
    """Sentences stating the embedding's margin over each baseline on ``metric``."""
    if metric not in metrics.get("embedding", {}):
        return []
    ours = metrics["embedding"][metric]
    out = []
    for method in METHOD_ORDER[1:]:
        if metric in metrics.get(method, {}):
            theirs = metrics[method][metric]
            verdict = "beats" if ours > theirs else "does not beat"
            out.append(
                f"- The embedding {verdict} `{method}` on {metric}: {ours:.3f} vs "
                f"{theirs:.3f} (margin {ours - theirs:+.3f})."
            )
    return out


def write_report(
    out_dir: Path,
    *,
    run_id: str,
    k: int,
    rows: int,
    unit: str,
    model_version: str,
    metrics: Mapping[str, Mapping[str, float]],
    sweep: pd.DataFrame,
    profiles: pd.DataFrame,
    sample_points: np.ndarray,
    sample_labels: np.ndarray,
) -> Path:
    """Render the plots and ``report.md`` into ``out_dir`` (created if missing); returns the
    report's path.

    ``metrics``: method -> metric -> value; ``sweep``: :func:`sweep_frame`; ``profiles``: the
    run's ``cluster_profiles`` rows; ``sample_points`` (m, d) and ``sample_labels`` (m,): the
    sample projected in ``projection.png``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_k_sweep(sweep, out_dir / "k_sweep.png")
    plot_sizes(profiles, out_dir / "cluster_sizes.png")
    plot_projection(sample_points, sample_labels, out_dir / "projection.png")
    plot_top_categories(profiles, out_dir / "top_categories.png")
    profile_lines = [
        "| cluster | size | share | conversion | cart rate | events/session | "
        "top categories (lift) |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in profiles.sort_values("cluster_id").to_dict("records"):
        top_three = _items(record["top_categories"])[:3]
        tops = ", ".join(f"{t['value']} ({t['lift']:.1f}x)" for t in top_three)
        profile_lines.append(
            f"| {record['cluster_id']} | {record['size']:,} | {record['share']:.1%} | "
            f"{record['conversion_rate']:.1%} | {record['cart_rate']:.1%} | "
            f"{record['mean_events_per_session']:.1f} | {tops} |"
        )
    text = "\n".join(
        [
            f"# Segment evaluation: cluster run `{run_id}`",
            "",
            f"{rows:,} {unit}s, k = {k}, embeddings `{model_version}`.",
            "",
            "## Embedding vs baselines (same rows, same k)",
            "",
            comparison_table(metrics),
            "",
            *margins(metrics),
            "",
            "Baselines: `tfidf_baseline` = bag of categories, TF-IDF, K-Means; "
            "`tfidf_tokens_baseline` = bag of event type x category x brand x price band tokens; "
            "`random_baseline` = uniform random labels (internal metrics in the embedding space).",
            "",
            "## k sweep",
            "",
            "![k sweep](k_sweep.png)",
            "",
            "## Segments",
            "",
            *profile_lines,
            "",
            "![cluster sizes](cluster_sizes.png)",
            "",
            "![top categories](top_categories.png)",
            "",
            "![projection](projection.png)",
            "",
        ]
    )
    path = out_dir / "report.md"
    path.write_text(text)
    return path


def sweep_frame(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """k-sweep rows (k, metric, value) of one run -> one row per k."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=["k", "sse", "silhouette_sqeuclidean"])
    return frame.pivot_table(index="k", columns="metric", values="value").reset_index()
