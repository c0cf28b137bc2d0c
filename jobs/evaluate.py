"""``evaluate`` stage: are the segments of one cluster run stable, useful, and better than the
classic approach, on this data?

Parse -> plan -> compute -> commit.  Plan: the cluster run (``evaluate.cluster_run_id``, else the
most recently created), its unit, k, and the model version and backend it clustered with.
Compute, with the transforms of :mod:`jobs.evaluation`:

* on the run's rows, for the embedding and the baselines refitted on the same rows and k:
  internal metrics in the embedding space, all O(n·k·d) (:mod:`jobs.evaluation.internal`), and
  external metrics when there is ground truth (:mod:`jobs.evaluation.external`);
* stability of the embedding's segments (:mod:`jobs.evaluation.stability`): seed-refit ARI /
  NMI and per-segment bootstrap Jaccard;
* the leakage-free backtest (:mod:`jobs.evaluation.backtest`): every method fitted on history
  only, scored on what the same units did next, with bootstrap intervals.

Commit: ``cluster_profiles`` and ``cluster_metrics`` of the run, then the report
(``<evaluate.report_dir>/<cluster run>/report.md``), which leads with the leaderboard.  Whatever
cannot be computed on the data is logged and listed in the report as not applicable; nothing
non-finite is stored.  The metrics are described in the README ("Evaluation").
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.clustering.kmeans import latest_model_version
from jobs.core.config import AppConfig
from jobs.core.errors import DataError
from jobs.core.lake import ConcurrentWriteError, Lake
from jobs.core.lake.paths import Outbox, is_local, native_uri
from jobs.core.metrics import Metric, record_metrics
from jobs.core.privacy import Pseudonymizer
from jobs.core.session import bind_to_thread
from jobs.core.tables import (
    CLUSTER_ASSIGNMENTS,
    CLUSTER_CENTROIDS,
    CLUSTER_METRICS,
    CLUSTER_PROFILES,
    EMBEDDINGS,
    HISTORY_EMBEDDINGS,
    SESSIONS,
    USER_SEQUENCES,
)
from jobs.evaluation.backtest import Backtest, EmbeddingSource, encoder_caveat, run_backtest
from jobs.evaluation.external import truth_labels
from jobs.evaluation.internal import sample_rows, with_squared_norms
from jobs.evaluation.methods import known_vectors
from jobs.evaluation.profiles import cluster_profiles
from jobs.evaluation.report import METHOD_ORDER, verdict, write_report
from jobs.evaluation.same_rows import same_rows_metrics
from jobs.evaluation.sweep import sweep_frame
from jobs.evaluation.tracking import log_evaluate_run
from jobs.runner import run_stage
from jobs.sequences.encoder_choice import resolve_encoder
from jobs.sequences.rendering import select_units

log = logging.getLogger(__name__)

#: ``ingest.source.name`` of the generator's data: the only source whose personas are truth.
GENERATOR_SOURCE = "synthetic"
#: Metrics the cluster stage records for every candidate k (its sweep); evaluate keeps them.
CLUSTER_STAGE_METRICS = ("sse", "silhouette_sqeuclidean", "restart_cost", "restart_cost_spread")


@dataclass(frozen=True)
class EvaluateResult:
    run_id: str
    k: int
    rows: int
    metrics: dict[str, dict[str, float]]  # method -> metric -> value
    report_path: str | None = None
    #: The report's one-sentence recommendation (None without a backtest).
    verdict: str | None = None
    mlflow_run_id: str | None = None

    def headline(self) -> str:
        """ARI vs truth per method (where measured) and the embedding's cosine silhouette."""
        parts = []
        for method in METHOD_ORDER:
            values = self.metrics.get(method, {})
            if "ari_vs_truth" in values:
                parts.append(f"{method} ARI {values['ari_vs_truth']:.3f}")
        emb = self.metrics.get("embedding", {})
        if "silhouette_cosine" in emb:
            parts.append(f"silhouette {emb['silhouette_cosine']:.3f} (cosine)")
        return "; ".join(parts) or "no internal metric applicable"

    def summary(self) -> str:
        tracked = f"; MLflow run {self.mlflow_run_id}" if self.mlflow_run_id else ""
        return (
            f"cluster run {self.run_id} (k={self.k}, {self.rows:,} rows): {self.headline()}; "
            f"report {self.report_path}{tracked}"
        )

    def closing_lines(self) -> list[str]:
        """What ``segments pipeline`` prints last: the headline, the future backtest's lift and
        verdict when measured, and where the report is."""
        emb = self.metrics.get("embedding", {})
        lines = [f"\nheadline (k={self.k}): {self.headline()}"]
        if "future_item_hit_rate_at_20_lift_ci_low" in emb:
            lines.append(
                f"future: item hit-rate@20 {emb['future_item_hit_rate_at_20']:.3f}, lift over "
                f"popularity {emb['future_item_hit_rate_at_20_lift']:.2f} (95% CI "
                f"{emb['future_item_hit_rate_at_20_lift_ci_low']:.2f}-"
                f"{emb['future_item_hit_rate_at_20_lift_ci_high']:.2f}, "
                f"{emb['future_users']:,.0f} users)"
            )
        if self.verdict:
            lines.append(self.verdict)
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


