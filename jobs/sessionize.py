"""``sessionize`` stage: ``events`` -> Delta ``sessions`` and ``user_sequences`` (SPEC section 4).

Rules (all configurable in ``sessionize``):

* a gap strictly longer than ``inactivity_gap_s`` starts a new session (an event exactly at the
  threshold stays in the session, as in GA's "30 minutes of inactivity");
* optionally, crossing local midnight in ``timezone`` starts a new session;
* a session longer than ``max_session_duration_s`` is split into consecutive windows of that
  length anchored at its first event;
* users whose sessions exceed ``bot.max_events_per_minute`` (over sessions of at least
  ``bot.min_events_for_rate`` events), or whose events on one day exceed
  ``bot.max_events_per_day``, are flagged ``is_bot`` on all their rows.

``session_id`` is a hash of user, session start and the rule version, so it is stable across
reruns and changes only when the rules do.  Everything runs on Spark built-ins (window functions
over one ``user_id`` partitioning, so the stage shuffles the events once).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.config import AppConfig, SessionizeConfig, config_fingerprint
from jobs.lake import Lake

log = logging.getLogger(__name__)

#: Bump when the meaning of a session changes in code; config changes are hashed in anyway.
RULES_REVISION = "1"
_EVENT_FIELDS = ("ts", "event_type", "item_id", "category", "brand", "price")
_MICROS = 1_000_000


def rule_version(config: SessionizeConfig) -> str:
    """Identifier of the rules that cut sessions; part of every ``session_id``."""
    rules = {
        "gap": config.inactivity_gap_s,
        "midnight": config.split_at_midnight,
        "tz": config.timezone if config.split_at_midnight else "UTC",
        "max_duration": config.max_session_duration_s,
    }
    return f"r{RULES_REVISION}-{config_fingerprint(rules)}"


def _local_date(ts: Column, timezone: str) -> Column:
    return F.to_date(F.from_utc_timestamp(ts, timezone))


def assign_sessions(events: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """Add ``session_id`` and ``session_start`` to every event (one row per input event).

    Events are ordered by ``(event_ts, event_id)`` per user, so out-of-order input and ties come
    out the same on every run.
    """
    if config.inactivity_gap_s <= 0 or config.max_session_duration_s <= 0:
        raise ValueError("sessionize: inactivity_gap_s and max_session_duration_s must be > 0")
    by_user = Window.partitionBy("user_id").orderBy("event_ts", "event_id")
    so_far = by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    micros = F.unix_micros("event_ts")

    prev_ts = F.lag("event_ts").over(by_user)
    breaks = prev_ts.isNull() | (
        micros - F.unix_micros(prev_ts) > F.lit(config.inactivity_gap_s * _MICROS)
    )
    if config.split_at_midnight:
        breaks = breaks | (
            _local_date(F.col("event_ts"), config.timezone) != _local_date(prev_ts, config.timezone)
        )
    flagged = events.withColumn("__break", breaks).withColumn(
        "__gap_start",
        F.last(F.when(F.col("__break"), F.col("event_ts")), ignorenulls=True).over(so_far),
    )
    windowed = flagged.withColumn(
        "__window",
        F.floor(
            (micros - F.unix_micros("__gap_start")) / F.lit(config.max_session_duration_s * _MICROS)
        ),
    )
    new_session = F.col("__break") | (F.col("__window") != F.lag("__window").over(by_user))
    with_start = windowed.withColumn(
        "session_start",
        F.last(F.when(new_session, F.col("event_ts")), ignorenulls=True).over(so_far),
    )
    version = rule_version(config)
    session_id = F.substring(
        F.sha2(
            F.concat_ws(
                "|", F.col("user_id"), F.unix_micros("session_start").cast("string"), F.lit(version)
            ),
            256,
        ),
        1,
        32,
    )
    return with_start.drop("__break", "__gap_start", "__window").withColumn(
        "session_id", session_id
    )


def _last_n(values: Column, n: int) -> Column:
    """The last ``n`` elements of an array (all of it when shorter)."""
    size = F.size(values)
    return F.when(size > n, F.slice(values, size - n + 1, n)).otherwise(values)


def _counts() -> list[Column]:
    return [
        F.count(F.lit(1)).alias("n_events"),
        F.count_if(F.col("event_type") == "view").alias("n_views"),
        F.count_if(F.col("event_type") == "add_to_cart").alias("n_add_to_cart"),
        F.count_if(F.col("event_type") == "purchase").alias("n_purchases"),
        F.coalesce(
            F.sum(F.when(F.col("event_type") == "purchase", F.col("price"))), F.lit(0.0)
        ).alias("revenue"),
    ]


def summarise_sessions(assigned: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """One row per session in the ``sessions`` contract, with the bot flag applied."""
    event = F.struct(F.col("event_ts").alias("ts"), *[F.col(c) for c in _EVENT_FIELDS if c != "ts"])
    sessions = assigned.groupBy("user_id", "session_id").agg(
        F.min("event_ts").alias("session_start"),
        F.max("event_ts").alias("session_end"),
        *_counts(),
        F.array_sort(F.collect_list(event)).alias("__events"),
    )
    sessions = sessions.select(
        "session_id",
        "user_id",
        "session_start",
        "session_end",
        (
            (F.unix_micros("session_end") - F.unix_micros("session_start")) / F.lit(float(_MICROS))
        ).alias("duration_s"),
        "n_events",
        "n_views",
        "n_add_to_cart",
        "n_purchases",
        "revenue",
        _last_n(F.col("__events"), config.max_events).alias("events"),
        _local_date(F.col("session_start"), config.timezone).alias("session_date"),
    )
    return flag_bots(sessions, config=config)


def flag_bots(sessions: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """Add ``is_bot`` (a user-level flag) after the ``revenue`` column."""
    bot = config.bot
    if not bot.enabled:
        flagged = sessions.withColumn("is_bot", F.lit(False))
    else:
        rate_per_minute = F.col("n_events") / F.greatest(F.col("duration_s"), F.lit(60.0)) * 60.0
        fast_session = (F.col("n_events") >= bot.min_events_for_rate) & (
            rate_per_minute > bot.max_events_per_minute
        )
        per_day = F.sum("n_events").over(Window.partitionBy("user_id", "session_date"))
        suspicious = fast_session | (per_day > bot.max_events_per_day)
        flagged = sessions.withColumn(
            "is_bot", F.max(suspicious).over(Window.partitionBy("user_id"))
        )
    ordered = [c for c in sessions.columns if c not in ("events", "session_date")]
    return flagged.select(*ordered, "is_bot", "events", "session_date")


def sessionize(events: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """``events`` -> ``sessions`` (the whole stage as one pure transform)."""
    return events.transform(assign_sessions, config=config).transform(
        summarise_sessions, config=config
    )


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
        F.sum("revenue").alias("revenue"),
        F.max("is_bot").alias("is_bot"),
        F.array_sort(F.collect_list(F.struct("session_start", "session_id", "events"))).alias(
            "__sessions"
        ),
    )
    # Each session's array already holds its last max_events events, which is all the user's
    # tail can need from it.
    flattened = F.flatten(
        F.transform(
            "__sessions",
            lambda s: F.transform(
                s["events"],
                lambda e: F.struct(
                    *[e[c].alias(c) for c in _EVENT_FIELDS], s["session_id"].alias("session_id")
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
        "revenue",
        "is_bot",
        _last_n(flattened, config.max_events).alias("events"),
    )


def vendor_session_agreement(assigned: DataFrame) -> DataFrame:
    """How our sessions compare with the source's own session ids (e.g. REES46 ``user_session``).

    One row: ``vendor_sessions``, ``reproduced_exactly`` (vendor sessions whose events form
    exactly one of our sessions, no more, no less) and ``share_reproduced``.
    """
    ours = assigned.groupBy("session_id").agg(F.count(F.lit(1)).alias("__our_size"))
    per_vendor = (
        assigned.where(F.col("source_session_id").isNotNull())
        .join(ours, "session_id")
        .groupBy("source_session_id")
        .agg(
            F.count(F.lit(1)).alias("__size"),
            F.count_distinct("session_id").alias("__ours"),
            F.max("__our_size").alias("__our_size"),
        )
    )
    exact = (F.col("__ours") == 1) & (F.col("__our_size") == F.col("__size"))
    return per_vendor.agg(
        F.count(F.lit(1)).alias("vendor_sessions"),
        F.count_if(exact).alias("reproduced_exactly"),
    ).withColumn("share_reproduced", F.col("reproduced_exactly") / F.col("vendor_sessions"))


# ==================================================================== the job


@dataclass(frozen=True)
class SessionizeCounts:
    events_in: int
    sessions: int
    users: int
    bot_users: int


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> SessionizeCounts:
    """Rebuild ``sessions`` and ``user_sequences`` from ``events`` (idempotent full refresh)."""
    cfg = config.sessionize
    log.info("sessionize rules %s (run %s)", rule_version(cfg), run_id)
    sessions = lake.read("events").transform(sessionize, config=cfg)
    sessions = sessions.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        written = lake.overwrite("sessions", sessions)
        users = lake.overwrite("user_sequences", build_user_sequences(sessions, config=cfg))
        totals = sessions.agg(
            F.sum("n_events").alias("events"),
            F.count_distinct(F.when(F.col("is_bot"), F.col("user_id"))).alias("bots"),
        ).first()
    finally:
        sessions.unpersist()
    assert totals is not None
    counts = SessionizeCounts(
        events_in=int(totals["events"] or 0),
        sessions=written.rows_written,
        users=users.rows_written,
        bot_users=int(totals["bots"] or 0),
    )
    log.info(
        "sessionized %d events into %d sessions of %d users (%d flagged as bots)",
        counts.events_in,
        counts.sessions,
        counts.users,
        counts.bot_users,
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/sessionize.py --conf conf/local.yaml``."""
    from jobs.cli import run_stage

    return run_stage("sessionize", argv)


if __name__ == "__main__":
    sys.exit(main())
