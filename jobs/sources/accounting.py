"""Row accounting: every input record is kept, removed as a duplicate, or quarantined.

The ingest stage checks ``input = kept + duplicates + quarantined`` (``+ collapsed`` with
``ingest.source.collapse_mapped_duplicates``) before it commits anything: the input is counted
on the rows read (:func:`tally`, a pass of its own over the raw files), every other term on the
labelled rows (:func:`count_labels`), so a step that lost or invented a row fails the check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.core.config import SourceConfig
from jobs.sources.columns import ELEMENT, LABEL, REASON, SOURCE_FILE
from jobs.sources.dedup import COLLAPSED, DUPLICATE, KEPT, QUARANTINED
from jobs.sources.errors import IngestError


@dataclass(frozen=True)
class IngestCounts:
    """Where every input record went (the ingest stage's result); ``reconciles`` is the stage's
    accounting check and ``quarantine_reasons`` maps each reason to its rows, largest first."""

    input_rows: int
    kept: int
    duplicates_removed: int
    quarantined: int
    quarantine_reasons: Mapping[str, int] = field(default_factory=dict)
    #: Events collapsed into an identical one (``collapse_mapped_duplicates``); None when off.
    collapsed: int | None = None
    #: Records read (JSON lines, CSV records, Parquet rows).  ``input_rows`` counts the events
    #: they produced: more when an input explodes a record's array into one event per element
    #: (``ingest.source.inputs[].explode``).  None: not counted apart (the same number).
    records_read: int | None = None

    @property
    def reconciles(self) -> bool:
        removed = self.duplicates_removed + self.quarantined + (self.collapsed or 0)
        return self.input_rows == self.kept + removed

    def summary(self) -> str:
        """The reconciliation line: ``reconciliation OK: input N = kept K + duplicates D +
        quarantined Q`` (`` + collapsed C`` when collapsing is on; ``MISMATCH`` when the counts
        do not add up)."""
        verdict = "OK" if self.reconciles else "MISMATCH"
        collapsed = "" if self.collapsed is None else f" + collapsed {self.collapsed:,}"
        records = ""
        if self.records_read is not None and self.records_read != self.input_rows:
            records = f"; records read {self.records_read:,}, events produced {self.input_rows:,}"
        return (
            f"reconciliation {verdict}: input {self.input_rows:,} = kept {self.kept:,} + "
            f"duplicates {self.duplicates_removed:,} + quarantined {self.quarantined:,}"
            f"{collapsed}{records}"
        )

    def check(self) -> None:
        """Raise :class:`IngestError` unless the counts reconcile, the quarantined rows
        equal the sum over the reasons, and every record read produced at least one event
        (a record with nothing to explode is one quarantined row)."""
        lost_records = self.records_read is not None and self.records_read > self.input_rows
        if (
            not self.reconciles
            or self.quarantined != sum(self.quarantine_reasons.values())
            or lost_records
        ):
            raise IngestError(f"row accounting failed: {self.summary()}")


@dataclass(frozen=True)
class Tally:
    """Rows read per source file, counted apart from deduplication."""

    #: Rows per source file.
    by_file: Mapping[str, int]
    #: Records read: rows with element index 0 (each record has one; ``IngestCounts``).
    records_read: int | None = None

    @property
    def input_rows(self) -> int:
        return sum(self.by_file.values())

    def counts(self, labels: Labels, *, collapse: bool = False) -> IngestCounts:
        """The run's :class:`IngestCounts`: the input counted here, every other term counted
        on the labelled rows (``collapsed`` reported only when ``collapse`` is on, so a
        collapsed row without it breaks the reconciliation)."""
        return IngestCounts(
            input_rows=self.input_rows,
            kept=labels.of(KEPT),
            duplicates_removed=labels.of(DUPLICATE),
            quarantined=labels.of(QUARANTINED),
            quarantine_reasons=labels.reasons,
            collapsed=labels.of(COLLAPSED) if collapse else None,
            records_read=self.records_read,
        )

    def per_file(self, labels: Labels) -> dict[str, tuple[int, int]]:
        """Per source file: (input rows, quarantined rows, conflicts included), for
        ``ingest_log``."""
        return {
            path: (total, labels.quarantined_by_file.get(path, 0))
            for path, total in self.by_file.items()
        }


@dataclass(frozen=True)
class Labels:
    """Labelled rows (:func:`jobs.sources.dedup.label_duplicates`) counted by label, by
    quarantine reason and by file."""

    #: Rows per label (kept, duplicate, collapsed, quarantined).
    by_label: Mapping[str, int]
    #: Quarantined rows per reason (conflicting event ids included), largest first.
    reasons: Mapping[str, int]
    #: Quarantined rows per source file.
    quarantined_by_file: Mapping[str, int]

    def of(self, label: str) -> int:
        return self.by_label.get(label, 0)


def count_labels(labelled: DataFrame) -> Labels:
    """Count a :func:`jobs.sources.dedup.label_duplicates` result by label, reason and file (one
    Spark action)."""
    by_label: dict[str, int] = {}
    reasons: dict[str, int] = {}
    by_file: dict[str, int] = {}
    for row in labelled.groupBy(LABEL, REASON, SOURCE_FILE).count().collect():
        n, label = int(row["count"]), row[LABEL]
        by_label[label] = by_label.get(label, 0) + n
        if row[REASON] is not None:
            reasons[row[REASON]] = reasons.get(row[REASON], 0) + n
        if label == QUARANTINED:
            by_file[row[SOURCE_FILE]] = by_file.get(row[SOURCE_FILE], 0) + n
    ordered = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return Labels(by_label, ordered, by_file)


def check_something_kept(counts: IngestCounts, source: SourceConfig) -> None:
    """Raise :class:`IngestError` when a run keeps no event because every record was
    quarantined or there were none (a run whose records all repeat earlier events is fine):
    the message names the top reasons with their counts and the mapping to check."""
    if counts.kept or counts.duplicates_removed or counts.collapsed:
        return
    top = list(counts.quarantine_reasons.items())[:3]
    found = (
        "top reasons " + ", ".join(f"{reason} ({n:,})" for reason, n in top)
        if top
        else "the input holds no records"
    )
    mappings = "; ".join(
        f"inputs[{i}] ({spec.format} {list(spec.paths)}) maps "
        + ", ".join(f"{column} <- {expr}" for column, expr in spec.columns.items())
        for i, spec in enumerate(source.inputs)
    )
    raise IngestError(
        f"no events kept from {counts.input_rows:,} records: {found}; check the mapping "
        f"ingest.source ({source.name}) in ingest.source.inputs[].columns: {mappings}"
    )


def check_written(table: str, *, expected: int, written: int) -> None:
    """Raise :class:`IngestError` when the engine wrote another number of rows to ``table``
    than the accounting counted for it."""
    if written != expected:
        raise IngestError(
            f"{table}: the write committed {written:,} rows, the row accounting counted "
            f"{expected:,}"
        )


def tally(rows: DataFrame) -> Tally:
    """Count rows read (:func:`jobs.sources.readers.read_raw` results, or anything with their
    ``__source_file`` and ``__element``) by source file, and the records read: rows with
    ``__element`` 0, one per record however many events it produced.  One Spark action, which
    reads only what it counts (no field is parsed unless exploding needs it); the counts come
    back to the driver."""
    first = F.col(ELEMENT) == 0 if ELEMENT in rows.columns else F.lit(True)
    counted = rows.groupBy(SOURCE_FILE).agg(
        F.count(F.lit(1)).alias("count"), F.count(F.when(first, 1)).alias("records")
    )
    by_file: dict[str, int] = {}
    records = 0
    for row in counted.collect():
        by_file[row[SOURCE_FILE]] = int(row["count"])
        records += int(row["records"])
    return Tally(by_file, records_read=records)
