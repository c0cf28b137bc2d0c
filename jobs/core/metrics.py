"""The ``cluster_metrics`` history table: one row per (run, method, metric, k, backend).

Append-only across runs; within a run, recording a metric again replaces the earlier value, so a
rerun of a stage leaves one row per metric instead of duplicates.  Metric names are fixed
(README: Evaluation) so runs compare across versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass
from datetime import datetime, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

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
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    new_rows = [(run_id, *astuple(m)[:2], float(m.value), *astuple(m)[3:], now) for m in metrics]
    # Reorder to the table's columns: run_id, method, metric, value, k, unit, model_version,
    # backend, sample_size, created_at.
    new_keys = {(r[1], r[2], r[4], r[5], r[6], r[7]) for r in new_rows}
    kept: list[tuple] = []
    if lake.exists(CLUSTER_METRICS):
        # A run's metrics are a handful of rows: read them to the driver and rewrite the run's
        # partition with the replaced values.
        for row in lake.read(CLUSTER_METRICS).where(F.col("run_id") == run_id).collect():
            if tuple(row[c] for c in _KEY) not in new_keys:
                kept.append(tuple(row))
    frame = spark.createDataFrame(kept + new_rows, contract_of(CLUSTER_METRICS).schema).coalesce(1)
    lake.overwrite_partitions(CLUSTER_METRICS, frame, {"run_id": [run_id]})
    return len(kept) + len(new_rows)
