"""``ingest`` stage: raw clickstream files -> Delta ``events`` (bronze) + ``events_quarantine``.

A source mapping (``ingest.source`` in config) says how each raw file's fields become the
``events`` contract, so public datasets ingest by configuration alone.  Every input record ends
in exactly one place: kept in ``events``, removed as a duplicate, or quarantined with a reason;
the stage checks ``input = kept + duplicates + quarantined`` before it reports success.

Parse -> plan -> compute -> commit: list the input files (in incremental mode, only those
``ingest_log`` does not list), read and normalise them, deduplicate, then write ``events`` and
``events_quarantine`` and, last, ``ingest_log``.  The transforms live in :mod:`jobs.sources`;
only this module touches the session and the tables.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from functools import reduce

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.core.config import AppConfig
from jobs.core.lake import ConcurrentWriteError, Lake, Txn, WriteResult
from jobs.core.tables import EVENTS, EVENTS_QUARANTINE, INGEST_LOG
from jobs.runner import run_stage
from jobs.sources.accounting import (
    IngestCounts,
    Labels,
    check_something_kept,
    check_written,
    count_labels,
    tally,
)
from jobs.sources.columns import (
    CONTENT_COLUMNS,
    ELEMENT,
    POSITION,
    RAW,
    REASON,
    SOURCE_FILE,
    SOURCE_ORDER,
    SPLIT_START,
)
from jobs.sources.dedup import (
    CONFLICTING_EVENT_ID,
    kept_events,
    label_duplicates,
    source_order,
)
from jobs.sources.errors import IngestError, names_unreadable_files
from jobs.sources.files import (
    InputFile,
    list_input_files,
    logged_versions,
    to_ingest_log,
    unseen_files,
)
from jobs.sources.mapping import apply_lookups, normalise
from jobs.sources.outputs import to_events, to_quarantine, valid_rows
from jobs.sources.readers import read_lookup, read_raw, resolve_positions
from jobs.sources.timestamps import AMBIGUOUS_RULE, check_timestamp_format, count_ambiguous

# IngestError is re-exported: callers catch ``jobs.ingest.IngestError``.
__all__ = ["IngestCounts", "IngestError", "main", "run"]

log = logging.getLogger(__name__)

#: The Delta transaction application id of incremental ingest commits (``events``, ``ingest_log``).
INGEST_APP = "clickstream-segments/ingest"


@names_unreadable_files
def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> IngestCounts:
    """Read the configured inputs and write ``events``, ``events_quarantine`` and ``ingest_log``.

    ``ingest.mode=full`` replaces ``events`` and ``events_quarantine`` as a whole from every
    configured file, so a rerun over the same input leaves identical tables.

    ``ingest.mode=incremental`` reads only files that ``ingest_log`` does not list with the same
    size and modification time, appends the events not already in ``events`` (a record whose
    id ``events`` holds with the same content is a duplicate, with other content a conflict)
    and their quarantined records.  ``ingest_log`` is written last: a run killed before it
    leaves the files unlisted, so the next run reads them again; their events are then found
    in ``events`` and counted as duplicates, and their quarantine rows are replaced, not repeated.
    Duplicates, conflicts and collapsed events are decided by
    :func:`jobs.sources.dedup.label_duplicates`.

    Raises :class:`IngestError` when the input cannot be ingested (no inputs, a missing path, an
    unusable mapping, a file Spark cannot read, no records in a full run), when the run would
    keep no event (every record quarantined, or none read), or when the row accounting does not
    reconcile: all before any table is written.  A write that commits another number of rows
    than counted fails too, after it, and leaves ``ingest_log`` as it was.
    """
    source = config.ingest.source
    mode = config.ingest.mode
    if not source.inputs:
        raise IngestError(f"source {source.name!r} configures no inputs")
    check_timestamp_format(spark, source)
    files = list_input_files(spark, source.inputs)
    incremental = mode == "incremental" and lake.exists(INGEST_LOG)
    # Overlapping incremental runs: both commits below carry this app's Delta transaction id
    # and land only on top of the versions read here (compare-and-swap), so a run that another
    # run overtook fails with a clear message instead of appending the same events twice.
    log_txn = (lake.txn_version(INGEST_LOG, INGEST_APP) or 0) if incremental else 0
    if incremental:
        files = unseen_files(files, logged_versions(lake.read(INGEST_LOG)))
        log.info("incremental ingest: %d new or changed files", len(files))
        if not files:
            counts = IngestCounts(input_rows=0, kept=0, duplicates_removed=0, quarantined=0)
            log.info("no new input files; %s", counts.summary())
            return counts
    collapse = source.collapse_mapped_duplicates
    normalised, read = _normalised(spark, config, files, only_files=incremental)
    if incremental:  # read twice: the batch's ids find the events it may repeat
        normalised = normalised.persist(StorageLevel.MEMORY_AND_DISK)
    labelled = reread = None
    try:
        # The input is counted on the rows read, in a pass of its own that parses nothing ...
        counted = tally(read)
        events_txn = (lake.txn_version(EVENTS, INGEST_APP) or 0) if incremental else 0
        existing = _existing_events(lake, normalised, collapse=collapse) if incremental else None
        # ... and every other term on the labelled rows (the one cached frame), before
        # anything is written.
        labelled = label_duplicates(normalised, existing=existing, collapse=collapse)
        labelled = labelled.persist(StorageLevel.MEMORY_AND_DISK)
        labels = count_labels(labelled)
        normalised.unpersist()
        ambiguous = count_ambiguous(labelled, config.ingest.source)
        if ambiguous:
            log.info("%d ambiguous local times resolved as %s", ambiguous, AMBIGUOUS_RULE)
        counts = counted.counts(labels, collapse=collapse)
        for reason, n in counts.quarantine_reasons.items():
            log.info("quarantined %d rows: %s", n, reason)
        log.info(counts.summary())
        # Both before the first commit: a failed check leaves every table as it was.
        counts.check()
        check_something_kept(counts, source)
        # Positions are final once resolved on the cached rows (read_raw, resolve_positions).
        resolved = resolve_positions(labelled).withColumn(SOURCE_ORDER, source_order())
        quarantined_rows, reread = _quarantined(spark, config, files, resolved, labels)
        quarantined_rows = quarantined_rows.transform(to_quarantine, run_id=run_id)
        new_events = kept_events(resolved).transform(to_events, run_id=run_id)
        if incremental:
            # events first: its commit is the one that decides between overlapping runs.
            events = _guarded(lake.append, EVENTS, new_events, Txn(INGEST_APP, events_txn + 1))
            quarantine = _append_quarantine(lake, quarantined_rows, [f.path for f in files])
        else:
            quarantine = lake.overwrite(EVENTS_QUARANTINE, quarantined_rows)
            events = lake.overwrite(EVENTS, new_events)
    finally:
        for cached in (normalised, labelled, reread):
            if cached is not None:
                cached.unpersist()
    check_written(EVENTS_QUARANTINE, expected=counts.quarantined, written=quarantine.rows_written)
    check_written(EVENTS, expected=counts.kept, written=events.rows_written)
    # Last, so that a run killed before this point is redone by the next incremental run.
    per_file = counted.per_file(labels)
    ingest_log = to_ingest_log(spark, files, per_file, run_id=run_id, mode=mode)
    if incremental:
        _guarded(lake.append, INGEST_LOG, ingest_log, Txn(INGEST_APP, log_txn + 1))
    else:
        lake.overwrite(INGEST_LOG, ingest_log)
    return counts


def _normalised(
    spark: SparkSession,
    config: AppConfig,
    files: Sequence[InputFile],
    *,
    only_files: bool,
    keep_raw: bool = False,
) -> tuple[DataFrame, DataFrame]:
    """Every input's records normalised (lookups applied), and the rows read (their file and
    element index, before lookups, for :func:`jobs.sources.accounting.tally`); with ``only_files``
    (incremental runs) only ``files`` are read, otherwise every configured path.
    ``keep_raw``: valid rows keep their raw record too."""
    source = config.ingest.source
    lookups = [(spec, read_lookup(spark, spec)) for spec in source.lookups]
    parts, read = [], []
    for index, spec in enumerate(source.inputs):
        chosen = tuple(f.path for f in files if f.spec_index == index)
        if only_files and not chosen:
            continue
        read_spec = dataclasses.replace(spec, paths=chosen) if only_files else spec
        raw = read_raw(spark, read_spec, allow_empty=only_files, order_by=source.order_by)
        # privacy: pseudonymises user_id when privacy.pseudonymize_user_id is on.
        part = normalise(raw, spec=spec, source=source, privacy=config.privacy, keep_raw=keep_raw)
        parts.append(part)
        # Counting these two columns reads the files but maps nothing (Spark prunes the rest).
        read.append(part.select(SOURCE_FILE, ELEMENT))
    normalised = reduce(DataFrame.unionByName, parts)
    if lookups:
        normalised = apply_lookups(normalised, lookups)
    return normalised, reduce(DataFrame.unionByName, read)


def _existing_events(lake: Lake, normalised: DataFrame, *, collapse: bool) -> DataFrame | None:
    """The ``events`` rows that new records may repeat: those sharing an event id with one of
    them (on any date: a conflicting record may carry another time) and, when collapsing,
    every event on the dates they fall on.  One small action finds the dates to read."""
    if not lake.exists(EVENTS):
        return None
    valid = valid_rows(normalised)
    ids = valid.select("event_id").distinct()
    events = lake.read(EVENTS)
    repeated = events.select("event_id", "event_date").join(ids, "event_id", "left_semi")
    dates = {r[0] for r in repeated.select("event_date").distinct().collect()}
    if collapse:
        dates |= {r[0] for r in valid.select(F.to_date("event_ts")).distinct().collect()}
    if not dates:
        return None
    existing = events.where(F.col("event_date").isin(sorted(dates)))
    return existing if collapse else existing.join(ids, "event_id", "left_semi")


def _quarantined(
    spark: SparkSession,
    config: AppConfig,
    files: Sequence[InputFile],
    labelled: DataFrame,
    labels: Labels,
) -> tuple[DataFrame, DataFrame | None]:
    """The labelled rows (positions resolved) to quarantine, each with its raw record, and the
    frame cached to find them (for the caller to unpersist after the writes), if any.

    Valid rows carry no raw record (it would ride through the cache and the shuffles for
    nothing), so records quarantined as :data:`CONFLICTING_EVENT_ID` get theirs back by
    reading again the files that hold them and matching (file, position, element).  A record
    that is no longer there (its file changed meanwhile) is stored as its mapped columns in
    JSON instead.
    """
    rows = labelled.where(F.col(REASON).isNotNull())
    if not labels.reasons.get(CONFLICTING_EVENT_ID):
        return rows, None
    keys = [SOURCE_FILE, POSITION, ELEMENT]
    conflicts = rows.where(F.col(REASON) == CONFLICTING_EVENT_ID)
    paths = {r[0] for r in conflicts.select(SOURCE_FILE).distinct().collect()}
    holding = [f for f in files if f.path in paths]
    reread, _ = _normalised(spark, config, holding, only_files=True, keep_raw=True)
    # Cached, so that positions are resolved on the same read as the rows they select.
    reread = reread.select(*keys, SPLIT_START, RAW).persist(StorageLevel.MEMORY_AND_DISK)
    records = (
        resolve_positions(reread)
        .select(*keys, F.col(RAW).alias("__record"))
        .join(F.broadcast(conflicts.select(*keys)), keys, "left_semi")
    )
    mapped = F.to_json(F.struct("event_id", *CONTENT_COLUMNS))
    restored = conflicts.join(records, keys, "left").withColumn(
        RAW, F.coalesce(F.col("__record"), mapped)
    )
    others = rows.where(F.col(REASON) != CONFLICTING_EVENT_ID)
    return others.unionByName(restored.drop("__record")), reread


def _guarded(write: Callable[..., WriteResult], table: str, df: DataFrame, txn: Txn) -> WriteResult:
    """``write(table, df, txn=txn)``; a concurrent ingest run that committed first becomes an
    :class:`IngestError` saying what happened and what to do."""
    try:
        return write(table, df, txn=txn)
    except ConcurrentWriteError as exc:
        raise IngestError(
            f"a concurrent ingest run committed to {table} while this one ran ({exc}); "
            "rerun ingest once it has finished: files it logged are skipped, the rest are read"
        ) from exc


def _append_quarantine(lake: Lake, rows: DataFrame, files: Sequence[str]) -> WriteResult:
    """Append quarantined rows; rows an earlier, interrupted run left for the same files are
    replaced in the same commit so that a retry never repeats them."""
    if lake.exists(EVENTS_QUARANTINE):
        current = lake.read(EVENTS_QUARANTINE)
        stale = current.where(F.col("source_file").isin(list(files)))
        if stale.limit(1).count():
            log.info("replacing quarantine rows an interrupted run left for these files")
            kept = current.where(~F.col("source_file").isin(list(files)))
            result = lake.overwrite(EVENTS_QUARANTINE, kept.unionByName(rows))
            new_rows = result.rows_written - kept.count()
            return dataclasses.replace(result, rows_written=new_rows)
    return lake.append(EVENTS_QUARANTINE, rows)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/ingest.py --conf conf/local.yaml``."""
    return run_stage("ingest", argv)


if __name__ == "__main__":
    sys.exit(main())
