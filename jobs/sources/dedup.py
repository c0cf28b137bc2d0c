"""Deduplication: within a batch (by id, then by content) and against ``events`` already written."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.sources.columns import CONTENT_COLUMNS


def content_hash(*columns: str) -> Column:
    """A deterministic 128-bit digest of the given columns: 32 lowercase hex characters (the
    first half of a SHA-256 over the values as text; a null is distinct from '')."""
    parts = [F.coalesce(F.col(c).cast("string"), F.lit("\u0000")) for c in columns]
    return F.substring(F.sha2(F.concat_ws("\u001f", *parts), 256), 1, 32)


def deduplicate(valid: DataFrame) -> DataFrame:
    """Remove duplicate events deterministically.

    ``valid`` holds normalised rows that passed every check.  First by ``event_id`` (a missing
    source id becomes the :func:`content_hash` of the normalised record), keeping the smallest
    record; then records whose normalised content is identical under different ids, keeping the
    smallest id.  Output: one row per event, the content columns then ``event_id`` (the
    ``events`` columns without the partition and run columns).
    """
    with_id = valid.withColumn(
        "event_id", F.coalesce(F.col("event_id"), content_hash(*CONTENT_COLUMNS))
    )
    by_id = (
        with_id.groupBy("event_id")
        .agg(F.min(F.struct(*CONTENT_COLUMNS)).alias("r"))
        .select("event_id", *[F.col(f"r.{c}").alias(c) for c in CONTENT_COLUMNS])
    )
    return by_id.groupBy(*CONTENT_COLUMNS).agg(F.min("event_id").alias("event_id"))


def drop_already_ingested(batch: DataFrame, *, existing: DataFrame) -> DataFrame:
    """Remove rows of a deduplicated batch that ``existing`` events already hold: the same
    ``event_id``, or the same normalised content under another id (incremental ingest).

    Pass as ``existing`` the event_date partitions the batch touches: identical content means an
    identical ``event_ts``, hence the same partition, so the content check needs no others.
    Same columns as ``batch``.
    """
    by_id = batch.join(existing.select("event_id"), "event_id", "left_anti")
    hashed = existing.select(content_hash(*CONTENT_COLUMNS).alias("__content"))
    return (
        by_id.withColumn("__content", content_hash(*CONTENT_COLUMNS))
        .join(hashed, "__content", "left_anti")
        .drop("__content")
    )
