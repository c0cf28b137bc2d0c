"""The leakage-free backtest: which events every method may learn from, and which it must predict.

Two protocols split each human session's events into *history* and *future*:

* ``future`` (users with history): a time cutoff, the last ``evaluate.holdout_days`` or, by
  default, the time before which ``1 - holdout_fraction`` of the events happened.  Events before
  it are history, the rest future.  This is the temporal hold-out of offline recommender
  evaluation (e.g. Ludewig & Jannach, "Evaluation of session-based recommendation algorithms",
  2018; Sun et al., "Are we evaluating rigorously?", RecSys 2020, on leakage from random splits).
* ``session_suffix`` (session-keyed logs, or ``embed.unit: session``): every session with at least
  ``suffix_min_events`` events keeps its first events as history and its last
  ``max(1, floor(n x suffix_share))`` events as the future to predict (the "given the prefix,
  predict the rest" protocol of session-based recommendation).  Shorter sessions are history
  only.  For user units only the user's last such session is cut; the user's later sessions
  are left out (:func:`split_events`).  There is no time cutoff across units here: a
  popularity ranking or a baseline is fitted on every unit's history, including units whose
  sessions came after the suffixes of others, as in session-based evaluation on random
  session splits; ``future`` has the global cutoff.

Everything a method fits (the clustering under evaluation, every baseline's vocabulary, IDF,
scaler and centroids, every popularity ranking) is computed from :func:`history_units` only; the
future is read by the scoring alone (:mod:`jobs.evaluation.future`).  A unit is *scored* when it
has history and future events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.core.config import EvaluateConfig, SessionizeConfig
from jobs.sequences.user_sequences import build_user_sequences

log = logging.getLogger(__name__)

FUTURE = "future"
SESSION_SUFFIX = "session_suffix"
PROTOCOLS = (FUTURE, SESSION_SUFFIX)


@dataclass(frozen=True)
class ProtocolChoice:
    """The protocol to run (None when no protocol has enough units) and why."""

    protocol: str | None
    reason: str
    #: ``future``: the cutoff instant (timezone-aware, UTC); None for ``session_suffix``.
    cutoff: datetime | None = None
    #: Units with history and future under the chosen protocol.
    scored_units: int = 0


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def future_cutoff(sessions: DataFrame, config: EvaluateConfig) -> datetime | None:
    """The ``future`` protocol's cutoff, a timezone-aware UTC ``datetime`` (to the microsecond):
    the last event minus ``holdout_days``, or the ``1 - holdout_fraction`` quantile of event
    times (approximate, relative error 1e-4).  None when ``sessions`` holds no event.

    The instant travels as microseconds since the epoch, never as a naive ``datetime``: PySpark
    reads and writes those in the driver's local zone, which shifted the printed cutoff off UTC
    and, in a repeated daylight-saving hour, moved the split by an hour."""
    times = sessions.select(F.explode("events.ts").alias("ts")).select(
        F.unix_micros("ts").alias("us")
    )
    if config.holdout_days is not None:
        edge = F.max("us") - F.lit(int(config.holdout_days * 86_400_000_000))
    else:
        # Events after the quantile are the future (the quantile itself is history).
        edge = F.percentile_approx("us", 1.0 - config.holdout_fraction, 10_000) + F.lit(1)
    row = times.agg(edge.cast("long").alias("us")).first()
    if row is None or row["us"] is None:
        return None
    return _EPOCH + timedelta(microseconds=int(row["us"]))


def _epoch_micros(instant: datetime) -> int:
    """Microseconds since the epoch of a timezone-aware ``instant`` (ValueError when naive: a
    naive datetime names no instant)."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"the cutoff {instant} has no time zone: pass an aware datetime")
    return (instant - _EPOCH) // timedelta(microseconds=1)


def split_events(
    sessions: DataFrame,
    *,
    protocol: str,
    unit: str,
    config: EvaluateConfig,
    cutoff: datetime | None = None,
) -> DataFrame:
    """``sessions`` with ``history`` and ``future``: the session's ``events`` split by
    ``protocol`` (module docstring); both are arrays of the same struct, in time order.
    ``cutoff`` is needed for ``future``: a timezone-aware instant (:func:`future_cutoff`)
    compared with ``events.ts``.

    ``session_suffix`` for ``unit`` user makes one cut per user, at the suffix of the user's
    last session long enough to split: the sessions before it are history whole, and those
    after it (shorter ones) neither history nor future, so no event a user logged after the
    events to predict reaches that user's history (splitting every session apart put later
    sessions' prefixes into the history of an earlier suffix)."""
    events = F.col("events")
    if protocol == FUTURE:
        if cutoff is None:
            raise ValueError("the future protocol needs a cutoff")
        edge = F.timestamp_micros(F.lit(_epoch_micros(cutoff)))
        history = F.filter(events, lambda e: e["ts"] < edge)
        future = F.filter(events, lambda e: e["ts"] >= edge)
    elif protocol == SESSION_SUFFIX:
        n = F.size(events)
        m = F.greatest(F.lit(1), F.floor(n * F.lit(config.suffix_share)).cast("int"))
        split = n >= F.lit(config.suffix_min_events)
        history = F.when(split, F.slice(events, F.lit(1), n - m)).otherwise(events)
        future = F.when(split, F.slice(events, n - m + 1, m)).otherwise(F.slice(events, 1, 0))
        if unit == "user":
            this = F.struct(events[0]["ts"].alias("start"), F.col("session_id").alias("id"))
            cut = F.max(F.when(split, this)).over(Window.partitionBy("user_id"))
            nothing = F.slice(events, 1, 0)
            # A user without a session to split keeps every session as history (cut is null).
            history = F.when(this == cut, history).when(this > cut, nothing).otherwise(events)
            future = F.when(this == cut, future).otherwise(nothing)
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return sessions.withColumn("history", history).withColumn("future", future)


