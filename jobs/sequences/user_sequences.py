"""Per-user sequences built from sessions, shared by ``sessionize`` (the ``user_sequences``
table) and ``evaluate`` (users' histories before a cutoff)."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.core.config import SessionizeConfig

#: Fields of one event in a session's ``events`` array (docs/tables.md).
EVENT_FIELDS = ("ts", "event_type", "item_id", "category", "brand", "price")


def last_n(values: Column, n: int) -> Column:
    """The last ``n`` elements of an array (all of it when shorter)."""
    size = F.size(values)
    return F.when(size > n, F.slice(values, size - n + 1, n)).otherwise(values)


def ordered_sum(values: Column) -> Column:
    """The sum of an array of doubles from its first element to its last, nulls skipped, 0.0
    when there is none.  Floating-point addition depends on order: ``sum`` adds rows in the
    order a plan delivers them (another partitioning, another last bit), this in the array's,
    so a rerun on another cluster stores the same value."""
    present = F.filter(values, lambda v: v.isNotNull())
    return F.aggregate(present, F.lit(0.0), lambda total, v: total + v)


def build_user_sequences(sessions: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """``sessions`` -> ``user_sequences``: each user's last ``max_events`` events across
    sessions, every event carrying its ``session_id`` so session boundaries survive."""
    per_user = sessions.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n_sessions"),
        F.min("session_start").alias("first_seen"),
        F.max("session_end").alias("last_seen"),
        F.sum("n_events").alias("n_events"),
        F.sum("n_views").alias("n_views"),
        F.sum("n_add_to_cart").alias("n_add_to_cart"),
        F.sum("n_purchases").alias("n_purchases"),
        F.max("is_bot").alias("is_bot"),
        F.array_sort(
            F.collect_list(F.struct("session_start", "session_id", "revenue", "events"))
        ).alias("__sessions"),
    )
    # Each session's array already holds its last max_events events, which is all the user's
    # tail can need from it.
    flattened = F.flatten(
        F.transform(
            "__sessions",
            lambda s: F.transform(
                s["events"],
                lambda e: F.struct(
                    *[e[c].alias(c) for c in EVENT_FIELDS], s["session_id"].alias("session_id")
                ),
            ),
        )
    )
    return per_user.select(
        "user_id",
        "n_sessions",
        "first_seen",
        "last_seen",
        "n_events",
        "n_views",
        "n_add_to_cart",
        "n_purchases",
        # Sessions' revenue added in session order, as each session's was (ordered_sum).
        ordered_sum(F.col("__sessions.revenue")).alias("revenue"),
        "is_bot",
        last_n(flattened, config.max_events).alias("events"),
    )
