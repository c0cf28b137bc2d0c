"""The evaluation report: ``report.md`` plus PNG plots, from small driver-side inputs.

Everything here is already aggregated (metrics, profiles, the k sweep) or a bounded sample (the
2-D projection), so it is plain pandas / NumPy / matplotlib.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from jobs.evaluation.future import best_other
from jobs.evaluation.plots import (
    items,
    nearest_segments,
    plot_dendrogram,
    plot_k_sweep,
    plot_projection,
    plot_sizes,
    plot_top_categories,
)
from jobs.evaluation.stability import DISSOLVED_BELOW, STABLE_FROM, jaccard_label
from jobs.evaluation.sweep import fmt_number as _fmt
from jobs.evaluation.sweep import has_curve, k_sweep_lines

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
METHOD_ORDER = (
    "embedding",
    "tfidf_tokens_baseline",
    "tfidf_baseline",
    "aggregate_baseline",
    "random_baseline",
    "global_baseline",
)
#: The leaderboard's metric columns: (heading, metric, with its 95% CI).
LEADERBOARD = (
    ("item hit-rate@20", "future_item_hit_rate_at_20", True),
    ("item NDCG@20", "future_item_ndcg_at_20", True),
    ("category hit-rate@10", "future_category_hit_rate_at_10", False),
    ("purchase AUC", "future_purchase_auc", False),
    ("lift vs popularity", "future_item_hit_rate_at_20_lift", True),
)


def cell(value: object) -> str:
    """``value`` as one Markdown table cell: HTML special characters escaped, ``|`` as an
    entity (it would start a new column) and line breaks as ``<br>`` (they would end the row)."""
    text = html.escape(str(value), quote=False).replace("|", "&#124;")
    return text.replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")


def _with_ci(values: Mapping[str, float], name: str) -> str:
    if name not in values:
        return "n/a"
    low, high = values.get(f"{name}_ci_low"), values.get(f"{name}_ci_high")
    text = f"{values[name]:.3f}"
    return text if low is None or high is None else f"{text} ({low:.3f}-{high:.3f})"


def leaderboard(
    metrics: Mapping[str, Mapping[str, float]], *, protocol: str | None, detail: str
) -> list[str]:
    """The report's first section: methods x future metrics (95% CIs), size entropy and
    stability, how many units each row rests on, and the protocol used."""
    if protocol is None:
        return [f"No future backtest on this data: {cell(detail)}.", ""]
    lines = [
        f"Protocol `{protocol}` ({cell(detail)}). Every method was fitted on history only and "
        "is scored on what the same units did next; intervals are 95% bootstrap CIs over units."
        " `units`: those whose future names an item (the hit rates rest on them; a unit whose "
        "future holds only searches or events without an item is not scored). Item hit-rate@20:"
        " the share of units with at least one future item among their segment's 20 most "
        "popular history items; item NDCG@20: the same ranking with each hit discounted by its "
        "position; category hit-rate@10: the same for categories and the top 10 (no interval); "
        "purchase AUC: how well the segment's history conversion rate (share of its units with "
        "a purchase) ranks the units that purchase in the future (0.5 is chance; no interval); "
        "lift vs popularity: item hit-rate@20 over `global_baseline`'s (one segment: plain "
        "popularity, 1 by definition); size entropy: the entropy of the segment sizes over its "
        "maximum (1 = equal sizes); stability: the mean bootstrap Jaccard of the embedding's "
        "segments (min: the least stable one).",
        "",
        "| method | " + " | ".join(h for h, _, _ in LEADERBOARD) + " | size entropy | "
        "stability | units |",
        "|---|" + "---|" * (len(LEADERBOARD) + 3),
    ]
    for method in METHOD_ORDER:
        values = metrics.get(method, {})
        if "future_item_hit_rate_at_20" not in values:
            continue
        cells = [
            _with_ci(values, name) if ci else (f"{values[name]:.3f}" if name in values else "n/a")
            for _, name, ci in LEADERBOARD
        ]
        entropy = f"{values['size_entropy']:.2f}" if "size_entropy" in values else "-"
        if "segment_jaccard_mean" in values:
            stability = (
                f"Jaccard {values['segment_jaccard_mean']:.2f} (min "
                f"{values['segment_jaccard_min']:.2f})"
            )
        elif "stability_ari_mean" in values:
            stability = f"ARI {values['stability_ari_mean']:.2f}"
        else:
            stability = "-"
        users = f"{values['future_users']:,.0f}"
        lines.append(f"| {method} | " + " | ".join([*cells, entropy, stability, users]) + " |")
    return [*lines, ""]


def verdict(metrics: Mapping[str, Mapping[str, float]], backtest: object) -> str | None:
    """One computed sentence: which segmentation to use on this data and by how much, from the
    embedding's paired difference to the best other method on future item hit-rate@20; with
    the backtest's ``caveat`` (an encoder that saw the future) after it."""
    sentence = _verdict(metrics, backtest)
    caveat = getattr(backtest, "caveat", None)
    if sentence and caveat and getattr(backtest, "protocol", None) is not None:
        return f"{sentence} Caveat: {caveat}."
    return sentence


