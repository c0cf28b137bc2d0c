"""Table maintenance: ``OPTIMIZE`` (compaction) and ``VACUUM`` (removing unreferenced files).

Both are Delta's own operations, run by the lake's engine: Spark SQL's ``OPTIMIZE`` /
``VACUUM`` on the ``spark`` engine (delta-spark, Databricks), ``DeltaTable.optimize.compact()``
/ ``DeltaTable.vacuum()`` on the ``delta-rs`` engine.  Neither changes a table's contents:
``OPTIMIZE`` rewrites small files into larger ones in a new version (``dataChange=false``), and
``VACUUM`` deletes files no version within the retention period references (Delta Lake docs,
"Remove files no longer referenced by a Delta table"): time travel to versions older than the
retention stops working, so the default keeps Delta's own 7 days.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jobs.core.lake.api import Lake
from jobs.core.lake.base import LakeError
from jobs.core.lake.paths import require_path

log = logging.getLogger("jobs.lake")

#: Delta's default ``delta.deletedFileRetentionDuration``: 7 days.
DEFAULT_RETENTION_HOURS = 168


@dataclass(frozen=True)
class MaintenanceResult:
    """What maintenance did to one table: versions before and after, files removed."""

    table: str
    version_before: int
    version_after: int
    files_compacted: int
    files_vacuumed: int

    def summary(self) -> str:
        return (
            f"{self.table}: v{self.version_before} -> v{self.version_after}, "
            f"{self.files_compacted} files compacted, {self.files_vacuumed} files vacuumed"
        )


def optimize(lake: Lake, table: str) -> int:
    """Compact ``table``'s small files (one new version when anything was rewritten); returns
    the number of files removed by the compaction.  Raises :class:`LakeError` when the table
    does not exist."""
    _require(lake, table)
    loc = lake.location(table)
    if lake.engine == "spark":
        target = loc.name or f"delta.`{require_path(loc)}`"
        rows = lake.spark.sql(f"OPTIMIZE {target}").collect()
        metrics = rows[0]["metrics"] if rows else None
        return int(metrics["numFilesRemoved"]) if metrics is not None else 0
    metrics = _delta_table(lake, table).optimize.compact()
    return int(metrics.get("numFilesRemoved", 0))


def vacuum(lake: Lake, table: str, *, retention_hours: int = DEFAULT_RETENTION_HOURS) -> int:
    """Delete ``table``'s files that no version of the last ``retention_hours`` references;
    returns how many were deleted.  Retentions below Delta's 7 days are refused by Delta's own
    safety check unless the table allows them (``delta.deletedFileRetentionDuration``)."""
    if retention_hours < 0:
        raise LakeError(f"{table}: VACUUM retention must be >= 0 hours, got {retention_hours}")
    _require(lake, table)
    loc = lake.location(table)
    if lake.engine == "spark":
        target = loc.name or f"delta.`{require_path(loc)}`"
        check = "spark.databricks.delta.retentionDurationCheck.enabled"
        previous = lake.spark.conf.get(check, "true")
        if retention_hours < DEFAULT_RETENTION_HOURS:
            lake.spark.conf.set(check, "false")
        try:
            lake.spark.sql(f"VACUUM {target} RETAIN {retention_hours} HOURS").collect()
        finally:
            lake.spark.conf.set(check, str(previous))
        # VACUUM returns only the table's path; its VACUUM END commit counts the deletions.
        last = lake.spark.sql(f"DESCRIBE HISTORY {target} LIMIT 1").collect()[0]
        metrics = last["operationMetrics"] or {}
        return int(metrics.get("numDeletedFiles", 0))
    files = _delta_table(lake, table).vacuum(
        retention_hours=retention_hours,
        dry_run=False,
        enforce_retention_duration=retention_hours >= DEFAULT_RETENTION_HOURS,
    )
    return len(files)


def maintain(lake: Lake, table: str, *, retention_hours: int) -> MaintenanceResult:
    """``OPTIMIZE`` then ``VACUUM`` one table; the contents stay the same (checked by count)."""
    before = lake.version(table)
    rows_before = lake.describe(table).rows
    compacted = optimize(lake, table)
    vacuumed = vacuum(lake, table, retention_hours=retention_hours)
    rows_after = lake.describe(table).rows
    if rows_after != rows_before:
        raise LakeError(f"{table}: maintenance changed the row count {rows_before} -> {rows_after}")
    result = MaintenanceResult(table, before, lake.version(table), compacted, vacuumed)
    log.info("maintenance %s", result.summary())
    return result


def _delta_table(lake: Lake, table: str) -> Any:
    """The table's ``deltalake.DeltaTable``, opened with ``lake.storage_options``."""
    return lake.storage.table(lake.storage.native(lake.location(table)))


def _require(lake: Lake, table: str) -> None:
    if not lake.exists(table):
        raise LakeError(f"{table}: no Delta table at {lake.location(table).describe()}")
