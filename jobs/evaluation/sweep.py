"""The report's number format and its k-sweep section (:mod:`jobs.evaluation.report`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd


def fmt_number(value: float | None, decimals: int = 3) -> str:
    """``value`` with ``decimals`` decimals and thousands separators; ``-`` when it is missing
    or not finite.  A value that rounds to zero reads ``0.000``, never ``-0.000``."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{round(value, decimals) + 0.0:,.{decimals}f}"


def sweep_frame(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """k-sweep rows (k, metric, value) of one run -> one row per k."""
    columns = ["k", "sse", "silhouette_sqeuclidean"]
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return pd.DataFrame(columns=columns)
    wide = frame.pivot_table(index="k", columns="metric", values="value").reset_index()
    # A run without a silhouette (an assign-only batch in one cluster) plots SSE alone.
    return wide.reindex(columns=[*columns, *[c for c in wide.columns if c not in columns]])


#: The k-sweep section when the run fitted several k: the plot.
K_SWEEP_PLOT = ("![k sweep](k_sweep.png)",)


def k_sweep_lines(sweep: pd.DataFrame, kept: int | None = None) -> tuple[str, ...]:
    """The report's k-sweep section: :data:`K_SWEEP_PLOT` and each k's figures (and which k the
    run ``kept``) when ``sweep`` (:func:`sweep_frame`) holds two or more k, else a sentence with
    the one k's figures (a curve of one point says nothing) and how a run gets a sweep.  The
    sentence holds for every run with one k: a fit of one configured k, a list the cluster
    stage cut to one, or a saved model applied (``cluster.assign_with_model``, which fits
    nothing)."""
    if has_curve(sweep):
        return (*K_SWEEP_PLOT, "", _sweep_figures(sweep, kept))
    if sweep.empty:
        return ("No k sweep was recorded for this run.",)
    return (
        f"This run has figures for one k ({_k_figures(sweep.iloc[0])}), so there is no curve "
        "to plot. A cluster run given a list of k (`cluster.k`, e.g. "
        "`--set 'cluster.k=[4, 6, 8]'`) fits each and keeps the best by `cluster.criterion` "
        "(silhouette by default); its report plots the sweep and lists each k's figures.",
    )


def has_curve(sweep: pd.DataFrame) -> bool:
    """Whether ``sweep`` (:func:`sweep_frame`) holds two or more k: a curve to plot."""
    return len(sweep) >= 2


def _k_figures(row: Any) -> str:
    """``k = 6: SSE 1,261.2, silhouette 0.482`` of one sweep row (the figures it holds)."""
    figures = [
        f"{name} {shown}"
        for name, column, decimals in (
            ("SSE", "sse", 1),
            ("silhouette", "silhouette_sqeuclidean", 3),
        )
        if (shown := fmt_number(row.get(column), decimals)) != "-"
    ]
    return f"k = {int(row['k'])}" + (f": {', '.join(figures)}" if figures else "")


def _sweep_figures(sweep: pd.DataFrame, kept: int | None) -> str:
    """One sentence: every swept k's figures, and which k the run kept."""
    parts = [_k_figures(row) for _, row in sweep.sort_values("k").iterrows()]
    choice = (
        f" The run kept k = {kept}, by `cluster.criterion` (silhouette by default)."
        if kept is not None
        else ""
    )
    return f"Fitted: {'; '.join(parts)}.{choice}"
