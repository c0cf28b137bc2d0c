"""The ``cluster_metrics`` history table: one row per (run, method, metric, k, backend).

Append-only across runs; within a run, recording a metric again replaces the earlier value, so a
rerun of a stage leaves one row per metric instead of duplicates.  Metric names are fixed
(README: Evaluation) so runs compare across versions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.lake import Lake
from jobs.core.tables import CLUSTER_METRICS, contract_of

METHODS = (
    "embedding",
    "tfidf_baseline",
    "tfidf_tokens_baseline",
    "aggregate_baseline",
    "random_baseline",
    "global_baseline",
)
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


def record_metrics(
    spark: SparkSession,
    lake: Lake,
    run_id: str,
    metrics: Sequence[Metric],
    *,
    replace: Column | None = None,
) -> int:
    """Add ``metrics`` to the history under ``run_id``; returns the rows the run now has.

    The run's earlier rows matching ``replace`` (a condition on the table's columns) are dropped
    first, so a stage that records a set of metrics again leaves none of its old rows, whatever
    backend or model version they carry.  A non-finite value is refused (``ValueError``): a
    metric that cannot be computed is not recorded at all.
    """
    for m in metrics:
        if m.method not in METHODS:
            raise ValueError(f"unknown metrics method {m.method!r}; expected one of {METHODS}")
        if not math.isfinite(m.value):
            raise ValueError(f"metric {m.method}/{m.metric} is {m.value}: not recorded")
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
        if replace is not None:
            earlier = earlier.where(~replace)
        kept = earlier.join(new.select(*_KEY), list(_KEY), "left_anti")
        frame = kept.select(*contract.column_names).unionByName(new)
    frame = frame.select(*contract.column_names).coalesce(1)
    return lake.overwrite_partitions(CLUSTER_METRICS, frame, {"run_id": [run_id]}).rows_written
