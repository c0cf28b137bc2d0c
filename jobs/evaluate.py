"""``evaluate`` stage: how good are the segments of one cluster run, and better than what?

Parse -> plan -> compute -> commit.  Plan: the cluster run (``evaluate.cluster_run_id``, else the
latest), its unit, k, and the embeddings' model version it clustered.  Compute, with the
transforms of :mod:`jobs.evaluation`, for method ``embedding``:

* internal metrics, all O(n·k·d) (:mod:`jobs.evaluation.internal`): ``sse``,
  ``silhouette_sqeuclidean``, ``silhouette_cosine``, ``davies_bouldin``, ``calinski_harabasz``,
  ``size_*``; plus ``silhouette_exact_sample``, scikit-learn's exact Euclidean silhouette on a
  bounded sample;
* stability (:mod:`jobs.evaluation.stability`): mean / sd ARI and mean NMI between the run's
  assignments and K-Means refits with other seeds;
* external metrics when ground truth exists (:mod:`jobs.evaluation.external`):
  ``ari_vs_truth``, ``nmi_vs_truth``, ``purity_vs_truth``;
* usefulness for user runs (:mod:`jobs.evaluation.usefulness`): hit-rate@10 on held-out
  sessions;

and the same internal and external metrics for three baselines on the same rows and k
(:mod:`jobs.evaluation.baselines`).  Commit: ``cluster_profiles`` and ``cluster_metrics`` of the
run, then the report (``<evaluate.report_dir>/<cluster run>/report.md``).  The metrics are
described in the README ("Evaluation").
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.clustering.kmeans import latest_model_version
from jobs.core.config import AppConfig
from jobs.core.lake import Lake
from jobs.core.metrics import Metric, record_metrics
from jobs.core.privacy import Pseudonymizer
from jobs.core.tables import (
    CLUSTER_ASSIGNMENTS,
    CLUSTER_CENTROIDS,
    CLUSTER_METRICS,
    CLUSTER_PROFILES,
    EMBEDDINGS,
    SESSIONS,
    USER_SEQUENCES,
)
from jobs.evaluation.baselines import TFIDF_BASELINES, random_clusters, tfidf_clusters, token_bags
from jobs.evaluation.external import external_metrics, truth_labels
from jobs.evaluation.internal import internal_metrics, sample_rows
from jobs.evaluation.profiles import cluster_profiles
from jobs.evaluation.report import METHOD_ORDER, sweep_frame, write_report
from jobs.evaluation.stability import refit_seeds, stability_metrics
from jobs.evaluation.usefulness import usefulness
from jobs.runner import run_stage
from jobs.sequences.rendering import select_units

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    run_id: str
    k: int
    rows: int
    metrics: dict[str, dict[str, float]]  # method -> metric -> value
    report_path: str | None = None

    def headline(self) -> str:
        """ARI vs truth per method (where measured) and the embedding's cosine silhouette."""
        parts = []
        for method in METHOD_ORDER:
            values = self.metrics.get(method, {})
            if "ari_vs_truth" in values:
                parts.append(f"{method} ARI {values['ari_vs_truth']:.3f}")
        emb = self.metrics.get("embedding", {})
        parts.append(f"silhouette {emb.get('silhouette_cosine', float('nan')):.3f} (cosine)")
        return "; ".join(parts)

    def summary(self) -> str:
        return (
            f"cluster run {self.run_id} (k={self.k}, {self.rows:,} rows): {self.headline()}; "
            f"report {self.report_path}"
        )

    def closing_lines(self) -> list[str]:
        """What ``segments pipeline`` prints last: the headline, usefulness when measured, and
        where the report is."""
        emb = self.metrics.get("embedding", {})
        lines = [f"\nheadline (k={self.k}): {self.headline()}"]
        if "hit_rate_lift" in emb:
            lines.append(
                f"usefulness: hit-rate@10 {emb['hit_rate_at_10']:.3f} with cluster-popular vs "
                f"{emb['hit_rate_at_10_global']:.3f} global, lift {emb['hit_rate_lift']:.2f} "
                f"(95% CI {emb['hit_rate_lift_ci_low']:.2f}-{emb['hit_rate_lift_ci_high']:.2f})"
            )
        lines.append(f"report: {self.report_path}")
        return lines


