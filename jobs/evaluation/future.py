"""Future-behaviour metrics of every method on the same units, with bootstrap intervals.

Each method's segments (fitted on history only, :mod:`jobs.evaluation.methods`) rank items and
categories by their popularity among the segment's history events (count, ties by id).  A scored
unit (history and at least one future item) is then measured against its own segment's ranking:

* ``future_item_hit_rate_at_20``: share of units with at least one future item among the
  segment's 20 most popular items (hit rate, as in leave-out recommender evaluation);
* ``future_item_ndcg_at_20``: NDCG@20 with binary relevance (a future item is relevant;
  Jarvelin & Kekalainen, 2002), ideal DCG over ``min(#future items, 20)`` hits;
* ``future_category_hit_rate_at_10``: the same for categories and the top 10, only when the
  history holds more than 10 categories (otherwise the top 10 holds them all);
* ``future_purchase_auc``: ROC AUC of the segment's historical conversion rate (share of its
  units with a history purchase) as a score for "purchases in the future" (ties count half);
* ``future_users``: units the hit rates rest on.

Intervals are percentile bootstraps over units (Efron & Tibshirani, 1993): units are hashed into
at most ``buckets`` buckets, Spark reduces each (method, bucket) to sums, and the resampling runs
on those small arrays, the same bucket draws for every method, so differences between methods are
paired.  Everything in Spark is O(units x methods); nothing pairwise.  Backtests whose units fit
``cluster.init_sample`` are scored on the driver with pandas instead (the same sums; no
shuffle), as the K-Means refits of small data are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.evaluation.methods import SEGMENT
from jobs.evaluation.protocol import has_purchase

TOP_ITEMS = 20
TOP_CATEGORIES = 10
#: Columns of the per-bucket sums, in order.
_SUMS = ("n", "hits", "ndcg", "n_cat", "cat_hits")


@dataclass(frozen=True)
class FutureScores:
    """What Spark measured, reduced to driver-sized arrays."""

    #: method -> (buckets, 5) array of the sums in :data:`_SUMS` order.
    per_bucket: Mapping[str, np.ndarray]
    #: method -> [(historical conversion rate, future buyers, future non-buyers)] per segment.
    auc_tables: Mapping[str, Sequence[tuple[float, int, int]]]
    #: Distinct categories in the history (the category metric needs more than 10).
    history_categories: int
    #: Metrics that could not be computed: (method, metric) -> reason.
    not_applicable: dict[tuple[str, str], str] = field(default_factory=dict)


def _ideal_dcg(n: Column, top: int) -> Column:
    """DCG of a perfect ranking with ``n`` relevant entries, cut at ``top``."""
    ranks = F.sequence(F.lit(1), F.least(n, F.lit(top)))
    return F.aggregate(ranks, F.lit(0.0), lambda acc, r: acc + 1.0 / F.log2(r + 1))


def _ranked_hits(
    segments: DataFrame, history_values: DataFrame, future_values: DataFrame, *, top: int
) -> DataFrame:
    """``method``, ``id``, ``hit`` (0/1), ``ndcg``: each unit's future values against its
    segment's ``top`` most popular history values.  ``segments``: method, id, segment;
    ``history_values``: id, value, ``events`` (how many of the unit's history events have the
    value; one row per unit and value); ``future_values``: id, value (distinct)."""
    popular = (
        history_values.join(segments, "id")
        .groupBy("method", SEGMENT, "value")
        .agg(F.sum("events").alias("__n"))
        .withColumn(
            "rank",
            F.row_number().over(
                Window.partitionBy("method", SEGMENT).orderBy(F.desc("__n"), "value")
            ),
        )
        .where(F.col("rank") <= top)
        .drop("__n")
    )
    ranked = future_values.join(segments, "id").join(popular, ["method", SEGMENT, "value"], "left")
    gain = F.when(F.col("rank").isNotNull(), 1.0 / F.log2(F.col("rank") + 1)).otherwise(0.0)
    per_unit = ranked.groupBy("method", "id").agg(
        F.max(F.col("rank").isNotNull().cast("int")).alias("hit"),
        F.sum(gain).alias("__dcg"),
        F.count(F.lit(1)).alias("__n"),
    )
    return per_unit.select(
        "method", "id", "hit", (F.col("__dcg") / _ideal_dcg(F.col("__n"), top)).alias("ndcg")
    )


def score_future(
    segments: DataFrame,
    history: DataFrame,
    targets: DataFrame,
    *,
    buckets: int,
    local_rows: int = 0,
) -> FutureScores:
    """Measure every method's segments against the future.

    ``segments``: ``method``, ``id``, ``segment`` (history units only); ``history``: ``id``,
    ``events`` (:func:`jobs.evaluation.protocol.history_units`); ``targets``: ``id``,
    ``future_items``, ``future_categories``, ``future_purchase``
    (:func:`jobs.evaluation.protocol.future_targets`).  Runs three Spark jobs, or, when
    ``history`` and ``targets`` hold at most ``local_rows`` units each, three fetches without a
    shuffle and the same arithmetic on the driver (:func:`_score_on_driver`).
    """
    if local_rows > 0:
        local = _score_on_driver(segments, history, targets, buckets=buckets, at_most=local_rows)
        if local is not None:
            return local
    events = history.select("id", F.explode("events").alias("e"))

    def counted(field: str) -> DataFrame:
        # One row per unit and value before the join with every method's segments: the join
        # then carries (units x values) rows per method, not one per event (the same counts).
        return (
            events.select("id", F.col(f"e.{field}").alias("value"))
            .where(F.col("value").isNotNull())
            .groupBy("id", "value")
            .agg(F.count(F.lit(1)).alias("events"))
        )

    history_items, history_categories = counted("item_id"), counted("category")
    n_categories = history_categories.select("value").distinct().count()

    def future_values(column: str) -> DataFrame:
        # A null entry is no value to predict (future_targets' collect_set has none).
        values = targets.select("id", F.explode(column).alias("value"))
        return values.where(F.col("value").isNotNull())

    future_items = future_values("future_items")
    items = _ranked_hits(segments, history_items, future_items, top=TOP_ITEMS)
    per_unit = items
    if n_categories > TOP_CATEGORIES:
        future_categories = future_values("future_categories")
        categories = _ranked_hits(
            segments, history_categories, future_categories, top=TOP_CATEGORIES
        ).select("method", "id", F.col("hit").alias("cat_hit"))
        per_unit = items.join(categories, ["method", "id"], "full")
    else:
        per_unit = items.withColumn("cat_hit", F.lit(None).cast("int"))
    bucket = F.pmod(F.xxhash64("id"), F.lit(buckets)).alias("bucket")
    sums = (
        per_unit.groupBy("method", bucket)
        .agg(
            F.count("hit").alias("n"),
            F.sum("hit").alias("hits"),
            F.sum("ndcg").alias("ndcg"),
            F.count("cat_hit").alias("n_cat"),
            F.sum("cat_hit").alias("cat_hits"),
        )
        .fillna(0)
        .collect()
    )
    per_bucket: dict[str, np.ndarray] = {}
    for row in sums:
        table = per_bucket.setdefault(row["method"], np.zeros((buckets, len(_SUMS))))
        table[int(row["bucket"])] = [float(row[c]) for c in _SUMS]

    bought = history.select("id", has_purchase(F.col("events")).cast("double").alias("__b"))
    rates = segments.join(bought, "id").groupBy("method", SEGMENT).agg(F.avg("__b").alias("rate"))
    labelled = segments.join(targets.select("id", "future_purchase"), "id").join(
        rates, ["method", SEGMENT]
    )
    auc_rows = (
        labelled.groupBy("method", SEGMENT, "rate")
        .agg(
            F.sum(F.col("future_purchase").cast("int")).alias("pos"),
            F.sum((~F.col("future_purchase")).cast("int")).alias("neg"),
        )
        .collect()
    )
    auc_tables: dict[str, list[tuple[float, int, int]]] = {}
    for row in auc_rows:
        auc_tables.setdefault(row["method"], []).append(
            (float(row["rate"]), int(row["pos"]), int(row["neg"]))
        )
    return FutureScores(per_bucket, auc_tables, n_categories)


def _score_on_driver(
    segments: DataFrame, history: DataFrame, targets: DataFrame, *, buckets: int, at_most: int
) -> FutureScores | None:
    """:func:`score_future` computed with pandas from three Arrow fetches (the history's item
    and category lists, the targets with each unit's bootstrap bucket, the segments), or None
    when ``history`` or ``targets`` hold more than ``at_most`` units.  The same rules as the
    Spark path (:func:`_ranked_hits`): popularity by history events, ties by value, NDCG over
    ``min(#future values, top)``; buckets are Spark's ``xxhash64`` of the id, computed there."""
    import pandas as pd
    import pyarrow.compute as pc

    table = (
        history.select(
            "id",
            F.col("events.item_id").alias("items"),
            F.col("events.category").alias("categories"),
            has_purchase(F.col("events")).alias("bought"),
        )
        .limit(at_most + 1)
        .toArrow()
    )
    future = (
        targets.select(
            "id",
            "future_items",
            "future_categories",
            "future_purchase",
            F.pmod(F.xxhash64("id"), F.lit(buckets)).alias("bucket"),
        )
        .limit(at_most + 1)
        .toArrow()
    )
    if table.num_rows > at_most or future.num_rows > at_most:
        return None
    seg = segments.select("method", "id", SEGMENT).toArrow().to_pandas()

    def long(source: pa.Table, column: str) -> pd.DataFrame:
        # One row per (unit, list entry), nulls dropped, as the Spark path's explode and filter.
        lists = source.column(column).combine_chunks()
        ids = source.column("id").combine_chunks().take(pc.list_parent_indices(lists))
        values = pd.DataFrame({"id": ids.to_pandas(), "value": pc.list_flatten(lists).to_pandas()})
        return values.dropna(subset=["value"])

    history_categories = long(table, "categories")
    n_categories = int(history_categories["value"].nunique())
    per_unit = _ranked_hits_local(
        seg, long(table, "items"), long(future, "future_items"), TOP_ITEMS
    )
    if n_categories > TOP_CATEGORIES:
        categories = _ranked_hits_local(
            seg, history_categories, long(future, "future_categories"), TOP_CATEGORIES
        )
        per_unit = per_unit.merge(
            categories[["method", "id", "hit"]].rename(columns={"hit": "cat_hit"}),
            on=["method", "id"],
            how="outer",
        )
    else:
        per_unit["cat_hit"] = np.nan
    bucket_of = future.select(["id", "bucket"]).to_pandas()
    per_unit = per_unit.merge(bucket_of, on="id")
    grouped = per_unit.groupby(["method", "bucket"])
    sums = pd.DataFrame(
        {
            "n": grouped["hit"].count(),
            "hits": grouped["hit"].sum(),
            "ndcg": grouped["ndcg"].sum(),
            "n_cat": grouped["cat_hit"].count(),
            "cat_hits": grouped["cat_hit"].sum(),
        }
    ).reset_index()
    per_bucket: dict[str, np.ndarray] = {}
    for method, rows in sums.groupby("method"):
        array = np.zeros((buckets, len(_SUMS)))
        array[rows["bucket"].to_numpy(dtype=np.int64)] = rows[list(_SUMS)].to_numpy(np.float64)
        per_bucket[str(method)] = array

    bought = table.select(["id", "bought"]).to_pandas()
    bought["bought"] = bought["bought"].astype(np.float64)
    rates = seg.merge(bought, on="id").groupby(["method", SEGMENT])["bought"].mean().rename("rate")
    purchase = future.select(["id", "future_purchase"]).to_pandas()
    labelled = seg.merge(purchase, on="id").merge(rates.reset_index(), on=["method", SEGMENT])
    labelled["pos"] = labelled["future_purchase"].eq(True).astype(int)
    labelled["neg"] = labelled["future_purchase"].eq(False).astype(int)
    auc_rows = labelled.groupby(["method", SEGMENT, "rate"])[["pos", "neg"]].sum().reset_index()
    auc_tables: dict[str, list[tuple[float, int, int]]] = {}
    for row in auc_rows.itertuples(index=False):
        auc_tables.setdefault(str(row.method), []).append(
            (float(row.rate), int(row.pos), int(row.neg))
        )
    return FutureScores(per_bucket, auc_tables, n_categories)


def _ranked_hits_local(seg: Any, history_values: Any, future_values: Any, top: int) -> Any:
    """:func:`_ranked_hits` on pandas frames: ``method``, ``id``, ``hit`` (0/1), ``ndcg``."""
    import pandas as pd

    counts = history_values.groupby(["id", "value"]).size().rename("events").reset_index()
    popular = (
        counts.merge(seg, on="id")
        .groupby(["method", SEGMENT, "value"], as_index=False)["events"]
        .sum()
        .sort_values(["method", SEGMENT, "events", "value"], ascending=[True, True, False, True])
    )
    popular["rank"] = popular.groupby(["method", SEGMENT]).cumcount() + 1
    popular = popular[popular["rank"] <= top]
    ranked = future_values.merge(seg, on="id").merge(
        popular[["method", SEGMENT, "value", "rank"]], on=["method", SEGMENT, "value"], how="left"
    )
    found = ranked["rank"].notna()
    ranked["hit"] = found.astype(int)
    ranked["gain"] = np.where(found, 1.0 / np.log2(ranked["rank"].fillna(1.0) + 1.0), 0.0)
    per_unit = ranked.groupby(["method", "id"]).agg(
        hit=("hit", "max"), dcg=("gain", "sum"), n=("gain", "size")
    )
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, top + 2)))
    per_unit["ndcg"] = per_unit["dcg"] / ideal[np.minimum(per_unit["n"].to_numpy(), top) - 1]
    return pd.DataFrame(per_unit[["hit", "ndcg"]]).reset_index()


