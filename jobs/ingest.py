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
from collections.abc import Sequence
from functools import reduce

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.core.config import AppConfig
from jobs.core.lake import Lake, WriteResult
from jobs.core.tables import EVENTS, EVENTS_QUARANTINE, INGEST_LOG
from jobs.runner import run_stage
from jobs.sources.accounting import IngestCounts, tally
from jobs.sources.dedup import deduplicate, drop_already_ingested
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
from jobs.sources.readers import read_lookup, read_raw

# IngestError is re-exported: callers catch ``jobs.ingest.IngestError``.
__all__ = ["IngestCounts", "IngestError", "main", "run"]

log = logging.getLogger(__name__)


@names_unreadable_files
def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> IngestCounts:
    """Read the configured inputs and write ``events``, ``events_quarantine`` and ``ingest_log``.

    ``ingest.mode=full`` replaces ``events`` and ``events_quarantine`` as a whole from every
    configured file, so a rerun over the same input leaves identical tables.

    ``ingest.mode=incremental`` reads only files that ``ingest_log`` does not list with the same
    size and modification time, appends the events not already in ``events`` (same id or same
    content) and their quarantined records.  ``ingest_log`` is written last: a run killed before
    it leaves the files unlisted, so the next run reads them again; their events are then found
    in ``events`` and counted as duplicates, and their quarantine rows are replaced, not repeated.

    Raises :class:`IngestError` when the input cannot be ingested (no inputs, a missing path, an
    unusable mapping, a file Spark cannot read, no records in a full run) or when the row
    accounting does not reconcile; ``ingest_log`` is then left as it was.
    """
    source = config.ingest.source
    mode = config.ingest.mode
    if not source.inputs:
        raise IngestError(f"source {source.name!r} configures no inputs")
    files = list_input_files(spark, source.inputs)
    incremental = mode == "incremental" and lake.exists(INGEST_LOG)
    if incremental:
        files = unseen_files(files, logged_versions(lake.read(INGEST_LOG)))
        log.info("incremental ingest: %d new or changed files", len(files))
        if not files:
            counts = IngestCounts(input_rows=0, kept=0, duplicates_removed=0, quarantined=0)
            log.info("no new input files; %s", counts.summary())
            return counts
    normalised = _normalised(spark, config, files, incremental=incremental)
    normalised = normalised.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counted = tally(normalised)
        quarantined_rows = to_quarantine(normalised, run_id=run_id)
        batch = valid_rows(normalised).transform(deduplicate)
        if incremental:
            quarantine = _append_quarantine(lake, quarantined_rows, [f.path for f in files])
            batch = _not_yet_ingested(lake, batch)
            events = lake.append(EVENTS, batch.transform(to_events, run_id=run_id))
        else:
            quarantine = lake.overwrite(EVENTS_QUARANTINE, quarantined_rows)
            events = lake.overwrite(EVENTS, batch.transform(to_events, run_id=run_id))
    finally:
        normalised.unpersist()
    counts = counted.counts(kept=events.rows_written, quarantined=quarantine.rows_written)
    for reason, n in counts.quarantine_reasons.items():
        log.info("quarantined %d rows: %s", n, reason)
    log.info(counts.summary())
    counts.check()
    # Last, so that a run killed before this point is redone by the next incremental run.
    ingest_log = to_ingest_log(spark, files, counted.by_file, run_id=run_id, mode=mode)
    if incremental:
        lake.append(INGEST_LOG, ingest_log)
    else:
        lake.overwrite(INGEST_LOG, ingest_log)
    return counts


def _normalised(
    spark: SparkSession, config: AppConfig, files: Sequence[InputFile], *, incremental: bool
) -> DataFrame:
    """Every input's records normalised (lookups applied); incremental runs read ``files``
    only, full runs every configured path."""
    source = config.ingest.source
    lookups = [(spec, read_lookup(spark, spec)) for spec in source.lookups]
    parts = []
    for index, spec in enumerate(source.inputs):
        chosen = tuple(f.path for f in files if f.spec_index == index)
        if incremental and not chosen:
            continue
        read_spec = dataclasses.replace(spec, paths=chosen) if incremental else spec
        # privacy: pseudonymises user_id when privacy.pseudonymize_user_id is on.
        raw = read_raw(spark, read_spec, allow_empty=incremental)
        parts.append(normalise(raw, spec=spec, source=source, privacy=config.privacy))
    normalised = reduce(DataFrame.unionByName, parts)
    if lookups:
        normalised = apply_lookups(normalised, lookups)
    return normalised


def _not_yet_ingested(lake: Lake, batch: DataFrame) -> DataFrame:
    """The deduplicated ``batch`` less the events ``events`` already holds (same id or same
    content), compared within the event_date partitions the batch touches."""
    if not lake.exists(EVENTS):
        return batch
    dates = [r["d"] for r in batch.select(F.to_date("event_ts").alias("d")).distinct().collect()]
    existing = lake.read(EVENTS).where(F.col("event_date").isin(dates))
    return batch.transform(drop_already_ingested, existing=existing)


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
