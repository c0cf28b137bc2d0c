"""Normalised rows shaped for the tables ingest writes: ``events`` and ``events_quarantine``.

Column names, types and order come from the contracts in :mod:`jobs.core.tables`
(``docs/tables.md``).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.core.tables import EVENTS, EVENTS_QUARANTINE, contract_of
from jobs.sources.columns import RAW, REASON, SOURCE_FILE, SOURCE_ORDER


def valid_rows(normalised: DataFrame) -> DataFrame:
    """Rows of a :func:`jobs.sources.mapping.normalise` result that passed every check."""
    return normalised.where(F.col(REASON).isNull())


def to_events(deduplicated: DataFrame, *, run_id: str) -> DataFrame:
    """Kept rows of :func:`jobs.sources.dedup.label_duplicates` in the ``events`` contract:
    ``source_file`` and ``source_order`` say where the event came from (the tie order),
    ``event_date`` is the UTC date of ``event_ts`` (the partition) and ``ingest_run_id`` is
    ``run_id``."""
    derived: dict[str, Column] = {
        "source_file": F.col(SOURCE_FILE),
        "source_order": F.col(SOURCE_ORDER),
        "event_date": F.to_date("event_ts"),
        "ingest_run_id": F.lit(run_id),
    }
    return deduplicated.select(
        *[derived.get(c, F.col(c)).alias(c) for c in contract_of(EVENTS).column_names]
    )


def to_quarantine(normalised: DataFrame, *, run_id: str) -> DataFrame:
    """Rows of a :func:`jobs.sources.mapping.normalise` (or
    :func:`jobs.sources.dedup.label_duplicates`) result that have a reason, in the
    ``events_quarantine`` contract (``quarantined_at``: now, ``ingest_run_id``: ``run_id``)."""
    values: dict[str, Column] = {
        "raw": F.col(RAW),
        "reason": F.col(REASON),
        "source_file": F.col(SOURCE_FILE),
        "ingest_run_id": F.lit(run_id),
        "quarantined_at": F.current_timestamp(),
    }
    return normalised.where(F.col(REASON).isNotNull()).select(
        *[values[c].alias(c) for c in contract_of(EVENTS_QUARANTINE).column_names]
    )