@dataclass(frozen=True)
class _Target:
    """The cluster run to evaluate and what it clustered."""

    cluster_run: str
    unit: str
    k: int
    model_version: str
    backend: str


# ==================================================================== plan


def _latest_cluster_run(assignments: DataFrame) -> str:
    """The newest run id (run ids sort by their UTC timestamp prefix)."""
    row = assignments.agg(F.max("run_id")).first()
    if row is None or row[0] is None:
        raise ValueError(f"{CLUSTER_ASSIGNMENTS} is empty: run the cluster stage first")
    return str(row[0])


def _plan(lake: Lake, config: AppConfig) -> _Target:
    all_assignments = lake.read(CLUSTER_ASSIGNMENTS)
    cluster_run = config.evaluate.cluster_run_id or _latest_cluster_run(all_assignments)
    first = all_assignments.where(F.col("run_id") == cluster_run).select("unit").first()
    if first is None:
        raise ValueError(f"cluster run {cluster_run!r} has no assignments")
    unit = first["unit"]
    k = lake.read(CLUSTER_CENTROIDS).where(F.col("run_id") == cluster_run).count()
    version_row = (
        lake.read(CLUSTER_METRICS)
        .where(F.col("run_id") == cluster_run)
        .select("model_version", "backend")
        .first()
        if lake.exists(CLUSTER_METRICS)
        else None
    )
    if version_row is not None:
        model_version, backend = version_row["model_version"], version_row["backend"]
    else:
        model_version, backend = latest_model_version(lake.read(EMBEDDINGS), unit), "cpu"
    return _Target(cluster_run, unit, k, model_version, backend)


def _ground_truth(spark: SparkSession, config: AppConfig) -> DataFrame | None:
    """``user_id``, ``persona`` of the ground-truth CSV, or None (logged) when there is none."""
    path = config.evaluate.ground_truth_path or config.generate.ground_truth_path
    if not path or ("://" not in path and not Path(path).is_file()):
        log.info("no ground truth at %s: external metrics skipped", path)
        return None
    raw = spark.read.option("header", "true").csv(path)
    return truth_labels(raw, Pseudonymizer.from_config(config.privacy, spark))


# ==================================================================== compute


def _usefulness(
    lake: Lake, config: AppConfig, model_version: str, centroids: DataFrame
) -> dict[str, float]:
    """Usefulness metrics, or none when the configured encoder is not the run's model."""
    from udfs.encoder import model_version as version_of
    from udfs.encoder import resolve_model_path

    model_dir = resolve_model_path(
        config.encoder, default_sequence_dir=config.train_encoder.output_dir
    )
    if version_of(config.encoder, model_dir) != model_version:
        log.info(
            "usefulness skipped: the configured encoder is not model_version %s", model_version
        )
        return {}
    return usefulness(
        lake.read(SESSIONS).where(~F.col("is_bot")),
        centroids,
        sessionize=config.sessionize,
        encoder=config.encoder,
        model_dir=str(model_dir),
        seed=config.evaluate.seed,
    )


def _scored(df: DataFrame, truth: DataFrame | None, config: AppConfig) -> dict[str, float]:
    """Internal metrics of ``df``, plus external ones when there is ground truth."""
    cfg = config.evaluate
    values = internal_metrics(df, sample=cfg.silhouette_sample, seed=cfg.seed)
    if truth is not None:
        values.update(external_metrics(df, truth))
    return values