def history_units(split: DataFrame, *, unit: str, sessionize: SessionizeConfig) -> DataFrame:
    """``id``, ``user_id``, ``events``: each unit's history as the encoder and the baselines read
    it (user units: across sessions as in ``user_sequences``; session units: the session's
    history).  Units without history are left out."""
    kept = split.where(F.size("history") > 0).withColumn("events", F.col("history"))
    if unit == "session":
        return kept.select(F.col("session_id").alias("id"), "user_id", "events")
    sequences = build_user_sequences(
        kept.withColumn("session_start", F.col("events")[0]["ts"]), config=sessionize
    )
    return sequences.select(F.col("user_id").alias("id"), "user_id", "events")


def future_targets(split: DataFrame, *, unit: str) -> DataFrame:
    """``id``, ``future_items`` and ``future_categories`` (distinct, non-null, arrays) and
    ``future_purchase`` (boolean): what each unit did after its history; units without future
    events are left out."""
    key = F.col("user_id" if unit == "user" else "session_id").alias("id")
    events = split.select(key, F.explode("future").alias("e"))
    return events.groupBy("id").agg(
        F.collect_set("e.item_id").alias("future_items"),
        F.collect_set("e.category").alias("future_categories"),
        F.max(F.col("e.event_type") == "purchase").alias("future_purchase"),
    )


def count_scored(split: DataFrame, *, unit: str) -> int:
    """Units with history and future events under ``split`` (one Spark action)."""
    key = "user_id" if unit == "user" else "session_id"
    per_unit = split.groupBy(key).agg(
        F.max(F.size("history") > 0).alias("h"), F.max(F.size("future") > 0).alias("f")
    )
    return per_unit.where(F.col("h") & F.col("f")).count()


def _not_enough(protocol: str, found: int, needed: int) -> str:
    return f"not enough users for protocol {protocol}: {found} found, {needed} needed"


#: ``auto`` prefers ``future`` unless it scores fewer than this share of the units that
#: ``session_suffix`` would (a session-keyed log: few users come back after the cutoff).
FUTURE_MIN_SHARE_OF_SUFFIX = 0.25


def choose_protocol(sessions: DataFrame, *, unit: str, config: EvaluateConfig) -> ProtocolChoice:
    """The protocol for ``sessions`` (human sessions of the evaluated units) and the reason.

    A configured protocol is used when at least ``min_protocol_users`` units have history and
    future under it.  ``auto``: ``session_suffix`` for session units; otherwise ``future`` when
    enough users have events on both sides of the cutoff and they are at least
    :data:`FUTURE_MIN_SHARE_OF_SUFFIX` of the units ``session_suffix`` would score (on a
    session-keyed log, where a session id is the only identifier, few users return after the
    cutoff), else ``session_suffix`` when it has enough units.  ``protocol`` is None, with the
    reason (e.g. "not enough users for protocol future: 3 found, 30 needed"), when none has.
    Runs Spark actions (counts).
    """
    needed = config.min_protocol_users
    candidates = [config.protocol] if config.protocol != "auto" else [FUTURE, SESSION_SUFFIX]
    if unit == "session" and config.protocol == "auto":
        candidates = [SESSION_SUFFIX]
    found: dict[str, int] = {}
    cutoffs: dict[str, datetime | None] = {}
    for protocol in candidates:
        cutoff = future_cutoff(sessions, config) if protocol == FUTURE else None
        cutoffs[protocol] = cutoff
        if protocol == FUTURE and cutoff is None:
            found[protocol] = 0
            continue
        split = split_events(sessions, protocol=protocol, unit=unit, config=config, cutoff=cutoff)
        found[protocol] = count_scored(split, unit=unit)
    enough = [p for p in candidates if found[p] >= needed]
    short = "; ".join(_not_enough(p, found[p], needed) for p in candidates if p not in enough)
    if not enough:
        return ProtocolChoice(None, short)
    chosen = enough[0]
    if config.protocol != "auto":
        why = f"{found[chosen]:,} {unit}s have history and future (configured)"
    elif unit == "session":
        why = f"embed.unit is session; {found[chosen]:,} sessions have a prefix and a suffix"
    elif (
        chosen == FUTURE
        and SESSION_SUFFIX in enough
        and (found[FUTURE] < FUTURE_MIN_SHARE_OF_SUFFIX * found[SESSION_SUFFIX])
    ):
        chosen = SESSION_SUFFIX
        why = (
            f"auto: only {found[FUTURE]:,} users return after the cutoff against "
            f"{found[SESSION_SUFFIX]:,} with a session prefix and suffix (a session-keyed log)"
        )
    elif chosen == FUTURE:
        why = f"auto: {found[FUTURE]:,} users have history and future"
    else:
        why = f"auto: {short}; {found[SESSION_SUFFIX]:,} users have a session prefix and suffix"
    return ProtocolChoice(chosen, why, cutoffs.get(chosen), found[chosen])


def has_purchase(events: Column) -> Column:
    """Whether an ``events`` array holds a purchase (boolean)."""
    return F.exists(events, lambda e: e["event_type"] == "purchase")
