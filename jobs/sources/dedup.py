"""Deduplication: which valid records are events, duplicates, conflicts or collapsed events.

What counts as the same event (README, "Bring your own log"):

* A record with a source event id is the same event as an earlier record with that id and the
  same normalised content (every mapped column): a **duplicate**.  The same id with other
  content is a **conflict**: the first record in source order is kept and the others are
  quarantined with the reason :data:`CONFLICTING_EVENT_ID`, never dropped.
* A record without one gets the hash of its raw record as id
  (:func:`jobs.sources.mapping.record_hash`), so only an identical record (the same line, CSV
  row or Parquet row) is a duplicate; records that differ in any raw field are distinct events
  even when every mapped column coincides.
* Optionally (``ingest.source.collapse_mapped_duplicates``) kept events equal on every mapped
  column are **collapsed** into the first in source order, and counted apart.

Source order is the file path, then the record's order within the file (:func:`source_order`).
Every row is labelled in one pass (window functions over one ``event_id`` partitioning; a second
one over the content only when collapsing), so the accounting counts labels rather than
inferring duplicates as a remainder, and the input is read once.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from jobs.sources.columns import (
    CONTENT_COLUMNS,
    ELEMENT,
    ELEMENTS_PER_RECORD,
    LABEL,
    ORDER_VALUE,
    POSITION,
    REASON,
    SOURCE_FILE,
    SPLIT_START,
)

#: Labels (:data:`jobs.sources.columns.LABEL`): the row becomes an ``events`` row ...
KEPT = "kept"
#: ... repeats an event (the same raw record, or the same source id and content) ...
DUPLICATE = "duplicate"
#: ... equals an event on every mapped column (only with ``collapse_mapped_duplicates``) ...
COLLAPSED = "collapsed"
#: ... or goes to ``events_quarantine`` (a failed check, or a conflicting event id).
QUARANTINED = "quarantined"
LABELS = (KEPT, DUPLICATE, COLLAPSED, QUARANTINED)
#: The quarantine reason of a record whose source id an event with other content already has.
CONFLICTING_EVENT_ID = "conflicting event_id"

_EXISTING = "__existing"
_CONFLICT = "conflict"


def source_order() -> Column:
    """A row's order within its file (long, ``events.source_order``): ``__order_value``
    (``ingest.source.order_by``) when set, else ``position x 65536 + element`` (file order);
    positions must be resolved (:func:`jobs.sources.readers.resolve_positions`)."""
    file_order = F.col(POSITION) * F.lit(ELEMENTS_PER_RECORD) + F.col(ELEMENT)
    return F.coalesce(F.col(ORDER_VALUE), file_order).cast("long")


def label_duplicates(
    rows: DataFrame, *, existing: DataFrame | None = None, collapse: bool = False
) -> DataFrame:
    """Label every row of a normalised batch: ``rows`` plus ``__label``.

    ``rows`` is a :func:`jobs.sources.mapping.normalise` result, valid and quarantined rows
    alike; every valid row has an ``event_id``.  Its positions may be
    :func:`jobs.sources.readers.read_raw`'s provisional ones: within one read they order a
    file's rows as the final ones do.  Rows with a reason stay :data:`QUARANTINED`.  Among
    valid rows sharing an ``event_id``, the first in source order (file path, then
    ``__order_value`` when set, then the position in the file) is :data:`KEPT`; a later one with
    the same content is a :data:`DUPLICATE`; one with other content is :data:`QUARANTINED` with
    the reason :data:`CONFLICTING_EVENT_ID` (its ``__raw`` is whatever ``rows`` held).  With
    ``collapse``, a kept row equal to an earlier kept one on every content column becomes
    :data:`COLLAPSED`.

    ``existing`` (incremental runs) holds ``events`` rows that new rows may repeat; they come
    first in source order, so a new row repeating one is a duplicate (or a conflict, or
    collapsed), and they are not part of the result.  Same rows as ``rows``: every row passes
    one window (a quarantined row alone in its group), so ``rows`` is read once.
    """
    columns = rows.columns
    for name, dtype in ((SPLIT_START, "long"), (ORDER_VALUE, "long"), (ELEMENT, "int")):
        if name not in columns:
            rows = rows.withColumn(name, F.lit(None).cast(dtype))
    rows = rows.withColumn(_EXISTING, F.lit(False))
    if existing is not None:
        earlier = existing.select(
            "event_id",
            *CONTENT_COLUMNS,
            F.col("source_file").alias(SOURCE_FILE),
            # Sorted first anyway; among themselves in their own source order.
            F.col("source_order").alias(ORDER_VALUE),
            F.lit(True).alias(_EXISTING),
        )
        rows = rows.unionByName(earlier, allowMissingColumns=True)
    valid = F.col(REASON).isNull()
    # A quarantined row is a group of its own (its file and position are unique).
    alone = F.concat_ws("/", SOURCE_FILE, SPLIT_START, POSITION, ELEMENT)
    key = F.when(valid, F.col("event_id")).otherwise(alone)
    first_in_order = [
        F.col(_EXISTING).desc(),
        *[F.col(c) for c in (SOURCE_FILE, ORDER_VALUE, SPLIT_START, POSITION, ELEMENT)],
    ]
    by_id = Window.partitionBy(key).orderBy(*first_in_order)
    # Column by column against the group's first row: a struct of the content columns as the
    # window's input would be built before the shuffle and ship every row's content twice.
    same_content = reduce(
        Column.__and__, [F.col(c).eqNullSafe(F.first(c).over(by_id)) for c in CONTENT_COLUMNS]
    )
    label = (
        F.when(~valid, F.lit(QUARANTINED))
        .when(F.row_number().over(by_id) == 1, F.lit(KEPT))
        .when(same_content, F.lit(DUPLICATE))
        .otherwise(F.lit(_CONFLICT))
    )
    labelled = rows.withColumn(LABEL, label)
    if collapse:
        kept = F.col(LABEL) == KEPT
        content = F.struct(*CONTENT_COLUMNS)
        by_content = Window.partitionBy(F.when(kept, content), F.when(~kept, key)).orderBy(
            *first_in_order
        )
        later = kept & (F.row_number().over(by_content) > 1)
        labelled = labelled.withColumn(
            LABEL, F.when(later, F.lit(COLLAPSED)).otherwise(F.col(LABEL))
        )
    conflict = F.col(LABEL) == _CONFLICT
    return labelled.where(~F.col(_EXISTING)).select(
        *[
            F.when(conflict, F.lit(CONFLICTING_EVENT_ID)).otherwise(F.col(c)).alias(c)
            if c == REASON
            else F.col(c)
            for c in columns
        ],
        F.when(conflict, F.lit(QUARANTINED)).otherwise(F.col(LABEL)).alias(LABEL),
    )


def kept_events(labelled: DataFrame) -> DataFrame:
    """The :data:`KEPT` rows of a :func:`label_duplicates` result (the new ``events`` rows)."""
    return labelled.where(F.col(LABEL) == KEPT)