def _verdict(metrics: Mapping[str, Mapping[str, float]], backtest: object) -> str | None:
    if getattr(backtest, "protocol", None) is None:
        reason = getattr(backtest, "reason", "")
        return f"No recommendation: {reason}." if reason else None
    best = best_other(metrics)
    if best is None:
        return None
    theirs = metrics[best]["future_item_hit_rate_at_20"]
    emb = metrics.get("embedding")
    if emb is None or "future_item_hit_rate_at_20" not in emb:
        return (
            f"Use `{best}` (item hit-rate@20 {theirs:.3f}): the embedding could not be scored "
            "on this data."
        )
    ours = emb["future_item_hit_rate_at_20"]
    low = emb.get("future_item_hit_rate_at_20_diff_best_baseline_ci_low")
    high = emb.get("future_item_hit_rate_at_20_diff_best_baseline_ci_high")
    users = f"{emb['future_users']:,.0f}"
    if low is None or high is None:
        return None
    margin = f"{ours - theirs:+.3f}, 95% CI {low:+.3f} to {high:+.3f}, {users} users"
    if low > 0:
        return (
            f"Use the embedding segments: item hit-rate@20 {ours:.3f} vs {theirs:.3f} for the "
            f"best other method `{best}` ({margin})."
        )
    if high < 0:
        return (
            f"Use `{best}`: the embedding loses on this data, item hit-rate@20 {ours:.3f} vs "
            f"{theirs:.3f} ({margin})."
        )
    return (
        f"No clear winner: the embedding ({ours:.3f}) and `{best}` ({theirs:.3f}) are within "
        f"noise on item hit-rate@20 ({margin}); the simpler `{best}` does as well on this data."
    )


def _row_decimals(values: Sequence[float]) -> int:
    """Decimals of one metric's row: 3, or 1 when a value reaches 1,000 (Calinski-Harabasz),
    so that a row reads in one format."""
    return 1 if any(abs(v) >= 1000 for v in values) else 3


