"""Row accounting: every input record is kept, removed as a duplicate, or quarantined.

The ingest stage checks ``input = kept + duplicates + quarantined`` before it reports success.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pyspark.sql import DataFrame

from jobs.sources.columns import REASON, SOURCE_FILE
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

    @property
    def reconciles(self) -> bool:
        return self.input_rows == self.kept + self.duplicates_removed + self.quarantined

    def summary(self) -> str:
        """The reconciliation line: ``reconciliation OK: input N = kept K + duplicates D +
        quarantined Q`` (``MISMATCH`` when the counts do not add up)."""
        verdict = "OK" if self.reconciles else "MISMATCH"
        return (
            f"reconciliation {verdict}: input {self.input_rows:,} = kept {self.kept:,} + "
            f"duplicates {self.duplicates_removed:,} + quarantined {self.quarantined:,}"
        )

    def check(self) -> None:
        """Raise :class:`IngestError` unless the counts reconcile and the quarantined rows
        equal the sum over the reasons."""
        if not self.reconciles or self.quarantined != sum(self.quarantine_reasons.values()):
            raise IngestError(f"row accounting failed: {self.summary()}")


@dataclass(frozen=True)
class Tally:
    """Normalised rows counted by quarantine reason and by source file, before deduplication."""

    #: Rows per reason; the key None counts the valid rows.
    by_reason: Mapping[str | None, int]
    #: Per source file: (input rows, quarantined rows).
    by_file: Mapping[str, tuple[int, int]]

    @property
    def input_rows(self) -> int:
        return sum(self.by_reason.values())

    @property
    def valid(self) -> int:
        return self.by_reason.get(None, 0)

    @property
    def reasons(self) -> dict[str, int]:
        """Quarantined rows per reason, largest first."""
        reasons = {k: v for k, v in self.by_reason.items() if k is not None}
        return dict(sorted(reasons.items(), key=lambda kv: -kv[1]))

    def counts(self, *, kept: int, quarantined: int) -> IngestCounts:
        """The run's :class:`IngestCounts`, given the rows written to ``events`` and to the
        quarantine; every valid row not kept is a duplicate."""
        return IngestCounts(
            input_rows=self.input_rows,
            kept=kept,
            duplicates_removed=self.valid - kept,
            quarantined=quarantined,
            quarantine_reasons=self.reasons,
        )


def tally(normalised: DataFrame) -> Tally:
    """Count a :func:`jobs.sources.mapping.normalise` result by reason and source file (one
    Spark action; the counts come back to the driver)."""
    by_reason: dict[str | None, int] = {}
    by_file: dict[str, tuple[int, int]] = {}
    for row in normalised.groupBy(SOURCE_FILE, REASON).count().collect():
        n, reason, path = int(row["count"]), row[REASON], row[SOURCE_FILE]
        by_reason[reason] = by_reason.get(reason, 0) + n
        total, bad = by_file.get(path, (0, 0))
        by_file[path] = (total + n, bad + (n if reason is not None else 0))
    return Tally(by_reason, by_file)