def grouped_auc(table: Sequence[tuple[float, int, int]]) -> float | None:
    """ROC AUC of a score that takes few values: ``table`` holds (score, positives, negatives)
    per value; ties count half (the Mann-Whitney U statistic / (P x N)).  None without both a
    positive and a negative."""
    by_score: dict[float, list[int]] = {}
    for score, pos, neg in table:
        acc = by_score.setdefault(score, [0, 0])
        acc[0] += pos
        acc[1] += neg
    total_pos = sum(v[0] for v in by_score.values())
    total_neg = sum(v[1] for v in by_score.values())
    if total_pos == 0 or total_neg == 0:
        return None
    wins, negatives_below = 0.0, 0
    for score in sorted(by_score):
        pos, neg = by_score[score]
        wins += pos * (negatives_below + 0.5 * neg)
        negatives_below += neg
    return wins / (total_pos * total_neg)


def _ci(values: np.ndarray) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def future_metrics(
    scores: FutureScores, *, resamples: int, seed: int, reference: str = "global_baseline"
) -> tuple[dict[str, dict[str, float]], dict[tuple[str, str], str]]:
    """Metric values by method (names in the module docstring, plus ``_ci_low`` / ``_ci_high``
    for the hit rate and NDCG, the lift over ``reference`` with its interval, and for
    ``embedding`` the paired difference to the best other method), and the metrics that were
    not applicable with their reason.  Every value returned is finite."""
    methods = sorted(scores.per_bucket)
    out: dict[str, dict[str, float]] = {m: {} for m in methods}
    skipped = dict(scores.not_applicable)
    if not methods:
        return out, skipped
    buckets = next(iter(scores.per_bucket.values())).shape[0]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, buckets, size=(resamples, buckets))
    counts = np.bincount(
        picks.ravel() + buckets * np.repeat(np.arange(resamples), buckets),
        minlength=resamples * buckets,
    )
    weights = counts.reshape(resamples, buckets).astype(np.float64)  # draws of each bucket
    boot: dict[str, np.ndarray] = {}
    for method in methods:
        table = scores.per_bucket[method]
        n, hits, ndcg, n_cat, cat_hits = table.sum(axis=0)
        values = out[method]
        if n == 0:
            skipped[(method, "future_item_hit_rate_at_20")] = "no unit has a future item"
            continue
        resampled = weights @ table  # (resamples, 5)
        with np.errstate(divide="ignore", invalid="ignore"):
            boot[method] = resampled[:, 1] / resampled[:, 0]
            boot_ndcg = resampled[:, 2] / resampled[:, 0]
        values["future_users"] = float(n)
        values["future_item_hit_rate_at_20"] = hits / n
        values["future_item_ndcg_at_20"] = ndcg / n
        for name, series in (
            ("future_item_hit_rate_at_20", boot[method]),
            ("future_item_ndcg_at_20", boot_ndcg),
        ):
            interval = _ci(series)
            if interval is not None:
                values[f"{name}_ci_low"], values[f"{name}_ci_high"] = interval
        if scores.history_categories <= TOP_CATEGORIES:
            skipped[(method, "future_category_hit_rate_at_10")] = (
                f"the history has {scores.history_categories} categories (10 or fewer): "
                "every top 10 holds them all"
            )
        elif n_cat > 0:
            values["future_category_hit_rate_at_10"] = cat_hits / n_cat
        auc = grouped_auc(scores.auc_tables.get(method, []))
        if auc is None:
            skipped[(method, "future_purchase_auc")] = (
                "the future has no purchase, or only purchases, among scored units"
            )
        else:
            values["future_purchase_auc"] = auc
    if reference in boot:
        base = out[reference]["future_item_hit_rate_at_20"]
        for method in boot:
            if base <= 0:
                skipped[(method, "future_item_hit_rate_at_20_lift")] = (
                    f"{reference} has no hit to compare with"
                )
                continue
            out[method]["future_item_hit_rate_at_20_lift"] = (
                out[method]["future_item_hit_rate_at_20"] / base
            )
            with np.errstate(divide="ignore", invalid="ignore"):
                interval = _ci(boot[method] / boot[reference])
            if interval is not None:
                low, high = interval
                out[method]["future_item_hit_rate_at_20_lift_ci_low"] = low
                out[method]["future_item_hit_rate_at_20_lift_ci_high"] = high
    best = best_other(out)  # every method with a hit rate has its resamples in boot
    if "embedding" in boot and best is not None:
        emb = out["embedding"]
        emb["future_item_hit_rate_at_20_diff_best_baseline"] = (
            emb["future_item_hit_rate_at_20"] - out[best]["future_item_hit_rate_at_20"]
        )
        interval = _ci(boot["embedding"] - boot[best])
        if interval is not None:
            low, high = interval
            emb["future_item_hit_rate_at_20_diff_best_baseline_ci_low"] = low
            emb["future_item_hit_rate_at_20_diff_best_baseline_ci_high"] = high
    for values in out.values():
        for name, value in list(values.items()):
            if not math.isfinite(value):  # never stored; the loops above should not produce one
                del values[name]
    return out, skipped


def best_other(metrics: Mapping[str, Mapping[str, float]]) -> str | None:
    """The method other than ``embedding`` with the highest future item hit rate."""
    others = [
        m for m, v in metrics.items() if m != "embedding" and "future_item_hit_rate_at_20" in v
    ]
    if not others:
        return None
    return max(others, key=lambda m: (metrics[m]["future_item_hit_rate_at_20"], m))
