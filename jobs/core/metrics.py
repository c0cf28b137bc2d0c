"""The ``cluster_metrics`` history table: one row per (run, method, metric, k, backend).

Append-only across runs; within a run, recording a metric again replaces the earlier value, so a
rerun of a stage leaves one row per metric instead of duplicates.  Metric names are fixed
(README: Evaluation) so runs compare across versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.lake import Lake
from jobs.core.tables import CLUSTER_METRICS, contract_of

METHODS = ("embedding", "tfidf_baseline", "tfidf_tokens_baseline", "random_baseline")
_KEY = ("method", "metric", "k", "unit", "model_version", "backend")


@dataclass(frozen=True)
class Metric:
    """One measured value, before it is stamped with run and time."""

    method: str
    metric: str
    value: float
    k: int
    unit: str
    model_version: str
    backend: str
    sample_size: int | None = None


def record_metrics(spark: SparkSession, lake: Lake, run_id: str, metrics: Sequence[Metric]) -> int:
    """Add ``metrics`` to the history under ``run_id``; returns the rows the run now has."""
    for m in metrics:
        if m.method not in METHODS:
            raise ValueError(f"unknown metrics method {m.method!r}; expected one of {METHODS}")
    contract = contract_of(CLUSTER_METRICS)
    columns = [f for f in contract.schema.fields if f.name != "created_at"]
    rows = [(run_id, *astuple(m)[:2], float(m.value), *astuple(m)[3:]) for m in metrics]
    # Stamped by Spark in UTC: a driver's local time zone never shifts created_at.
    new = spark.createDataFrame(rows, T.StructType(columns)).withColumn(
        "created_at", F.current_timestamp()
    )
    frame = new
    if lake.exists(CLUSTER_METRICS):
        # Recording a metric again replaces it: the run's other rows are kept as they are.
        earlier = lake.read(CLUSTER_METRICS).where(F.col("run_id") == run_id)
        kept = earlier.join(new.select(*_KEY), list(_KEY), "left_anti")
        frame = kept.select(*contract.column_names).unionByName(new)
    frame = frame.select(*contract.column_names).coalesce(1)
    return lake.overwrite_partitions(CLUSTER_METRICS, frame, {"run_id": [run_id]}).rows_written
