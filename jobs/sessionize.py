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

import dataclasses
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

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


def summarise_unflagged(assigned: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """:func:`summarise_sessions` without the bot flag (a user-level property that incremental
    runs decide over the whole history, see :func:`user_bot_flags`)."""
    return summarise_sessions(assigned, config=_without_bots(config)).drop("is_bot")


def _without_bots(config: SessionizeConfig) -> SessionizeConfig:
    return dataclasses.replace(config, bot=dataclasses.replace(config.bot, enabled=False))


def _fast_session(config: SessionizeConfig) -> Column:
    """A session whose event rate marks its user as a bot."""
    bot = config.bot
    rate_per_minute = F.col("n_events") / F.greatest(F.col("duration_s"), F.lit(60.0)) * 60.0
    return (F.col("n_events") >= bot.min_events_for_rate) & (
        rate_per_minute > bot.max_events_per_minute
    )


def user_bot_flags(sessions: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """``user_id, is_bot`` for every user in ``sessions`` (same rule as :func:`flag_bots`).

    Needs only ``user_id``, ``session_date``, ``n_events`` and ``duration_s``, so incremental
    runs decide the flag over the whole history without reading any event arrays.
    """
    if not config.bot.enabled:
        return sessions.select("user_id").distinct().withColumn("is_bot", F.lit(False))
    per_day = sessions.groupBy("user_id", "session_date").agg(
        F.max(_fast_session(config)).alias("fast"), F.sum("n_events").alias("n_events")
    )
    suspicious = F.col("fast") | (F.col("n_events") > config.bot.max_events_per_day)
    return per_day.groupBy("user_id").agg(F.max(suspicious).alias("is_bot"))


def flag_bots(sessions: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """Add ``is_bot`` (a user-level flag) after the ``revenue`` column."""
    bot = config.bot
    if not bot.enabled:
        flagged = sessions.withColumn("is_bot", F.lit(False))
    else:
        fast_session = _fast_session(config)
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


SESSIONIZE_MODES = ("full", "incremental")


@dataclass(frozen=True)
class SessionizeCounts:
    events_in: int
    sessions: int
    users: int
    bot_users: int
    mode: str = "full"
    #: Incremental runs: the first rewritten ``session_date`` and how many partitions changed.
    window_start: date | None = None
    partitions_rewritten: int = 0


@dataclass(frozen=True)
class IncrementalWindow:
    """What an incremental run recomputes: for every user, the events at or after their cut.

    The cut is ``start_ts`` (local midnight of ``start_date``, as UTC) for most users; ``cuts``
    lists the users whose earlier sessions run up to it, with the earlier start of the chain of
    sessions they belong to.  Every session starting at or after its user's cut is recomputed.
    """

    start_date: date
    start_ts: datetime
    cuts: DataFrame  # user_id, cut


def incremental_window(
    sessions: DataFrame, *, first_new_event: datetime, config: SessionizeConfig
) -> IncrementalWindow:
    """Where an incremental run must start recomputing, per user.

    The window starts at local midnight of the date ``lookback_hours`` before the earliest new
    event.  A user whose last earlier session ends within ``inactivity_gap_s`` of that midnight
    may be continued by the new events, and the sessions of one unbroken chain (cut only by the
    maximum duration) share their split anchor, so that user is recomputed from the start of the
    chain instead.  Everyone else's events break at the window start, so sessions computed from
    the events after each user's cut equal a full rebuild's.
    """
    zone = ZoneInfo(config.timezone)
    instant = first_new_event.replace(tzinfo=timezone.utc) - timedelta(hours=config.lookback_hours)
    start_date = instant.astimezone(zone).date()
    start_ts = _local_midnight_utc(start_date, zone)
    reach = start_ts - timedelta(seconds=config.inactivity_gap_s)
    # Only recent partitions can hold such chains; widen the search while a chain reaches its
    # lower bound (a user active without a break for days, e.g. a bot).
    days = math.ceil((config.inactivity_gap_s + config.max_session_duration_s) / 86400) + 1
    while True:
        low = start_date - timedelta(days=days)
        recent = sessions.where(
            (F.col("session_date") < F.lit(start_date)) & (F.col("session_date") >= F.lit(low))
        ).select("user_id", "session_start", "session_end", "session_date")
        by_user = Window.partitionBy("user_id").orderBy("session_start")
        prev_end = F.lag("session_end").over(by_user)
        chain_break = prev_end.isNull() | (
            F.unix_micros("session_start") - F.unix_micros(prev_end)
            > F.lit(config.inactivity_gap_s * _MICROS)
        )
        if config.split_at_midnight:
            chain_break = chain_break | (
                _local_date(F.col("session_start"), config.timezone)
                != _local_date(prev_end, config.timezone)
            )
        chained = recent.withColumn(
            "__chain_start",
            F.last(F.when(chain_break, F.col("session_start")), ignorenulls=True).over(
                by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
            ),
        ).withColumn("__chain_date", _local_date(F.col("__chain_start"), config.timezone))
        last = chained.groupBy("user_id").agg(F.max_by(F.struct("*"), "session_start").alias("s"))
        reaching = last.where(F.col("s.session_end") >= F.lit(reach))
        if config.split_at_midnight:
            # Crossing local midnight always starts a new session: nothing continues.
            reaching = reaching.limit(0)
        cuts = reaching.select("user_id", F.col("s.__chain_start").alias("cut"))
        earliest = reaching.agg(F.min("s.__chain_date")).first()
        bounded = earliest is None or earliest[0] is None or earliest[0] > low
        if bounded or low <= date(1900, 1, 1):
            return IncrementalWindow(start_date, start_ts, cuts)
        days *= 4


def _local_midnight_utc(day: date, zone: ZoneInfo) -> datetime:
    """Midnight of ``day`` in ``zone`` as a naive UTC datetime (Spark's session zone is UTC)."""
    local = datetime.combine(day, time(0), tzinfo=zone)
    return local.astimezone(timezone.utc).replace(tzinfo=None)


def apply_bot_flags(sessions: DataFrame, *, flags: DataFrame) -> DataFrame:
    """Set ``is_bot`` from per-user ``flags`` (replacing any flag ``sessions`` carries), keeping
    the ``sessions`` column order."""
    ordered = [c for c in sessions.columns if c not in ("is_bot", "events", "session_date")]
    return (
        sessions.drop("is_bot")
        .join(flags, "user_id")
        .select(*ordered, "is_bot", "events", "session_date")
    )


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> SessionizeCounts:
    """Write ``sessions`` and ``user_sequences`` from ``events``, then log the covered runs.

    ``sessionize.mode=full`` rebuilds both tables (idempotent).  ``incremental`` recomputes only
    what events from ingest runs not yet in ``sessionize_log`` can change (see
    :func:`incremental_window`), rewrites those ``session_date`` partitions in one commit and the
    affected users' sequences, and produces the same tables as a full rebuild.  The log is
    written last, so a run killed midway is simply redone by the next run.
    """
    cfg = config.sessionize
    if cfg.mode not in SESSIONIZE_MODES:
        raise ValueError(f"sessionize.mode must be one of {SESSIONIZE_MODES}, got {cfg.mode!r}")
    log.info("sessionize rules %s (run %s, mode %s)", rule_version(cfg), run_id, cfg.mode)
    events = lake.read("events")
    present = {r[0] for r in events.select("ingest_run_id").distinct().collect()}
    if cfg.mode == "incremental":
        ready = all(lake.exists(t) for t in ("sessions", "user_sequences", "sessionize_log"))
        covered = _covered_ingest_runs(lake) if ready else set()
        if not ready:
            log.info("incremental sessionize: no earlier run to build on; rebuilding")
        elif covered - present:
            log.info("incremental sessionize: events were rebuilt since the last run; rebuilding")
        elif not present - covered:
            log.info("incremental sessionize: no new ingest runs; nothing to do")
            return SessionizeCounts(0, 0, 0, 0, mode="incremental")
        else:
            counts = _run_incremental(lake, events, sorted(present - covered), cfg)
            _write_log(lake, run_id, counts, sorted(present - covered), append=True)
            return counts
    counts = _run_full(lake, events, cfg)
    _write_log(lake, run_id, counts, sorted(present), append=False)
    return counts


def _run_full(lake: Lake, events: DataFrame, cfg: SessionizeConfig) -> SessionizeCounts:
    sessions = events.transform(sessionize, config=cfg).persist(StorageLevel.MEMORY_AND_DISK)
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


def _run_incremental(
    lake: Lake, events: DataFrame, pending: Sequence[str], cfg: SessionizeConfig
) -> SessionizeCounts:
    first_new = (
        events.where(F.col("ingest_run_id").isin(list(pending))).agg(F.min("event_ts")).first()
    )
    assert first_new is not None and first_new[0] is not None
    sessions = lake.read("sessions")
    window = incremental_window(sessions, first_new_event=first_new[0], config=cfg)
    cuts = window.cuts.persist(StorageLevel.MEMORY_AND_DISK)
    earliest_cut = cuts.agg(F.min("cut")).first()
    first_ts = min(
        window.start_ts, earliest_cut[0] if earliest_cut and earliest_cut[0] else window.start_ts
    )
    log.info(
        "incremental sessionize: %d new ingest runs from %s; recomputing sessions from %s "
        "(%d users whose sessions run up to it from %s)",
        len(pending),
        first_new[0],
        window.start_date,
        cuts.count(),
        first_ts,
    )
    cut = F.coalesce(F.col("cut"), F.lit(window.start_ts))
    window_events = (
        events.where(F.col("event_date") >= F.lit(first_ts.date()))
        .join(cuts, "user_id", "left")
        .where(F.col("event_ts") >= cut)
        .drop("cut")
    )
    recomputed = window_events.transform(assign_sessions, config=cfg).transform(
        summarise_unflagged, config=cfg
    )
    recomputed = recomputed.persist(StorageLevel.MEMORY_AND_DISK)
    with_cut = sessions.join(cuts, "user_id", "left")
    history = with_cut.where(F.col("session_start") < cut).drop("cut")
    replaced = with_cut.where(F.col("session_start") >= cut)
    try:
        light = ["user_id", "session_date", "n_events", "duration_s"]
        flags = user_bot_flags(
            history.select(*light).unionByName(recomputed.select(*light)), config=cfg
        ).persist(StorageLevel.MEMORY_AND_DISK)
        # Earlier sessions of users whose flag changed are rewritten too (is_bot is per user).
        flipped = _dates(
            history.join(flags.withColumnRenamed("is_bot", "__now"), "user_id").where(
                F.col("is_bot") != F.col("__now")
            )
        )
        rewritten = sorted(_dates(replaced) | _dates(recomputed) | flipped)
        rows = apply_bot_flags(recomputed, flags=flags).unionByName(
            apply_bot_flags(history.where(F.col("session_date").isin(rewritten)), flags=flags)
        )
        rows_written = 0
        if rewritten:
            written = lake.overwrite_partitions("sessions", rows, {"session_date": rewritten})
            rows_written = written.rows_written
        affected = rows.select("user_id").distinct()
        updated = (
            lake.read("sessions")
            .join(affected, "user_id", "left_semi")
            .transform(build_user_sequences, config=cfg)
        )
        unchanged = lake.read("user_sequences").join(affected, "user_id", "left_anti")
        users = updated.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            n_users = users.count()
            bots = users.where(F.col("is_bot")).count()
            lake.overwrite("user_sequences", unchanged.unionByName(users))
        finally:
            users.unpersist()
        totals = recomputed.agg(F.sum("n_events")).first()
        flags.unpersist()
    finally:
        recomputed.unpersist()
        cuts.unpersist()
    counts = SessionizeCounts(
        events_in=int((totals[0] if totals else 0) or 0),
        sessions=rows_written,
        users=n_users,
        bot_users=bots,
        mode="incremental",
        window_start=window.start_date,
        partitions_rewritten=len(rewritten),
    )
    log.info(
        "recomputed %d events into %d sessions in %d session_date partitions; "
        "%d user sequences rebuilt (%d flagged as bots)",
        counts.events_in,
        counts.sessions,
        counts.partitions_rewritten,
        counts.users,
        counts.bot_users,
    )
    return counts


def _dates(sessions: DataFrame) -> set[date]:
    return {r[0] for r in sessions.select("session_date").distinct().collect()}


def _covered_ingest_runs(lake: Lake) -> set[str]:
    rows = lake.read("sessionize_log").select(F.explode("ingest_run_ids")).collect()
    return {r[0] for r in rows}


_LOG_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType()),
        T.StructField("mode", T.StringType()),
        T.StructField("ingest_run_ids", T.ArrayType(T.StringType())),
        T.StructField("window_start", T.DateType()),
        T.StructField("partitions_rewritten", T.LongType()),
        T.StructField("sessions_written", T.LongType()),
    ]
)


def _write_log(
    lake: Lake, run_id: str, counts: SessionizeCounts, covered: Sequence[str], *, append: bool
) -> None:
    """Record which ingest runs the tables now reflect (the incremental watermark)."""
    row = (
        run_id,
        counts.mode,
        list(covered),
        counts.window_start,
        counts.partitions_rewritten,
        counts.sessions,
    )
    df = lake.spark.createDataFrame([row], _LOG_SCHEMA).withColumn(
        "sessionized_at", F.current_timestamp()
    )
    if append:
        lake.append("sessionize_log", df)
    else:
        lake.overwrite("sessionize_log", df)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/sessionize.py --conf conf/local.yaml``."""
    from jobs.cli import run_stage

    return run_stage("sessionize", argv)


if __name__ == "__main__":
    sys.exit(main())
