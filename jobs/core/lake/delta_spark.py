"""The ``spark`` engine: Spark's own Delta data source (delta-spark).

Used on Databricks and on clusters started with the Delta jars; supports metastore / Unity
Catalog table names as well as paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession

from jobs.core.lake.base import ConcurrentWriteError, TableLocation, Txn, WriteResult
from jobs.core.lake.paths import require_path


def delta_spark_available(spark: SparkSession) -> tuple[bool, str]:
    """Whether this session can use Delta through Spark, and a human-readable reason."""
    jvm = getattr(getattr(spark, "sparkContext", None), "_jvm", None) if _has_jvm(spark) else None
    if jvm is None:
        # Spark Connect (Databricks serverless, DBR shared clusters) exposes no JVM; those
        # platforms ship Delta as their default table format.
        return True, "Spark Connect session: Delta is the platform's native format"
    try:
        jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension")
    except Exception:
        return False, "Delta jars are not on the session's classpath"
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "DeltaSparkSessionExtension" not in extensions:
        return False, "Delta jars present but spark.sql.extensions lacks DeltaSparkSessionExtension"
    return True, "Delta data source and session extension are loaded"


def _has_jvm(spark: SparkSession) -> bool:
    try:
        return spark.sparkContext is not None
    except Exception:  # Spark Connect raises on sparkContext access
        return False


def write(
    spark: SparkSession,
    loc: TableLocation,
    df: DataFrame,
    *,
    mode: str,
    partitions: Mapping[str, Sequence[str | None]] | None,
    txn: Txn | None = None,
) -> WriteResult:
    """One commit through Spark's Delta writer.  ``txn`` becomes the writer's ``txnAppId`` /
    ``txnVersion`` (idempotent writes: Delta skips a version it already has, and concurrent
    commits of one app id conflict, raised as :class:`ConcurrentWriteError`)."""
    writer = df.write.format("delta").mode(mode)
    if txn is not None:
        writer = writer.option("txnAppId", txn.app_id).option("txnVersion", str(txn.version))
    if loc.partition_by:
        writer = writer.partitionBy(*loc.partition_by)
    if partitions is not None:
        writer = writer.option("replaceWhere", _sql_predicate(partitions))
    try:
        if loc.name:
            if loc.path:
                writer = writer.option("path", loc.path)
            writer.saveAsTable(loc.name)
            target = loc.name
        else:
            writer.save(require_path(loc))
            target = f"delta.`{loc.path}`"
    except Exception as exc:
        if "Concurrent" in type(exc).__name__ or "CONCURRENT" in str(exc)[:200].upper():
            raise ConcurrentWriteError(
                f"{loc.table}: a concurrent writer committed first ({str(exc)[:300]}); "
                "nothing was written by this run"
            ) from exc
        raise
    last = spark.sql(f"DESCRIBE HISTORY {target} LIMIT 1").collect()[0]
    metrics = last["operationMetrics"] or {}
    return WriteResult(
        table=loc.table,
        location=loc.describe(),
        version=int(last["version"]),
        rows_written=int(metrics.get("numOutputRows", 0)),
        files_added=int(metrics.get("numFiles", metrics.get("numAddedFiles", 0))),
    )


def _sql_predicate(partitions: Mapping[str, Sequence[str | None]]) -> str:
    clauses = []
    for col, values in partitions.items():
        present = [v for v in values if v is not None]
        parts = []
        if present:
            quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in present)
            parts.append(f"`{col}` IN ({quoted})")
        if len(present) != len(values):
            parts.append(f"`{col}` IS NULL")
        clauses.append("(" + " OR ".join(parts) + ")")
    return " AND ".join(clauses)