def not_applicable_lines(not_applicable: Mapping[tuple[str, str], str]) -> list[str]:
    """One bullet per (metric, reason), naming the methods it applies to (``*``: every metric
    of the method; ``all methods`` when every one)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for (method, metric), why in sorted(not_applicable.items()):
        grouped.setdefault((metric, why), []).append(method)
    lines = []
    for (metric, why), methods in grouped.items():
        who = (
            "all methods"
            if len(methods) >= len(METHOD_ORDER) or methods == ["*"]
            else (", ".join(f"`{cell(m)}`" for m in methods))
        )
        what = "every metric" if metric == "*" else cell(metric)
        lines.append(f"- {what} ({who}): {cell(why)}")
    return lines or ["- none"]


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1f}"


def comparison_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table: one row per metric, one column per method, each row in one number format
    (:func:`_row_decimals`), the best value in bold (every value showing the same text as it:
    ties at the shown precision are not broken by hidden digits)."""
    methods = [m for m in METHOD_ORDER if m in metrics]
    lines = [
        "| metric | better | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for name, direction in TABLE_METRICS:
        values = [metrics[m].get(name) for m in methods]
        present = [v for v in values if v is not None and math.isfinite(v)]
        if not present:
            continue
        decimals = _row_decimals(present)
        best = max(present) if direction == "higher" else min(present)
        # Bold what reads as the best: values that tie at the shown precision are bold alike.
        shown = _fmt(best, decimals) if len(present) > 1 else None  # nothing to beat alone
        cells = [
            f"**{_fmt(v, decimals)}**" if _fmt(v, decimals) == shown else _fmt(v, decimals)
            for v in values
        ]
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
    not_applicable: Mapping[tuple[str, str], str],
    backtest: object,
    sweep: pd.DataFrame,
    profiles: pd.DataFrame,
    sample_points: np.ndarray,
    sample_labels: np.ndarray,
    centroids: np.ndarray | None = None,
    centroid_ids: Sequence[int] = (),
) -> Path:
    """Render the plots and ``report.md`` into ``out_dir`` (created if missing); returns the
    report's path.

    ``metrics``: method -> metric -> value; ``not_applicable``: (method, metric) -> reason;
    ``backtest``: a :class:`jobs.evaluation.backtest.Backtest`; ``sweep``: :func:`sweep_frame`;
    ``profiles``: the run's ``cluster_profiles`` rows; ``sample_points`` (m, d) and
    ``sample_labels`` (m,): the sample projected in ``projection.png``; ``centroids`` (k, d)
    and ``centroid_ids`` (k,): the run's centroids, drawn as ``dendrogram.png`` (k >= 2).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_lines = k_sweep_lines(sweep, k)
    if has_curve(sweep):
        plot_k_sweep(sweep, out_dir / "k_sweep.png")
    else:
        # A rerun into the same local folder must not leave a plot an earlier version of the
        # report drew beside this text.
        (out_dir / "k_sweep.png").unlink(missing_ok=True)
    plot_sizes(profiles, out_dir / "cluster_sizes.png")
    plot_projection(sample_points, sample_labels, out_dir / "projection.png")
    categories_chart = (
        ["![top categories](top_categories.png)"]
        if plot_top_categories(profiles, out_dir / "top_categories.png")
        else ["No top-categories chart: no event of these segments names a category."]
    )
    near_lines: list[str] = []
    if centroids is not None and len(centroid_ids) >= 2:
        plot_dendrogram(centroids, centroid_ids, out_dir / "dendrogram.png")
        a, b, gap = nearest_segments(centroids, centroid_ids)
        near_lines = [
            f"Nearest segments: {a} and {b} (centroid distance {gap:.3f}); the dendrogram "
            "merges the segments in order of nearness (average linkage).",
            "",
            "![centroid dendrogram](dendrogram.png)",
            "",
        ]
    profile_lines = [
        "| cluster | size | share | conversion | cart rate | events/session | "
        "stability (Jaccard) | top categories (share, lift) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in profiles.sort_values("cluster_id").to_dict("records"):
        top_three = items(record["top_categories"])[:3]
        tops = ", ".join(
            f"{cell(t['value'])} ({t['share']:.0%}, {t['lift']:.1f}x)" for t in top_three
        )
        jaccard = record.get("stability_jaccard")
        stable = (
            "-"
            if jaccard is None or not math.isfinite(jaccard)
            else f"{jaccard:.2f} {jaccard_label(jaccard)}"
        )
        profile_lines.append(
            f"| {record['cluster_id']} | {record['size']:,} | {record['share']:.1%} | "
            f"{_pct(record['conversion_rate'])} | {_pct(record['cart_rate'])} | "
            f"{_num(record['mean_events_per_session'])} | {stable} | {tops} |"
        )
    skipped_lines = not_applicable_lines(not_applicable)
    protocol = getattr(backtest, "protocol", None)
    detail = getattr(backtest, "reason", "")
    cutoff = getattr(backtest, "cutoff", None)
    if cutoff is not None:
        detail = f"cutoff {cutoff:%Y-%m-%d %H:%M:%S} UTC; {detail}"
    sentence = verdict(metrics, backtest)
    text = "\n".join(
        [
            f"# Segment evaluation: cluster run `{run_id}`",
            "",
            f"{rows:,} {unit}s, k = {k}, embeddings `{model_version}`.",
            "",
            "## Leaderboard",
            "",
            *([f"**{cell(sentence)}**", ""] if sentence else []),
            *leaderboard(metrics, protocol=protocol, detail=detail),
            "## Same rows, same k (internal metrics in the embedding space)",
            "",
            comparison_table(metrics),
            "",
            *margins(metrics),
            "",
            "Baselines: `tfidf_baseline` = bag of categories, TF-IDF, K-Means; "
            "`tfidf_tokens_baseline` = bag of event type x category x brand x price band tokens; "
            "`aggregate_baseline` = recency, frequency, monetary, event-type and top-category "
            "shares, standardised, K-Means; `random_baseline` = uniform random segments; "
            "`global_baseline` = one segment (plain popularity).",
            "",
            "## Not applicable on this data",
            "",
            *skipped_lines,
            "",
            "## k sweep",
            "",
            *sweep_lines,
            "",
            "## Segments",
            "",
            # What the columns mean (jobs.evaluation.profiles.cluster_profiles).
            f"Per {unit} of the segment: conversion is the share of {unit}s with a purchase, "
            "cart rate the share with an add-to-cart, events/session the mean session length"
            + (" (each user's mean first)" if unit == "user" else "")
            + f"; stability is the segment's mean bootstrap Jaccard (>= {STABLE_FROM} stable, "
            f"< {DISSOLVED_BELOW} dissolved); top categories are the segment's most frequent, "
            "each with its share of the segment's events and its lift (that share over its share "
            "of every clustered event).",
            "",
            *profile_lines,
            "",
            "![cluster sizes](cluster_sizes.png)",
            "",
            *near_lines,
            *categories_chart,
            "",
            "![projection](projection.png)",
            "",
        ]
    )
    path = out_dir / "report.md"
    path.write_text(text)
    return path
