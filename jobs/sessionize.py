"""``sessionize`` stage: ``events`` -> Delta ``sessions`` and ``user_sequences``.

The rules live in :mod:`jobs.sequences` (:mod:`~jobs.sequences.sessionization`,
:mod:`~jobs.sequences.bots`, :mod:`~jobs.sequences.incremental`); this module reads the tables,
runs them (a full rebuild or an incremental update), writes the results and records in
``sessionize_log`` which ingest runs the tables now reflect.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import AppConfig, SessionizeConfig
from jobs.core.config.sections import RunMode
from jobs.core.lake import Lake
from jobs.core.tables import EVENTS, SESSIONIZE_LOG, SESSIONS, USER_SEQUENCES, contract_of
from jobs.runner import run_stage
from jobs.sequences.bots import apply_bot_flags, user_bot_flags
from jobs.sequences.incremental import (
    events_from_cuts,
    incremental_window,
    instant_from_micros,
    split_at_cuts,
)
from jobs.sequences.sessionization import (
    rule_version,
    session_keys,
    sessionize,
    summarise_unflagged,
)
from jobs.sequences.user_sequences import build_user_sequences

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionizeCounts:
    events_in: int
    sessions: int
    users: int
    bot_users: int
    mode: RunMode = "full"
    #: Incremental runs: the first rewritten ``session_date`` and how many partitions changed.
    window_start: date | None = None
    partitions_rewritten: int = 0

    def summary(self) -> str:
        """The ``sessionize`` stage's one-line report."""
        if self.mode == "incremental":
            if not self.partitions_rewritten:
                return "incremental: no new ingest runs, nothing to do"
            return (
                f"incremental from {self.window_start}: {self.events_in:,} events -> "
                f"{self.sessions:,} sessions in {self.partitions_rewritten} session_date "
                f"partitions, {self.users:,} user sequences rebuilt"
            )
        return (
            f"{self.events_in:,} events -> {self.sessions:,} sessions, "
            f"{self.users:,} user sequences ({self.bot_users} bot users flagged)"
        )


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> SessionizeCounts:
    """Write ``sessions`` and ``user_sequences`` from ``events``, then log the covered runs.

    ``sessionize.mode=full`` rebuilds both tables (idempotent).  ``incremental`` recomputes only
    what events from ingest runs not yet in ``sessionize_log`` can change (see
    :func:`jobs.sequences.incremental.incremental_window`), rewrites those ``session_date``
    partitions in one commit and the affected users' sequences, and produces the same tables as
    a full rebuild.  The log is written last, so a run killed midway is simply redone by the
    next run.
    """
    cfg = config.sessionize
    log.info("sessionize rules %s (run %s, mode %s)", rule_version(cfg), run_id, cfg.mode)
    events = lake.read(EVENTS)
    present = {r[0] for r in events.select("ingest_run_id").distinct().collect()}
    if cfg.mode == "incremental":
        ready = all(lake.exists(t) for t in (SESSIONS, USER_SEQUENCES, SESSIONIZE_LOG))
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
        written = lake.overwrite(SESSIONS, sessions)
        users = lake.overwrite(USER_SEQUENCES, build_user_sequences(sessions, config=cfg))
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
    # Times come back as microseconds, made UTC-aware here: a collected timestamp would be a
    # naive datetime in the driver's local zone (see jobs.sequences.incremental).
    first_new_us = (
        events.where(F.col("ingest_run_id").isin(list(pending)))
        .agg(F.unix_micros(F.min("event_ts")))
        .first()
    )
    assert first_new_us is not None and first_new_us[0] is not None
    first_new = instant_from_micros(first_new_us[0])
    sessions = lake.read(SESSIONS)
    window = incremental_window(sessions, first_new_event=first_new, config=cfg)
    cuts = window.cuts.persist(StorageLevel.MEMORY_AND_DISK)
    earliest_cut = cuts.agg(F.unix_micros(F.min("cut"))).first()
    first_ts = window.start_ts
    if earliest_cut and earliest_cut[0] is not None:
        first_ts = min(first_ts, instant_from_micros(earliest_cut[0]))
    log.info(
        "incremental sessionize: %d new ingest runs from %s; recomputing sessions from %s "
        "(%d users whose sessions run up to it from %s)",
        len(pending),
        first_new,
        window.start_date,
        cuts.count(),
        first_ts,
    )
    window_events = events_from_cuts(events, window=window, cuts=cuts, first_ts=first_ts)
    recomputed = window_events.transform(session_keys, config=cfg).transform(
        summarise_unflagged, config=cfg
    )
    recomputed = recomputed.persist(StorageLevel.MEMORY_AND_DISK)
    history, replaced = split_at_cuts(sessions, window=window, cuts=cuts)
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
            written = lake.overwrite_partitions(SESSIONS, rows, {"session_date": rewritten})
            rows_written = written.rows_written
        affected = rows.select("user_id").distinct()
        updated = (
            lake.read(SESSIONS)
            .join(affected, "user_id", "left_semi")
            .transform(build_user_sequences, config=cfg)
        )
        users = updated.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            n_users = users.count()
            bots = users.where(F.col("is_bot")).count()
            # Delta MERGE on user_id: the rebuilt users replace their rows, new users are
            # inserted, and no other user's file is rewritten.  A user never loses all
            # sessions here (events are only added), so nothing is deleted.
            lake.merge(USER_SEQUENCES, users)
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
    rows = lake.read(SESSIONIZE_LOG).select(F.explode("ingest_run_ids")).collect()
    return {r[0] for r in rows}


def _write_log(
    lake: Lake, run_id: str, counts: SessionizeCounts, covered: Sequence[str], *, append: bool
) -> None:
    """Record which ingest runs the tables now reflect (the incremental watermark)."""
    schema = contract_of(SESSIONIZE_LOG).schema
    values = {
        "run_id": run_id,
        "mode": counts.mode,
        "ingest_run_ids": list(covered),
        "window_start": counts.window_start,
        "partitions_rewritten": counts.partitions_rewritten,
        "sessions_written": counts.sessions,
    }
    # Every column but the commit time comes from the driver; the time is Spark's.
    given = T.StructType([f for f in schema.fields if f.name in values])
    row = tuple(values[name] for name in given.fieldNames())
    df = (
        lake.spark.createDataFrame([row], given)
        .withColumn("sessionized_at", F.current_timestamp())
        .select(*schema.fieldNames())
    )
    if append:
        lake.append(SESSIONIZE_LOG, df)
    else:
        lake.overwrite(SESSIONIZE_LOG, df)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/sessionize.py --conf conf/local.yaml``."""
    return run_stage("sessionize", argv)


if __name__ == "__main__":
    sys.exit(main())
