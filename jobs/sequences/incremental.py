"""Incremental sessionization: where a run must start recomputing so that it equals a full one.

New events can change only sessions at or after their user's *cut*: local midnight of the date
``lookback_hours`` before the earliest new event (GA4 likewise reprocesses 72 hours of late
hits), moved earlier for users whose earlier sessions could be continued by the new events.

Times cross between the driver and Spark only as UTC-aware datetimes, sent as microseconds
(:func:`instant_literal`) and read back the same way (:func:`instant_from_micros`): PySpark
reads a naive datetime in the driver's local zone, so a driver outside UTC would move them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.core.config import SessionizeConfig
from jobs.sequences.sessionization import MICROS, local_date

#: The search for chains of sessions stops widening at this date.
_EARLIEST = date(1900, 1, 1)


@dataclass(frozen=True)
class IncrementalWindow:
    """What an incremental run recomputes: for every user, the events at or after their cut.

    The cut is ``start_ts`` (local midnight of ``start_date``, as UTC) for most users; ``cuts``
    lists the users whose earlier sessions run up to it, with the earlier start of the chain of
    sessions they belong to.  Every session starting at or after its user's cut is recomputed.
    """

    start_date: date
    #: UTC-aware.
    start_ts: datetime
    cuts: DataFrame  # user_id, cut


def local_midnight_utc(day: date, zone: ZoneInfo) -> datetime:
    """Midnight of ``day`` in ``zone`` as a UTC-aware datetime."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(timezone.utc)


def as_utc(instant: datetime) -> datetime:
    """``instant`` as a UTC-aware datetime; a naive one is taken to be UTC already."""
    if instant.tzinfo is None:
        return instant.replace(tzinfo=timezone.utc)
    return instant.astimezone(timezone.utc)


def instant_literal(instant: datetime) -> Column:
    """A Spark ``timestamp`` literal for ``instant`` (aware, or naive meaning UTC), the same
    whatever the driver's local zone: sent as microseconds since the epoch."""
    delta = as_utc(instant) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return F.timestamp_micros(F.lit(micros))


def instant_from_micros(micros: int) -> datetime:
    """A UTC-aware datetime from microseconds since the epoch (``unix_micros`` of a Spark
    timestamp, collected: unlike a collected timestamp, it does not depend on the driver's
    local zone)."""
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)


def date_literal(day: date) -> Column:
    """A Spark ``date`` literal for ``day``, sent as ISO text (no zone involved)."""
    return F.lit(day.isoformat()).cast("date")


def incremental_window(
    sessions: DataFrame, *, first_new_event: datetime, config: SessionizeConfig
) -> IncrementalWindow:
    """Where an incremental run must start recomputing, per user.

    ``sessions`` is the current ``sessions`` table; ``first_new_event`` the earliest new event
    time (UTC-aware, or naive meaning UTC).  The window starts at local midnight of the date
    ``lookback_hours`` before it.  A user whose last earlier session ends within
    ``inactivity_gap_s`` of that midnight may be continued by the new events, and the sessions
    of one unbroken chain (cut only by the maximum duration) share their split anchor, so that
    user is recomputed from the start of the chain instead.  Everyone else's events break at
    the window start, so sessions computed from the events after each user's cut equal a full
    rebuild's.  Runs one small Spark action per widening of the search (a user active without
    a break for days widens it).
    """
    zone = ZoneInfo(config.timezone)
    instant = as_utc(first_new_event) - timedelta(hours=config.lookback_hours)
    start_date = instant.astimezone(zone).date()
    start_ts = local_midnight_utc(start_date, zone)
    reach = start_ts - timedelta(seconds=config.inactivity_gap_s)
    # Only recent partitions can hold such chains; widen the search while a chain reaches its
    # lower bound (a user active without a break for days, e.g. a bot).
    days = math.ceil((config.inactivity_gap_s + config.max_session_duration_s) / 86400) + 1
    while True:
        low = start_date - timedelta(days=days)
        recent = sessions.where(
            (F.col("session_date") < date_literal(start_date))
            & (F.col("session_date") >= date_literal(low))
        ).select("user_id", "session_start", "session_end", "session_date")
        by_user = Window.partitionBy("user_id").orderBy("session_start")
        prev_end = F.lag("session_end").over(by_user)
        chain_break = prev_end.isNull() | (
            F.unix_micros("session_start") - F.unix_micros(prev_end)
            > F.lit(config.inactivity_gap_s * MICROS)
        )
        if config.split_at_midnight:
            chain_break = chain_break | (
                local_date(F.col("session_start"), config.timezone)
                != local_date(prev_end, config.timezone)
            )
        chained = recent.withColumn(
            "__chain_start",
            F.last(F.when(chain_break, F.col("session_start")), ignorenulls=True).over(
                by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
            ),
        ).withColumn("__chain_date", local_date(F.col("__chain_start"), config.timezone))
        last = chained.groupBy("user_id").agg(F.max_by(F.struct("*"), "session_start").alias("s"))
        reaching = last.where(F.col("s.session_end") >= instant_literal(reach))
        if config.split_at_midnight:
            # Crossing local midnight always starts a new session: nothing continues.
            reaching = reaching.limit(0)
        cuts = reaching.select("user_id", F.col("s.__chain_start").alias("cut"))
        earliest = reaching.agg(F.min("s.__chain_date")).first()
        bounded = earliest is None or earliest[0] is None or earliest[0] > low
        if bounded or low <= _EARLIEST:
            return IncrementalWindow(start_date, start_ts, cuts)
        days *= 4


def events_from_cuts(
    events: DataFrame, *, window: IncrementalWindow, cuts: DataFrame, first_ts: datetime
) -> DataFrame:
    """The ``events`` rows an incremental run recomputes: each user's events at or after their
    cut (``cuts``: ``user_id, cut``; ``window.start_ts`` for users not in it).  ``first_ts`` is
    the earliest cut (UTC-aware, or naive meaning UTC), used to prune ``event_date``
    partitions (UTC dates)."""
    cut = F.coalesce(F.col("cut"), instant_literal(window.start_ts))
    return (
        events.where(F.col("event_date") >= date_literal(as_utc(first_ts).date()))
        .join(cuts, "user_id", "left")
        .where(F.col("event_ts") >= cut)
        .drop("cut")
    )


def split_at_cuts(
    sessions: DataFrame, *, window: IncrementalWindow, cuts: DataFrame
) -> tuple[DataFrame, DataFrame]:
    """``(history, replaced)``: the ``sessions`` rows starting before each user's cut (kept)
    and at or after it (recomputed), both with the ``sessions`` columns."""
    cut = F.coalesce(F.col("cut"), instant_literal(window.start_ts))
    with_cut = sessions.join(cuts, "user_id", "left")
    history = with_cut.where(F.col("session_start") < cut).drop("cut")
    replaced = with_cut.where(F.col("session_start") >= cut)
    return history, replaced