def _measure(
    lake: Lake,
    config: AppConfig,
    target: _Target,
    rows: DataFrame,
    sequences: DataFrame,
    truth: DataFrame | None,
) -> tuple[dict[str, dict[str, float]], list[Any]]:
    """Metrics by method, and the sample of rows the report projects."""
    cfg = config.evaluate
    results: dict[str, dict[str, float]] = {}
    emb = internal_metrics(rows, sample=cfg.silhouette_sample, seed=cfg.seed)
    if cfg.stability_seeds > 0:
        seeds = refit_seeds(config.cluster.seed, cfg.stability_seeds)
        emb.update(stability_metrics(rows, k=target.k, cluster=config.cluster, seeds=seeds))
    if truth is not None:
        emb.update(external_metrics(rows, truth))
    if target.unit == "user":
        centroids = lake.read(CLUSTER_CENTROIDS).where(F.col("run_id") == target.cluster_run)
        emb.update(_usefulness(lake, config, target.model_version, centroids))
    results["embedding"] = emb

    bags = token_bags(sequences, edges=config.encoder.price_band_edges).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    for method, column in TFIDF_BASELINES:
        clustered = tfidf_clusters(
            bags,
            tokens=column,
            k=target.k,
            seed=config.cluster.seed,
            vocab_size=cfg.tfidf_vocab_size,
            max_iter=config.cluster.max_iter,
        ).join(bags.select("id", "user_id"), "id")
        results[method] = _scored(clustered, truth, config)
    bags.unpersist()

    sample = sample_rows(rows, sample=cfg.silhouette_sample, seed=cfg.seed)
    random = random_clusters(rows.drop("cluster_id"), k=target.k, seed=cfg.seed)
    results["random_baseline"] = _scored(random, truth, config)
    return results, sample


# ==================================================================== the stage


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> EvaluateResult:
    """Evaluate one cluster run and its baselines; write ``cluster_profiles`` and
    ``cluster_metrics`` of that run, and the report."""
    cfg = config.evaluate
    target = _plan(lake, config)
    cluster_run, unit, k = target.cluster_run, target.unit, target.k
    this_run = lake.read(CLUSTER_ASSIGNMENTS).where(F.col("run_id") == cluster_run)
    embeddings = lake.read(EMBEDDINGS).where(
        (F.col("unit") == unit) & (F.col("model_version") == target.model_version)
    )
    rows = (
        this_run.select("unit", "id", "user_id", "cluster_id")
        .join(embeddings.select("id", "embedding"), "id")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    n = rows.count()
    log.info(
        "evaluating cluster run %s: %d %ss, k=%d, model %s",
        cluster_run,
        n,
        unit,
        k,
        target.model_version,
    )
    source = lake.read(USER_SEQUENCES if unit == "user" else SESSIONS)
    sequences = source.transform(select_units, unit=unit, include_bots=True).join(
        rows.select("id"), "id"
    )
    truth = _ground_truth(spark, config)
    try:
        results, sample = _measure(lake, config, target, rows, sequences, truth)
    finally:
        rows.unpersist()

    profiles = cluster_profiles(
        this_run.select("id", "user_id", "cluster_id", "distance"),
        sequences,
        lake.read(SESSIONS),
    )
    lake.overwrite_partitions(
        CLUSTER_PROFILES,
        profiles.select(F.lit(cluster_run).alias("run_id"), "*"),
        {"run_id": [cluster_run]},
    )
    record_metrics(
        spark,
        lake,
        cluster_run,
        [
            Metric(
                method,
                name,
                value,
                k,
                unit,
                target.model_version,
                target.backend if method == "embedding" else "cpu",
                min(n, cfg.silhouette_sample) if name == "silhouette_exact_sample" else n,
            )
            for method, values in results.items()
            for name, value in values.items()
        ],
    )
    for method, values in results.items():
        log.info("%s: %s", method, ", ".join(f"{m}={v:.4f}" for m, v in sorted(values.items())))
    sweep = sweep_frame(
        [
            r.asDict()
            for r in lake.read(CLUSTER_METRICS)
            .where(
                (F.col("run_id") == cluster_run)
                & (F.col("method") == "embedding")
                & F.col("metric").isin("sse", "silhouette_sqeuclidean")
            )
            .select("k", "metric", "value")
            .collect()
        ]
    )
    report = write_report(
        Path(cfg.report_dir) / cluster_run,
        run_id=cluster_run,
        k=k,
        rows=n,
        unit=unit,
        model_version=target.model_version,
        metrics=results,
        sweep=sweep,
        profiles=lake.read(CLUSTER_PROFILES).where(F.col("run_id") == cluster_run).toPandas(),
        sample_points=np.array([r["embedding"] for r in sample], dtype=np.float64),
        sample_labels=np.array([r["cluster_id"] for r in sample]),
    )
    log.info("report written to %s", report)
    return EvaluateResult(run_id=cluster_run, k=k, rows=n, metrics=results, report_path=str(report))


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/evaluate.py --conf conf/local.yaml``."""
    return run_stage("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
