"""``cluster_profiles``: one row per cluster for analysts (its columns: the table registry,
:mod:`jobs.core.tables`)."""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

#: The ``top_<column>`` columns of a profile, each from this event field.
TOP_COLUMNS = (("categories", "category"), ("brands", "brand"), ("items", "item_id"))


def _top_values(members: DataFrame, top_n: int) -> DataFrame:
    """Per cluster: for each of :data:`TOP_COLUMNS`, the ``top_n`` most frequent values with
    their share of the cluster's events and their lift over the share among every clustered
    event.

    ``members``: ``cluster_id``, ``events``.  Returns ``cluster_id`` and ``top_<column>`` for
    each column: an array of (rank, value, share, lift) structs in rank order (by count, ties
    by value), null when the cluster has no value of it; null values are skipped.  The three
    columns are stacked as (kind, value) rows and ranked together: one pass over the events
    and one set of shuffles, not one per column.
    """
    stacked = members.select(
        "cluster_id",
        F.inline(
            F.flatten(
                F.transform(
                    "events",
                    lambda e: F.array(
                        *[
                            F.struct(F.lit(kind).alias("kind"), e[field].alias("value"))
                            for kind, field in TOP_COLUMNS
                        ]
                    ),
                )
            )
        ),
    ).where(F.col("value").isNotNull())
    counts = stacked.groupBy("cluster_id", "kind", "value").count()
    totals = counts.groupBy("cluster_id", "kind").agg(F.sum("count").alias("__total"))
    overall = counts.groupBy("kind", "value").agg(F.sum("count").alias("__pop"))
    overall_total = totals.groupBy("kind").agg(F.sum("__total").alias("__all"))
    ranked = (
        counts.join(totals, ["cluster_id", "kind"])
        .join(overall, ["kind", "value"])
        .join(overall_total, "kind")
        .withColumn("share", F.col("count") / F.col("__total"))
        .withColumn("lift", F.col("share") / (F.col("__pop") / F.col("__all")))
        .withColumn(
            "rank",
            F.row_number().over(
                Window.partitionBy("cluster_id", "kind").orderBy(F.desc("count"), F.asc("value"))
            ),
        )
        .where(F.col("rank") <= top_n)
    )

    def top(kind: str) -> Column:
        entry = F.struct("rank", "value", "share", "lift")
        values = F.array_sort(F.collect_list(F.when(F.col("kind") == kind, entry)))
        return F.when(F.size(values) > 0, values).alias(f"top_{kind}")

    return ranked.groupBy("cluster_id").agg(*[top(kind) for kind, _ in TOP_COLUMNS])


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
    members = sequences.join(assignments.select("id", "cluster_id"), "id")
    tops = _top_values(members.select("cluster_id", "events"), top_n)
    return (
        base.join(tops, "cluster_id", "left")
        .join(reps, "cluster_id", "left")
        .select(
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
    )


def _jaccard_column(jaccard: Mapping[int, float] | None) -> Column:
    """``stability_jaccard``: the segment's value in ``jaccard`` (null when not measured)."""
    if not jaccard:
        return F.lit(None).cast("double").alias("stability_jaccard")
    pairs = [F.lit(x) for c, v in sorted(jaccard.items()) for x in (int(c), float(v))]
    return F.create_map(*pairs)[F.col("cluster_id").cast("int")].alias("stability_jaccard")
