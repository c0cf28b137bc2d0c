"""Sessionization: ``events`` -> sessions, as pure Spark transforms.

Rules (all configurable in ``sessionize``, see :class:`jobs.core.config.SessionizeConfig`):

* a gap strictly longer than ``inactivity_gap_s`` starts a new session (an event exactly at the
  threshold stays in the session, as in GA's "30 minutes of inactivity");
* optionally, crossing local midnight in ``timezone`` starts a new session;
* a session longer than ``max_session_duration_s`` is split into consecutive windows of that
  length anchored at its first event;
* bot users are flagged on all their rows (:mod:`jobs.sequences.bots`).

Events are ordered by :data:`EVENT_ORDER`: time, then source order (file, then the order within
it), so events with equal timestamps (common with second-resolution sources) keep the order
they were logged in: where sessions split, in the ``events`` arrays and in their truncation.

``session_id`` is a hash of user, session start and the rule version, so it is stable across
reruns and changes only when the rules do.  Everything runs on Spark built-ins (window functions
over one ``user_id`` partitioning, so sessionizing shuffles the events once).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.core.config import SessionizeConfig, config_fingerprint
from jobs.sequences.bots import flag_bots, without_bots
from jobs.sequences.user_sequences import EVENT_FIELDS, last_n, ordered_sum

#: Bump when the meaning of a session changes in code; config changes are hashed in anyway.
RULES_REVISION = "1"
MICROS = 1_000_000
#: How events are ordered everywhere (``events`` columns, docs/tables.md): time, then the order
#: they were logged in (file, position or ``ingest.source.order_by``), then id.
EVENT_ORDER = ("event_ts", "source_file", "source_order", "event_id")


def rule_version(config: SessionizeConfig) -> str:
    """Identifier of the rules that cut sessions (``r<revision>-<fingerprint>``); part of every
    ``session_id``."""
    rules = {
        "gap": config.inactivity_gap_s,
        "midnight": config.split_at_midnight,
        "tz": config.timezone if config.split_at_midnight else "UTC",
        "max_duration": config.max_session_duration_s,
    }
    return f"r{RULES_REVISION}-{config_fingerprint(rules)}"


def local_date(ts: Column, timezone: str) -> Column:
    """The calendar date of the UTC timestamp ``ts`` in ``timezone`` (an IANA zone name)."""
    return F.to_date(F.from_utc_timestamp(ts, timezone))


#: Columns :func:`session_keys` adds: with ``user_id`` they identify a session (its events are
#: those of one user with the same inactivity-gap start and the same max-duration window).
SESSION_KEY = ("__gap_start", "__window")


def session_keys(events: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """Add the :data:`SESSION_KEY` columns to every event (one row per input event): the
    timestamp of the event that opened its inactivity-gap run (``__gap_start``) and its
    max-duration window within that run (``__window``, 0-based).  A session is a group of
    ``user_id`` and both columns; its start is the group's earliest ``event_ts``.

    Needs ``user_id`` and the :data:`EVENT_ORDER` columns.  Two window passes over one
    ``user_id`` partitioning (``lag``, then a running ``last``), so the wide event rows are
    buffered twice rather than four times as when each event's ``session_start`` is derived
    (:func:`assign_sessions`).
    Raises ``ValueError`` when ``inactivity_gap_s`` or ``max_session_duration_s`` is not > 0.
    """
    if config.inactivity_gap_s <= 0 or config.max_session_duration_s <= 0:
        raise ValueError("sessionize: inactivity_gap_s and max_session_duration_s must be > 0")
    by_user = Window.partitionBy("user_id").orderBy(*EVENT_ORDER)
    so_far = by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    micros = F.unix_micros("event_ts")

    prev_ts = F.lag("event_ts").over(by_user)
    breaks = prev_ts.isNull() | (
        micros - F.unix_micros(prev_ts) > F.lit(config.inactivity_gap_s * MICROS)
    )
    if config.split_at_midnight:
        breaks = breaks | (
            local_date(F.col("event_ts"), config.timezone) != local_date(prev_ts, config.timezone)
        )
    gap_start, window_col = SESSION_KEY
    return events.withColumn(
        gap_start, F.last(F.when(breaks, F.col("event_ts")), ignorenulls=True).over(so_far)
    ).withColumn(
        window_col,
        F.floor(
            (micros - F.unix_micros(gap_start)) / F.lit(config.max_session_duration_s * MICROS)
        ),
    )


def session_id_of(user_id: Column, session_start: Column, config: SessionizeConfig) -> Column:
    """``session_id``: the first 32 hex digits of SHA-256 over user, session start (epoch
    microseconds) and :func:`rule_version`, so it is stable across reruns."""
    version = rule_version(config)
    text = F.concat_ws("|", user_id, F.unix_micros(session_start).cast("string"), F.lit(version))
    return F.substring(F.sha2(text, 256), 1, 32)


def assign_sessions(events: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """Add ``session_id`` and ``session_start`` to every event (one row per input event).

    Needs ``user_id`` and the :data:`EVENT_ORDER` columns.  Events are ordered by
    :data:`EVENT_ORDER` per user, so out-of-order input comes out the same on every run and
    ties keep source order.  The sessions are :func:`session_keys`' (the same rules, the same
    ids as :func:`summarise_sessions`).
    Raises ``ValueError`` when ``inactivity_gap_s`` or ``max_session_duration_s`` is not > 0.
    """
    keyed = events.transform(session_keys, config=config)
    by_user = Window.partitionBy("user_id").orderBy(*EVENT_ORDER)
    so_far = by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    gap_start, window_col = SESSION_KEY
    # The first event of a (gap start, window) group opens a session (so do events tied with
    # the first of its gap run: they carry the same timestamp); every event of the group then
    # carries the opening timestamp.
    opens = (F.col(gap_start) == F.col("event_ts")) | (
        F.col(window_col) != F.lag(window_col).over(by_user)
    )
    with_start = keyed.withColumn(
        "session_start", F.last(F.when(opens, F.col("event_ts")), ignorenulls=True).over(so_far)
    )
    return with_start.drop(*SESSION_KEY).withColumn(
        "session_id", session_id_of(F.col("user_id"), F.col("session_start"), config)
    )


def _counts() -> list[Column]:
    return [
        F.count(F.lit(1)).alias("n_events"),
        F.count_if(F.col("event_type") == "view").alias("n_views"),
        F.count_if(F.col("event_type") == "add_to_cart").alias("n_add_to_cart"),
        F.count_if(F.col("event_type") == "purchase").alias("n_purchases"),
    ]


def summarise_sessions(keyed: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """One row per session in the ``sessions`` contract, with the bot flag applied.

    ``keyed`` is :func:`session_keys`' output (events with the :data:`SESSION_KEY` columns);
    ``duration_s`` is in seconds, ``events`` holds the last ``max_events`` events in
    :data:`EVENT_ORDER` (oldest first, ties in source order), ``session_date`` is the session
    start's date in ``timezone``.  Grouping by the key (not by ``session_id``) hashes one id
    per session instead of one per event.
    """
    # Sorted on the order columns first, which are then dropped from each element.
    order = [F.col(c).alias(f"__o{i}") for i, c in enumerate(EVENT_ORDER)]
    fields = [F.col("event_ts").alias("ts"), *[F.col(c) for c in EVENT_FIELDS if c != "ts"]]
    ordered = F.array_sort(F.collect_list(F.struct(*order, *fields)))
    sessions = keyed.groupBy("user_id", *SESSION_KEY).agg(
        F.min("event_ts").alias("session_start"),
        F.max("event_ts").alias("session_end"),
        *_counts(),
        F.transform(ordered, lambda e: F.struct(*[e[c].alias(c) for c in EVENT_FIELDS])).alias(
            "__events"
        ),
    )
    sessions = sessions.withColumn(
        "session_id", session_id_of(F.col("user_id"), F.col("session_start"), config)
    )
    sessions = sessions.select(
        "session_id",
        "user_id",
        "session_start",
        "session_end",
        (
            (F.unix_micros("session_end") - F.unix_micros("session_start")) / F.lit(float(MICROS))
        ).alias("duration_s"),
        "n_events",
        "n_views",
        "n_add_to_cart",
        "n_purchases",
        # Purchase prices added in event order (every event, not only the stored tail).
        ordered_sum(
            F.transform("__events", lambda e: F.when(e["event_type"] == "purchase", e["price"]))
        ).alias("revenue"),
        last_n(F.col("__events"), config.max_events).alias("events"),
        local_date(F.col("session_start"), config.timezone).alias("session_date"),
    )
    return flag_bots(sessions, config=config)


def summarise_unflagged(keyed: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """:func:`summarise_sessions` without the bot flag (a user-level property that incremental
    runs decide over the whole history, see :func:`jobs.sequences.bots.user_bot_flags`)."""
    return summarise_sessions(keyed, config=without_bots(config)).drop("is_bot")


def sessionize(events: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """``events`` -> ``sessions`` (a full rebuild as one pure transform)."""
    return events.transform(session_keys, config=config).transform(
        summarise_sessions, config=config
    )


def vendor_session_agreement(assigned: DataFrame) -> DataFrame:
    """How our sessions compare with the source's own session ids (e.g. REES46 ``user_session``).

    ``assigned`` is :func:`assign_sessions`' output with ``source_session_id``.  One row:
    ``vendor_sessions``, ``reproduced_exactly`` (vendor sessions whose events form exactly one of
    our sessions, no more, no less) and ``share_reproduced`` (0..1).
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
