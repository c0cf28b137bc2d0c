"""Bot flags: a user-level ``is_bot`` on sessions, decided from session rates and daily counts.

A user is a bot when any of their sessions of at least ``bot.min_events_for_rate`` events runs
faster than ``bot.max_events_per_minute`` (the rate over at least one minute), or when their
events on one ``session_date`` exceed ``bot.max_events_per_day``.  The flag is set on all the
user's rows, so a bot's human-looking sessions are excluded with the rest.
"""

from __future__ import annotations

import dataclasses

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.core.config import SessionizeConfig

#: ``sessions`` columns that follow ``is_bot``, in contract order (docs/tables.md).
_AFTER_FLAG = ("events", "session_date")


def without_bots(config: SessionizeConfig) -> SessionizeConfig:
    """``config`` with bot flagging switched off."""
    return dataclasses.replace(config, bot=dataclasses.replace(config.bot, enabled=False))


def fast_session(config: SessionizeConfig) -> Column:
    """A session whose event rate marks its user as a bot (needs ``n_events``, ``duration_s``)."""
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
        F.max(fast_session(config)).alias("fast"), F.sum("n_events").alias("n_events")
    )
    suspicious = F.col("fast") | (F.col("n_events") > config.bot.max_events_per_day)
    return per_day.groupBy("user_id").agg(F.max(suspicious).alias("is_bot"))


def flag_bots(sessions: DataFrame, *, config: SessionizeConfig) -> DataFrame:
    """Add ``is_bot`` (a user-level flag) after the ``revenue`` column.

    ``sessions`` has the ``sessions`` contract's columns but ``is_bot``; the result has them all,
    in contract order (``is_bot`` false everywhere when ``bot.enabled`` is off).
    """
    bot = config.bot
    if not bot.enabled:
        flagged = sessions.withColumn("is_bot", F.lit(False))
    else:
        per_day = F.sum("n_events").over(Window.partitionBy("user_id", "session_date"))
        suspicious = fast_session(config) | (per_day > bot.max_events_per_day)
        flagged = sessions.withColumn(
            "is_bot", F.max(suspicious).over(Window.partitionBy("user_id"))
        )
    ordered = [c for c in sessions.columns if c not in _AFTER_FLAG]
    return flagged.select(*ordered, "is_bot", *_AFTER_FLAG)


def apply_bot_flags(sessions: DataFrame, *, flags: DataFrame) -> DataFrame:
    """Set ``is_bot`` from per-user ``flags`` (``user_id, is_bot``; replacing any flag
    ``sessions`` carries), keeping the ``sessions`` column order; users without a flag row are
    dropped (inner join)."""
    ordered = [c for c in sessions.columns if c not in ("is_bot", *_AFTER_FLAG)]
    return sessions.drop("is_bot").join(flags, "user_id").select(*ordered, "is_bot", *_AFTER_FLAG)