def _latest_cluster_run(lake: Lake) -> str:
    """The most recently created cluster run that has assignments (by the time its metrics
    were recorded; run ids are not compared as strings), else the greatest run id in
    ``cluster_assignments``.

    Cost: one aggregate over the ``sse`` rows of ``cluster_metrics`` (a row per run and k),
    then a probe of one ``run_id`` partition of ``cluster_assignments`` per candidate, newest
    first (a run whose cluster stage died between its metrics and its assignments is
    skipped).  The assignments of every run are scanned only without metrics: a lake with a
    year of daily runs is not read in full to find the last one."""
    assignments = lake.read(CLUSTER_ASSIGNMENTS)
    if lake.exists(CLUSTER_METRICS):
        newest_first = (
            lake.read(CLUSTER_METRICS)
            .where((F.col("method") == "embedding") & (F.col("metric") == "sse"))
            .groupBy("run_id")
            .agg(F.min("created_at").alias("created"))
            .orderBy(F.desc("created"), F.desc("run_id"))
            .select("run_id")
            .collect()  # a row per run: 365 for a year of daily runs
        )
        for candidate in newest_first:
            run = str(candidate["run_id"])
            if assignments.where(F.col("run_id") == run).limit(1).count():
                return run
    row = assignments.select("run_id").agg(F.max("run_id")).first()
    if row is None or row[0] is None:
        raise DataError(f"{CLUSTER_ASSIGNMENTS} is empty: run the cluster stage first")
    return str(row[0])


