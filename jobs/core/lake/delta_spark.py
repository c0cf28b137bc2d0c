"""The ``spark`` engine: Spark's own Delta data source (delta-spark).

Used on Databricks and on clusters started with the Delta jars; supports metastore / Unity
Catalog table names as well as paths.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from pyspark.sql import DataFrame, SparkSession

from jobs.core.lake.base import ConcurrentWriteError, TableLocation, Txn, WriteResult
from jobs.core.lake.paths import require_path


def delta_spark_available(spark: SparkSession) -> tuple[bool, str]:
    """Whether this session can use Delta through Spark, and a human-readable reason.

    Classic sessions: the Delta classes must be on the JVM classpath and the Delta session
    extension loaded.  Spark Connect sessions (no JVM here): the extension in the session's
    settings, or a Databricks runtime (Delta is its native format), or else a probe the server
    answers: analysing a Delta read of a missing path fails with ``DATA_SOURCE_NOT_FOUND`` when
    the server has no Delta data source, and with a path error when it has one.
    """
    # Classic sessions only (compatibility shim: the JVM through py4j).
    jvm = getattr(getattr(spark, "sparkContext", None), "_jvm", None) if _has_jvm(spark) else None
    if jvm is None:
        return _connect_delta_available(spark)
    try:
        # Jars from spark.jars.packages / --packages live in Spark's context class loader.
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass("io.delta.sql.DeltaSparkSessionExtension")
    except Exception:
        return False, "Delta jars are not on the session's classpath"
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "DeltaSparkSessionExtension" not in extensions:
        return False, "Delta jars present but spark.sql.extensions lacks DeltaSparkSessionExtension"
    return True, "Delta data source and session extension are loaded"


def _connect_delta_available(spark: SparkSession) -> tuple[bool, str]:
    try:
        extensions = spark.conf.get("spark.sql.extensions", "") or ""
    except Exception:  # a platform may hide static settings from Connect clients
        extensions = ""
    if "DeltaSparkSessionExtension" in extensions:
        return True, "Spark Connect session with the Delta session extension"
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return True, "Spark Connect session on Databricks: Delta is the platform's native format"
    if _is_local_server(spark):
        # A local Connect server was started with this process's settings: no extension, no
        # Delta (probing would only log the server's error).
        return False, "local Spark Connect server without the Delta jars and extension"
    missing = f"/nonexistent-delta-probe-{uuid.uuid4().hex}"
    try:
        spark.read.format("delta").load(missing).schema  # noqa: B018 - analysis is the probe
    except Exception as exc:
        text = str(exc)[:1000]
        if "DATA_SOURCE_NOT_FOUND" in text:
            return False, "the Spark Connect server has no Delta data source"
        # With Delta, analysing a missing path fails as a missing Delta table or path.
        if any(mark in text for mark in _MISSING_PATH_ERRORS):
            return True, "the Spark Connect server resolves the Delta data source"
        return False, f"the Delta probe of the Spark Connect server failed: {text[:200]}"
    return True, "the Spark Connect server resolves the Delta data source"


#: Error classes of a Delta read of a path that does not exist (Delta present).
_MISSING_PATH_ERRORS = (
    "DELTA_MISSING_DELTA_TABLE",
    "DELTA_PATH_DOES_NOT_EXIST",
    "PATH_NOT_FOUND",
    "is not a Delta table",
    "doesn't exist",
)


def _is_local_server(spark: SparkSession) -> bool:
    """A Connect server this process started (``spark.remote: local[N]``).  Compatibility
    shim: pyspark keeps that server's classic session in ``_instantiatedSession``."""
    from pyspark.sql import SparkSession as ClassicSession

    server = getattr(ClassicSession, "_instantiatedSession", None)
    return server is not None and server is not spark and getattr(server, "_sc", None) is not None


def _has_jvm(spark: SparkSession) -> bool:
    if type(spark).__module__.startswith("pyspark.sql.connect"):
        return False
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
    with _conflicts_raised(loc):
        if loc.name:
            if loc.path:
                writer = writer.option("path", loc.path)
            writer.saveAsTable(loc.name)
            target = loc.name
        else:
            writer.save(require_path(loc))
            target = f"delta.`{loc.path}`"
    last = spark.sql(f"DESCRIBE HISTORY {target} LIMIT 1").collect()[0]
    metrics = last["operationMetrics"] or {}
    return WriteResult(
        table=loc.table,
        location=loc.describe(),
        version=int(last["version"]),
        rows_written=int(metrics.get("numOutputRows", 0)),
        files_added=int(metrics.get("numFiles", metrics.get("numAddedFiles", 0))),
    )


@contextmanager
def _conflicts_raised(loc: TableLocation) -> Iterator[None]:
    """Delta's concurrent-modification errors as :class:`ConcurrentWriteError` naming the table."""
    try:
        yield
    except Exception as exc:
        if "Concurrent" in type(exc).__name__ or "CONCURRENT" in str(exc)[:200].upper():
            raise ConcurrentWriteError(
                f"{loc.table}: a concurrent writer committed first ({str(exc)[:300]}); "
                "nothing was written by this run"
            ) from exc
        raise


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


def merge(
    spark: SparkSession,
    loc: TableLocation,
    source: DataFrame,
    *,
    keys: Sequence[str],
    update_if: str | None,
    delete_unmatched_in: str | None,
) -> WriteResult:
    """``MERGE INTO`` the table from ``source`` (Delta's own SQL, one commit): rows matching
    on ``keys`` are updated (only where ``update_if`` holds, when given), the others inserted;
    with ``delete_unmatched_in`` (a predicate on the target, alias ``t``) target rows in that
    scope that ``source`` lacks are deleted.  The source is registered as a temporary view,
    which works on classic and Spark Connect sessions alike."""
    view = f"merge_source_{uuid.uuid4().hex}"
    target = loc.name or f"delta.`{require_path(loc)}`"
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    clauses = [
        f"WHEN MATCHED{f' AND ({update_if})' if update_if else ''} THEN UPDATE SET *",
        "WHEN NOT MATCHED THEN INSERT *",
    ]
    if delete_unmatched_in:
        clauses.append(f"WHEN NOT MATCHED BY SOURCE AND ({delete_unmatched_in}) THEN DELETE")
    source.createOrReplaceTempView(view)
    try:
        with _conflicts_raised(loc):
            spark.sql(f"MERGE INTO {target} AS t USING {view} AS s ON {on} " + " ".join(clauses))
    finally:
        spark.catalog.dropTempView(view)
    last = spark.sql(f"DESCRIBE HISTORY {target} LIMIT 1").collect()[0]
    metrics = last["operationMetrics"] or {}
    inserted = int(metrics.get("numTargetRowsInserted", 0))
    updated = int(metrics.get("numTargetRowsUpdated", 0))
    return WriteResult(
        table=loc.table,
        location=loc.describe(),
        version=int(last["version"]),
        rows_written=inserted + updated,
        files_added=int(metrics.get("numTargetFilesAdded", 0)),
        rows_updated=updated,
        rows_deleted=int(metrics.get("numTargetRowsDeleted", 0)),
    )
