"""``cluster_profiles``: one row per cluster for analysts (its columns: the table registry,
:mod:`jobs.core.tables`)."""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F


def _top_values(exploded: DataFrame, column: str, top_n: int) -> DataFrame:
    """Per cluster: the ``top_n`` most frequent values of ``column`` with their share of the
    cluster's events and their lift over the share among every clustered event.

    Returns ``cluster_id``, ``top_<column>``: an array of (rank, value, share, lift) structs in
    rank order (by count, ties by value); null values are skipped.  One pass over
    ``exploded``: the population's counts are the sums of the clusters' counts.
    """
    counts = exploded.where(F.col(column).isNotNull()).groupBy("cluster_id", column).count()
    totals = counts.groupBy("cluster_id").agg(F.sum("count").alias("__total"))
    overall = counts.groupBy(column).agg(F.sum("count").alias("count"))
    overall_total = totals.agg(F.sum("__total").alias("__all"))
    ranked = (
        counts.join(totals, "cluster_id")
        .join(overall.withColumnRenamed("count", "__pop"), column)
        .crossJoin(overall_total)
        .withColumn("share", F.col("count") / F.col("__total"))
        .withColumn("lift", F.col("share") / (F.col("__pop") / F.col("__all")))
        .withColumn(
            "__rank",
            F.row_number().over(
                Window.partitionBy("cluster_id").orderBy(F.desc("count"), F.asc(column))
            ),
        )
        .where(F.col("__rank") <= top_n)
    )
    return ranked.groupBy("cluster_id").agg(
        F.array_sort(
            F.collect_list(
                F.struct(
                    F.col("__rank").alias("rank"), F.col(column).alias("value"), "share", "lift"
                )
            )
        ).alias(f"top_{column}")
    )


def cluster_profiles(
    assignments: DataFrame,
    sequences: DataFrame,
    sessions: DataFrame,
    *,
    top_n: int = 5,
    representatives: int = 3,
    jaccard: Mapping[int, float] | None = None,
    unit: str = "user",
) -> DataFrame:
    """One row per cluster for analysts: size and share, behaviour rates, top categories /
    brands / items with share and lift, and the ids closest to the centroid.

    ``assignments``: id, user_id, cluster_id, distance; ``sequences``: id, events (the clustered
    unit's sequences); ``sessions``: user_id, duration_s (seconds), n_events, n_purchases,
    n_add_to_cart (the ``sessions`` table, for durations and funnel rates).  Returns the
    ``cluster_profiles`` columns without ``run_id``: cluster_id, size, share (of all assigned
    rows), conversion_rate, cart_rate, mean_events_per_session, mean_session_duration_s,
    top_categories, top_brands, top_items (``top_n`` each), representative_ids (the
    ``representatives`` ids nearest the centroid, nearest first) and stability_jaccard (from
    ``jaccard``: cluster id -> mean bootstrap Jaccard,
    :func:`jobs.evaluation.stability.segment_jaccard`).

    The rates are per member: for ``unit`` ``user`` a member is a user (bought in any of their
    sessions; their mean session length and duration); for ``session`` it is the session itself
    (``sessions`` then also needs ``session_id``, the assignments' ``id``).
    """
    if unit == "session":
        per_member = sessions.select(
            F.col("session_id").alias("id"),
            F.col("duration_s").alias("__duration"),
            (F.col("n_purchases") > 0).alias("__bought"),
            (F.col("n_add_to_cart") > 0).alias("__carted"),
            F.col("n_events").alias("__events_per_session"),
        )
        key = "id"
    else:
        per_member = sessions.groupBy("user_id").agg(
            F.avg("duration_s").alias("__duration"),
            F.max(F.col("n_purchases") > 0).alias("__bought"),
            F.max(F.col("n_add_to_cart") > 0).alias("__carted"),
            F.avg("n_events").alias("__events_per_session"),
        )
        key = "user_id"
    sized = (
        assignments.join(per_member, key, "left")
        .groupBy("cluster_id")
        .agg(
            F.count(F.lit(1)).alias("size"),
            F.avg(F.col("__bought").cast("double")).alias("conversion_rate"),
            F.avg(F.col("__carted").cast("double")).alias("cart_rate"),
            F.avg("__events_per_session").alias("mean_events_per_session"),
            F.avg("__duration").alias("mean_session_duration_s"),
        )
    )
    # The share's denominator as a one-row aggregate joined to the k rows, not a window over
    # the whole table (an unpartitioned window moves every row to one partition).
    everyone = sized.agg(F.sum("size").alias("__everyone"))
    base = (
        sized.crossJoin(everyone)
        .withColumn("share", F.col("size") / F.col("__everyone"))
        .drop("__everyone")
    )
    exploded = (
        sequences.join(assignments.select("id", "cluster_id"), "id")
        .select("cluster_id", F.explode("events").alias("e"))
        .select(
            "cluster_id",
            F.col("e.category").alias("categories"),
            F.col("e.brand").alias("brands"),
            F.col("e.item_id").alias("items"),
        )
    )
    ranked_ids = assignments.withColumn(
        "__rank",
        F.row_number().over(Window.partitionBy("cluster_id").orderBy("distance", "id")),
    )
    reps = (
        ranked_ids.where(F.col("__rank") <= representatives)
        .groupBy("cluster_id")
        .agg(F.array_sort(F.collect_list(F.struct("__rank", "id"))).alias("__reps"))
        .select("cluster_id", F.transform("__reps", lambda r: r["id"]).alias("representative_ids"))
    )
    profile = base
    for column in ("categories", "brands", "items"):
        profile = profile.join(_top_values(exploded, column, top_n), "cluster_id", "left")
    return profile.join(reps, "cluster_id", "left").select(
        F.col("cluster_id").cast("int"),
        "size",
        "share",
        "conversion_rate",
        "cart_rate",
        "mean_events_per_session",
        "mean_session_duration_s",
        "top_categories",
        "top_brands",
        "top_items",
        "representative_ids",
        _jaccard_column(jaccard),
    )


def _jaccard_column(jaccard: Mapping[int, float] | None) -> Column:
    """``stability_jaccard``: the segment's value in ``jaccard`` (null when not measured)."""
    if not jaccard:
        return F.lit(None).cast("double").alias("stability_jaccard")
    pairs = [F.lit(x) for c, v in sorted(jaccard.items()) for x in (int(c), float(v))]
    return F.create_map(*pairs)[F.col("cluster_id").cast("int")].alias("stability_jaccard")