def _plan(lake: Lake, config: AppConfig) -> _Target:
    cluster_run = config.evaluate.cluster_run_id or _latest_cluster_run(lake)
    first = (
        lake.read(CLUSTER_ASSIGNMENTS).where(F.col("run_id") == cluster_run).select("unit").first()
    )
    if first is None:
        raise DataError(f"cluster run {cluster_run!r} has no assignments (evaluate.cluster_run_id)")
    unit = first["unit"]
    k = lake.read(CLUSTER_CENTROIDS).where(F.col("run_id") == cluster_run).count()
    # The cluster stage's own row for the chosen k says which model and backend it used.
    version_row = (
        lake.read(CLUSTER_METRICS)
        .where(
            (F.col("run_id") == cluster_run)
            & (F.col("method") == "embedding")
            & (F.col("metric") == "sse")
            & (F.col("k") == k)
        )
        .orderBy("created_at")
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
    """``user_id``, ``persona`` of the ground truth, or None (logged):
    ``evaluate.ground_truth_path`` when set, else the generator's personas only when the source
    is the generator."""
    path = config.evaluate.ground_truth_path
    if path is None and config.ingest.source.name == GENERATOR_SOURCE:
        path = config.generate.ground_truth_path
    if not path:
        log.info(
            "no ground truth configured (evaluate.ground_truth_path): external metrics skipped"
        )
        return None
    if is_local(path) and not Path(native_uri(path, where="the ground truth path")).is_file():
        log.info("no ground truth file at %s: external metrics skipped", path)
        return None
    raw = spark.read.option("header", "true").csv(path)
    return truth_labels(raw, Pseudonymizer.from_config(config.privacy, spark))


def _embedding_source(lake: Lake, config: AppConfig, target: _Target) -> EmbeddingSource | str:
    """The run's model and its stored vectors, or why the backtest cannot re-encode histories."""
    from udfs.encoder import model_version as version_of
    from udfs.encoder import resolve_model_path

    model_dir = resolve_model_path(
        config.encoder, default_sequence_dir=config.train_encoder.output_dir
    )
    if not model_dir.exists() or version_of(config.encoder, model_dir) != target.model_version:
        return (
            f"the configured encoder is not the run's model {target.model_version}: "
            "histories cannot be re-encoded with it"
        )
    # Any text the model encoded serves every unit that renders to it: the stored sequences
    # first, then the histories earlier evaluate runs encoded.
    of_model = F.col("model_version") == target.model_version
    sources = [lake.read(EMBEDDINGS).where(of_model).select("id", "content_hash", "embedding")]
    if lake.exists(HISTORY_EMBEDDINGS):
        sources.append(lake.read(HISTORY_EMBEDDINGS).where(of_model))
    return EmbeddingSource(str(model_dir), known_vectors(*sources))


def _store_history_vectors(lake: Lake, backtest: Backtest, target: _Target, run_id: str) -> None:
    """Merge the history vectors this run encoded into ``history_embeddings`` (new texts only),
    so that the next evaluate of the same model reuses them.  A concurrent evaluate that stored
    them first is logged, not an error: the table only saves work."""
    if backtest.encoded_histories is None:
        return
    rows = backtest.encoded_histories.select(
        F.lit(target.model_version).alias("model_version"),
        "content_hash",
        "embedding",
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("embedded_at"),
    )
    try:
        # No update clause: a text already stored keeps its vector; new texts are inserted.
        lake.merge(HISTORY_EMBEDDINGS, rows, update_if="false")
    except ConcurrentWriteError as exc:
        log.warning("history vectors not stored (the next evaluate encodes them again): %s", exc)


# ==================================================================== the stage


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> EvaluateResult:
    """Evaluate one cluster run against its baselines on the same rows and in the future
    backtest; write ``cluster_profiles`` and ``cluster_metrics`` of that run, and the report."""
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
        # Every method's metrics are measured on these rows: their norms are computed once.
        .transform(with_squared_norms)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    profiles: DataFrame | None = None
    try:
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
        # The encoder as embed resolved it (encoder.kind auto decides on the same table).
        encoder, _ = resolve_encoder(config.encoder, lake.read(SESSIONS))
        resolved = dataclasses.replace(config, encoder=encoder)
        embedding = _embedding_source(lake, resolved, target)
        # The backtest and the same-rows metrics share nothing but their inputs: their Spark
        # jobs run side by side (a second driver thread fills the gaps between small jobs;
        # every fit is seeded, so the numbers do not depend on the interleaving).
        with ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="backtest",
            initializer=bind_to_thread,
            initargs=(spark,),
        ) as pool:
            pending = pool.submit(
                run_backtest,
                lake.read(SESSIONS),
                unit=unit,
                units=rows.select("id"),
                k=k,
                config=resolved,
                embedding=embedding,
            )
            results, skipped, jaccard = same_rows_metrics(config, rows, sequences, truth, k=k)
            # Needing only the same rows' Jaccard, they are computed while the backtest ends.
            profiles = cluster_profiles(
                this_run.select("id", "user_id", "cluster_id", "distance"),
                sequences,
                lake.read(SESSIONS),
                jaccard=jaccard,
                unit=unit,
            ).persist(StorageLevel.MEMORY_AND_DISK)
            profiles.count()
            backtest = pending.result()
        sample = sample_rows(rows, sample=cfg.silhouette_sample, seed=cfg.seed)
        _store_history_vectors(lake, backtest, target, run_id)
        caveat = (
            encoder_caveat(embedding.model_dir)
            if backtest.protocol and isinstance(embedding, EmbeddingSource)
            else None
        )
        if caveat:
            log.warning("backtest: %s", caveat)
            backtest = dataclasses.replace(backtest, caveat=caveat)
        for method, values in backtest.metrics.items():
            results.setdefault(method, {}).update(values)
        skipped.update(backtest.not_applicable)
        if backtest.protocol is None:
            skipped[("*", "future_*")] = backtest.reason
        for (method, metric), why in sorted(skipped.items()):
            log.info("not applicable: %s %s: %s", method, metric, why)

        lake.overwrite_partitions(
            CLUSTER_PROFILES,
            profiles.select(F.lit(cluster_run).alias("run_id"), "*"),
            {"run_id": [cluster_run]},
        )
    finally:
        rows.unpersist()
        if profiles is not None:
            profiles.unpersist()
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
                _sample_size(name, values, n, cfg.silhouette_sample),
            )
            for method, values in results.items()
            for name, value in values.items()
            # The cluster stage's own rows (its k sweep) stay as it wrote them.
            if not (method == "embedding" and name in CLUSTER_STAGE_METRICS)
        ],
        # Every row an earlier evaluate wrote for this run goes, whatever its backend.
        replace=~((F.col("method") == "embedding") & F.col("metric").isin(*CLUSTER_STAGE_METRICS)),
    )
    for method, values in results.items():
        log.info("%s: %s", method, ", ".join(f"{m}={v:.4f}" for m, v in sorted(values.items())))
    recorded = lake.read(CLUSTER_METRICS).where(
        (F.col("run_id") == cluster_run)
        & (F.col("method") == "embedding")
        & F.col("metric").isin(*CLUSTER_STAGE_METRICS)
    )
    sweep = sweep_frame([r.asDict() for r in recorded.select("k", "metric", "value").collect()])
    centres = (
        lake.read(CLUSTER_CENTROIDS)
        .where(F.col("run_id") == cluster_run)
        .orderBy("cluster_id")
        .select("cluster_id", "centroid")
        .collect()
    )
    profile_rows = lake.read(CLUSTER_PROFILES).where(F.col("run_id") == cluster_run).toPandas()
    # An object-store report_dir gets the report written locally, then uploaded.
    target_dir = f"{cfg.report_dir.rstrip('/')}/{cluster_run}"
    with Outbox(lake.storage, target_dir, where="evaluate.report_dir") as outbox:
        report = write_report(
            outbox.local,
            run_id=cluster_run,
            k=k,
            rows=n,
            unit=unit,
            model_version=target.model_version,
            metrics=results,
            not_applicable=skipped,
            backtest=backtest,
            sweep=sweep,
            profiles=profile_rows,
            sample_points=np.array([r["embedding"] for r in sample], dtype=np.float64),
            sample_labels=np.array([r["cluster_id"] for r in sample]),
            centroids=np.array([r["centroid"] for r in centres], dtype=np.float64),
            centroid_ids=[int(r["cluster_id"]) for r in centres],
        )
        outbox.publish()
        log.info("report written to %s", outbox.shown(report.name))
        result = EvaluateResult(
            run_id=cluster_run,
            k=k,
            rows=n,
            metrics=results,
            report_path=outbox.shown(report.name),
            verdict=verdict(results, backtest),
        )
        tracked = log_evaluate_run(resolved, result, target, report=report, run_id=run_id)
    return dataclasses.replace(result, mlflow_run_id=tracked)


def _sample_size(name: str, values: dict[str, float], rows: int, sample: int) -> int:
    """Rows a metric rests on: the scored units for future metrics, the sample for the exact
    silhouette, otherwise every row."""
    if name.startswith("future_") and "future_users" in values:
        return int(values["future_users"])
    return min(rows, sample) if name == "silhouette_exact_sample" else rows


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/evaluate.py --conf conf/local.yaml``."""
    return run_stage("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
