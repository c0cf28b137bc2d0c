"""``cluster`` stage: K-Means on one ``model_version`` of ``embeddings``.

Parse -> plan -> compute -> commit: read the embeddings of ``embed.unit`` (the latest model
version unless ``cluster.model_version`` names one), fit each candidate k of ``cluster.k``
(:mod:`jobs.clustering.kmeans`; GPU through spark-rapids-ml when available), record every
candidate's inertia and silhouette in ``cluster_metrics``, keep the k that
``cluster.criterion`` picks, and write ``cluster_assignments`` and ``cluster_centroids``
(partitioned by ``run_id``).  The model is saved under ``<cluster.model_root>/<run_id>``;
``--assign-only --model PATH`` applies a saved model instead of fitting.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.clustering.kmeans import (
    PREDICTION,
    assign_distances,
    candidate_ks,
    centroid_frame,
    distinct_vectors,
    kmeans_estimator,
    latest_model_version,
    load_model,
    pick_k,
    resolve_backend,
    silhouette_sqeuclidean,
    with_features,
)
from jobs.clustering.tracking import log_cluster_run
from jobs.core.config import AppConfig, ConfigError
from jobs.core.errors import DataError
from jobs.core.lake import Lake
from jobs.core.metrics import Metric, record_metrics
from jobs.core.tables import CLUSTER_ASSIGNMENTS, CLUSTER_CENTROIDS, EMBEDDINGS
from jobs.runner import run_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterResult:
    k: int
    backend: str
    rows: int
    sizes: tuple[int, ...]
    model_version: str
    model_path: str | None
    sweep: tuple[tuple[int, float, float], ...]  # (k, sse, silhouette)
    mlflow_run_id: str | None = None

    def summary(self) -> str:
        source = "saved model" if not self.sweep else f"k chosen from {[s[0] for s in self.sweep]}"
        tracked = f"; MLflow run {self.mlflow_run_id}" if self.mlflow_run_id else ""
        return (
            f"{self.rows:,} rows in k={self.k} clusters on {self.backend} ({source}); "
            f"sizes {list(self.sizes)}{tracked}"
        )


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> ClusterResult:
    """Fit (or, with ``assign_with_model``, only apply) K-Means and write the tables."""
    cfg = config.cluster
    candidates = candidate_ks(cfg)
    unit = config.embed.unit
    embeddings = lake.read(EMBEDDINGS)
    version = cfg.model_version or latest_model_version(embeddings, unit)
    rows = (
        embeddings.where((F.col("unit") == unit) & (F.col("model_version") == version))
        .select("unit", "id", "user_id", "embedding")
        .transform(with_features)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        n = rows.count()
        sweep: list[tuple[int, float, float]] = []
        if cfg.assign_with_model:
            if n == 0:  # before loading the model: there is nothing to assign
                raise DataError(
                    f"embeddings has no {unit} rows of model version {version} to assign "
                    "(cluster.model_version)"
                )
            model = load_model(cfg.assign_with_model)
            backend = "gpu" if type(model).__module__.startswith("spark_rapids_ml") else "cpu"
            log.info("assigning %d %ss with saved model %s", n, unit, cfg.assign_with_model)
            chosen_k, model_path = len(model.clusterCenters()), cfg.assign_with_model
            best = model
        else:
            candidates = _fittable_ks(candidates, distinct_vectors(rows, at_most=max(candidates)))
            backend, reason = resolve_backend(spark, cfg.backend, cfg.algorithm)
            log.info(
                "%s backend %s (%s); k candidates %s", cfg.algorithm, backend, reason, candidates
            )
            models: dict[int, Any] = {}
            starts: dict[int, Any] = {}
            shared = None  # the CPU path's start sample: fetched by the first fit, then reused
            for wanted in candidates:
                estimator = kmeans_estimator(
                    backend, wanted, cfg, rows=n, sample_col="embedding", sample=shared
                )
                model = estimator.fit(rows)
                shared = getattr(estimator, "last_sample", None)
                # k is what was fitted: the number of centroids written, never the request.
                k = len(model.clusterCenters())
                if k != wanted:
                    log.warning("k=%d asked, %d clusters found: recorded as k=%d", wanted, k, k)
                if k in models:
                    continue
                assigned = model.transform(rows)
                centroids = centroid_frame(spark, model, assigned)
                sse = (
                    assigned.transform(assign_distances, centroids)
                    .agg(F.sum(F.col("distance") * F.col("distance")))
                    .first()[0]
                )
                silhouette = silhouette_sqeuclidean(assigned)
                log.info("k=%d: sse %.2f, silhouette %.4f", k, sse, silhouette)
                sweep.append((k, float(sse), silhouette))
                models[k] = model
                start = getattr(estimator, "last_start", None)
                if start is not None:
                    starts[k] = start
                    log.info(
                        "k=%d: k-means++ start on %d sampled rows, restart costs %s (lowest "
                        "kept), %d Lloyd passes on all rows",
                        k,
                        start.sample_rows,
                        ", ".join(f"{c:.2f}" for c in start.restart_costs),
                        start.lloyd_passes,
                    )
            chosen_k = pick_k(sweep, cfg.criterion)
            best = models[chosen_k]
            model_path = f"{cfg.model_root.rstrip('/')}/{run_id}"
            best.write().overwrite().save(model_path)
            record_metrics(
                spark,
                lake,
                run_id,
                [
                    Metric("embedding", name, value, k, unit, version, backend, n)
                    for k, sse, silhouette in sweep
                    for name, value in (("sse", sse), ("silhouette_sqeuclidean", silhouette))
                ]
                + [
                    Metric("embedding", name, value, k, unit, version, backend, s.sample_rows)
                    for k, s in starts.items()
                    for name, value in (
                        ("restart_cost", s.chosen_cost),
                        ("restart_cost_spread", s.cost_spread),
                    )
                ],
            )
        assigned = best.transform(rows)
        centroids = centroid_frame(spark, best, assigned).cache()
        assignments = assigned.transform(assign_distances, centroids).select(
            F.lit(run_id).alias("run_id"),
            "unit",
            "id",
            "user_id",
            F.col(PREDICTION).cast("int").alias("cluster_id"),
            "distance",
        )
        written = lake.overwrite_partitions(CLUSTER_ASSIGNMENTS, assignments, {"run_id": [run_id]})
        lake.overwrite_partitions(
            CLUSTER_CENTROIDS,
            centroids.select(
                F.lit(run_id).alias("run_id"),
                F.col(PREDICTION).cast("int"),
                "centroid",
                F.col("size").cast("long"),
            ),
            {"run_id": [run_id]},
        )
        sizes = tuple(int(r["size"]) for r in centroids.orderBy(PREDICTION).collect())
        centroids.unpersist()
        if cfg.assign_with_model:
            # The run's own sse and silhouette at the model's k: what evaluate plans with
            # (the latest run, its model version and backend), as for a fitted run.
            total = (
                lake.read(CLUSTER_ASSIGNMENTS)
                .where(F.col("run_id") == run_id)
                .agg(F.sum(F.col("distance") * F.col("distance")).alias("sse"))
                .first()
            )
            assert total is not None  # a global aggregate has one row
            sweep_rows = [("sse", float(total["sse"]))]
            if sum(1 for size in sizes if size) > 1:
                sweep_rows.append(("silhouette_sqeuclidean", silhouette_sqeuclidean(assigned)))
            else:  # a batch in one cluster: the silhouette needs two
                log.info("the assigned rows fall into one cluster: no silhouette recorded")
            record_metrics(
                spark,
                lake,
                run_id,
                [
                    Metric("embedding", name, value, chosen_k, unit, version, backend, n)
                    for name, value in sweep_rows
                ],
            )
    finally:
        rows.unpersist()
    log.info("k=%d chosen (%s); cluster sizes %s", chosen_k, cfg.criterion, sizes)
    result = ClusterResult(
        k=chosen_k,
        backend=backend,
        rows=written.rows_written,
        sizes=sizes,
        model_version=version,
        model_path=model_path,
        sweep=tuple(sweep),
    )
    tracked = log_cluster_run(lake, config, result, model=best, run_id=run_id)
    return dataclasses.replace(result, mlflow_run_id=tracked)


def _fittable_ks(candidates: tuple[int, ...], distinct: int) -> tuple[int, ...]:
    """The candidate ks that ``distinct`` distinct embeddings can support (K-Means cannot make
    more clusters than distinct points); when none can, k = ``distinct`` (>= 2).  Logged;
    :class:`DataError` when fewer than two distinct embeddings exist."""
    if distinct >= max(candidates):
        return candidates
    if distinct == 0:
        raise DataError("there are no embeddings to cluster: run the embed stage first")
    if distinct < 2:
        raise DataError(
            "every embedding is identical (1 distinct vector): there is nothing to cluster; "
            "check the embed stage's input"
        )
    fittable = tuple(k for k in candidates if k <= distinct) or (distinct,)
    log.warning(
        "only %d distinct embeddings (identical sequences): cluster.k %s reduced to %s",
        distinct,
        list(candidates),
        list(fittable),
    )
    return fittable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--assign-only --model PATH``: assign rows with a saved model instead of fitting."""
    parser.add_argument(
        "--assign-only",
        action="store_true",
        help="assign rows with a saved model instead of fitting",
    )
    parser.add_argument("--model", default=None, help="saved model path for --assign-only")


def apply_arguments(args: argparse.Namespace, config: AppConfig) -> AppConfig:
    """Fold ``--assign-only --model`` into ``cluster.assign_with_model``."""
    if not args.assign_only:
        return config
    if not args.model:
        raise ConfigError("--assign-only needs --model PATH")
    return dataclasses.replace(
        config, cluster=dataclasses.replace(config.cluster, assign_with_model=args.model)
    )


def main(argv: list[str] | None = None) -> int:
    """``spark-submit jobs/cluster.py --conf ... [--assign-only --model PATH]``."""
    return run_stage("cluster", argv)


if __name__ == "__main__":
    sys.exit(main())
