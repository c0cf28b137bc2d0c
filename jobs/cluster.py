"""``cluster`` stage: K-Means on one ``model_version`` of ``embeddings`` (SPEC section 7).

Backends with the same parameters and the same output tables:

* ``gpu``: ``spark_rapids_ml.clustering.KMeans`` (cuML), fed the ``array<float>`` column as is;
* ``cpu``: ``pyspark.ml.clustering.KMeans`` (k-means||), fed vectors from ``array_to_vector``.

Embeddings are L2-normalised, so Euclidean K-Means approximates cosine clustering.  ``cluster.k``
may list candidates: each is fitted on the cached embeddings, its inertia (one distributed pass,
the same for both backends since the GPU model has no training summary) and silhouette
(``ClusteringEvaluator``) go to ``cluster_metrics``, and ``cluster.criterion`` picks the k whose
assignments are kept.  Writes ``cluster_assignments`` and ``cluster_centroids`` (partitioned by
``run_id``) and saves the model under ``<cluster.model_root>/<run_id>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import AppConfig, ClusterConfig
from jobs.lake import Lake
from jobs.metrics import Metric, record_metrics

log = logging.getLogger(__name__)

FEATURES = "features"
PREDICTION = "cluster_id"


@dataclass(frozen=True)
class ClusterResult:
    k: int
    backend: str
    rows: int
    sizes: tuple[int, ...]
    model_version: str
    model_path: str | None
    sweep: tuple[tuple[int, float, float], ...]  # (k, sse, silhouette)


# ==================================================================== backend choice


def resolve_backend(spark: SparkSession, requested: str) -> tuple[str, str]:
    """``gpu`` or ``cpu`` for ``requested``, with the reason (``auto`` logs it)."""
    if requested not in ("auto", "gpu", "cpu"):
        raise ValueError(f"cluster.backend must be auto, gpu or cpu, got {requested!r}")
    if requested == "cpu":
        return "cpu", "cluster.backend=cpu"
    try:
        import spark_rapids_ml.clustering  # noqa: F401

        importable = True
    except ImportError:
        importable = False
    gpus = spark.conf.get("spark.executor.resource.gpu.amount", None)
    if requested == "gpu":
        if not importable:
            raise RuntimeError("cluster.backend=gpu needs spark-rapids-ml (and cuML) installed")
        return "gpu", "cluster.backend=gpu"
    if importable and gpus:
        return "gpu", f"spark-rapids-ml importable and executors have {gpus} GPU(s)"
    reason = "spark-rapids-ml/cuML not importable" if not importable else "executors have no GPUs"
    return "cpu", reason


def _validate(config: ClusterConfig) -> tuple[int, ...]:
    candidates = (config.k,) if isinstance(config.k, int) else tuple(config.k)
    if not candidates or any(k < 2 for k in candidates):
        raise ValueError(f"cluster.k must be >= 2 (got {config.k})")
    if not 0 <= config.seed < 2**32:
        raise ValueError("cluster.seed must fit in 32 bits (cuML's limit)")
    if config.criterion not in ("silhouette", "elbow"):
        raise ValueError("cluster.criterion must be silhouette or elbow")
    return tuple(sorted(set(candidates)))


# ==================================================================== pure transforms


def with_features(embeddings: DataFrame) -> DataFrame:
    """Add the MLlib vector column next to the array (the GPU estimator reads the array)."""
    from pyspark.ml.functions import array_to_vector

    return embeddings.withColumn(FEATURES, array_to_vector(F.col("embedding")))


def assign_distances(assigned: DataFrame, centroids: DataFrame) -> DataFrame:
    """Add ``distance``: Euclidean distance of each embedding to its cluster's centroid."""
    joined = assigned.join(F.broadcast(centroids.select(PREDICTION, "centroid")), PREDICTION)
    squared = F.aggregate(
        F.zip_with("embedding", "centroid", lambda a, b: (a - b) * (a - b)),
        F.lit(0.0).cast("double"),
        lambda acc, x: acc + x,
    )
    return joined.withColumn("distance", F.sqrt(squared)).drop("centroid")


def pick_k(sweep: list[tuple[int, float, float]], criterion: str) -> int:
    """The chosen k: highest silhouette, or the knee of the SSE curve (the point farthest
    below the straight line from the first to the last candidate, after normalising both
    axes, as in the Kneedle method)."""
    if len(sweep) == 1:
        return sweep[0][0]
    if criterion == "silhouette":
        return max(sweep, key=lambda s: (s[2], -s[0]))[0]
    ks = [s[0] for s in sweep]
    sse = [s[1] for s in sweep]
    if len(sweep) == 2:
        return ks[0]
    k_span = (ks[-1] - ks[0]) or 1
    sse_span = (max(sse) - min(sse)) or 1.0
    xs = [(k - ks[0]) / k_span for k in ks]
    ys = [(v - min(sse)) / sse_span for v in sse]
    line = [ys[0] + (ys[-1] - ys[0]) * x for x in xs]
    gaps = [lin - y for lin, y in zip(line, ys, strict=True)]
    return ks[max(range(len(ks)), key=lambda i: gaps[i])]


# ==================================================================== fitting


def kmeans_estimator(backend: str, k: int, config: ClusterConfig) -> Any:
    if backend == "gpu":
        from spark_rapids_ml.clustering import KMeans as GpuKMeans

        return (
            GpuKMeans(k=k, maxIter=config.max_iter, tol=config.tol, seed=config.seed)
            .setFeaturesCol("embedding")
            .setPredictionCol(PREDICTION)
        )
    from pyspark.ml.clustering import KMeans

    return KMeans(
        k=k,
        maxIter=config.max_iter,
        tol=config.tol,
        seed=config.seed,
        featuresCol=FEATURES,
        predictionCol=PREDICTION,
        initMode="k-means||",
    )


def _centroids(spark: SparkSession, model: Any, assigned: DataFrame) -> DataFrame:
    centres = [(i, [float(x) for x in centre]) for i, centre in enumerate(model.clusterCenters())]
    frame = spark.createDataFrame(centres, "cluster_id int, centroid array<float>").coalesce(1)
    sizes = assigned.groupBy(PREDICTION).agg(F.count(F.lit(1)).alias("size"))
    return frame.join(sizes, PREDICTION, "left").fillna(0, ["size"])


def _silhouette(assigned: DataFrame) -> float:
    from pyspark.ml.evaluation import ClusteringEvaluator

    evaluator = ClusteringEvaluator(
        featuresCol=FEATURES, predictionCol=PREDICTION, distanceMeasure="squaredEuclidean"
    )
    return float(evaluator.evaluate(assigned))


def latest_model_version(embeddings: DataFrame, unit: str) -> str:
    """The most recently embedded model_version of ``unit``."""
    row = (
        embeddings.where(F.col("unit") == unit)
        .groupBy("model_version")
        .agg(F.max("embedded_at").alias("at"))
        .orderBy(F.col("at").desc())
        .first()
    )
    if row is None:
        raise ValueError(f"embeddings has no rows for unit {unit!r}: run embed first")
    return str(row["model_version"])


def load_model(path: str) -> Any:
    """A saved K-Means model of either backend."""
    from pyspark.ml.clustering import KMeansModel

    try:
        return KMeansModel.load(path)
    except Exception:
        from spark_rapids_ml.clustering import KMeansModel as GpuKMeansModel

        return GpuKMeansModel.load(path)


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> ClusterResult:
    """Fit (or, with ``assign_with_model``, only apply) K-Means and write the tables."""
    cfg = config.cluster
    candidates = _validate(cfg)
    unit = config.embed.unit
    embeddings = lake.read("embeddings")
    version = cfg.model_version or latest_model_version(embeddings, unit)
    rows = (
        embeddings.where((F.col("unit") == unit) & (F.col("model_version") == version))
        .select("unit", "id", "user_id", "embedding")
        .transform(with_features)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        n = rows.count()
        if n < max(candidates):
            raise ValueError(f"{n} rows cannot make {max(candidates)} clusters")
        sweep: list[tuple[int, float, float]] = []
        if cfg.assign_with_model:
            model = load_model(cfg.assign_with_model)
            backend = "gpu" if type(model).__module__.startswith("spark_rapids_ml") else "cpu"
            log.info("assigning %d %ss with saved model %s", n, unit, cfg.assign_with_model)
            chosen_k, model_path = len(model.clusterCenters()), cfg.assign_with_model
            best = model
        else:
            backend, reason = resolve_backend(spark, cfg.backend)
            log.info("K-Means backend %s (%s); k candidates %s", backend, reason, candidates)
            models: dict[int, Any] = {}
            for k in candidates:
                model = kmeans_estimator(backend, k, cfg).fit(rows)
                assigned = model.transform(rows)
                centroids = _centroids(spark, model, assigned)
                sse = (
                    assigned.transform(assign_distances, centroids)
                    .agg(F.sum(F.col("distance") * F.col("distance")))
                    .first()[0]
                )
                silhouette = _silhouette(assigned)
                log.info("k=%d: sse %.2f, silhouette %.4f", k, sse, silhouette)
                sweep.append((k, float(sse), silhouette))
                models[k] = model
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
                ],
            )
        assigned = best.transform(rows)
        centroids = _centroids(spark, best, assigned).cache()
        assignments = assigned.transform(assign_distances, centroids).select(
            F.lit(run_id).alias("run_id"),
            "unit",
            "id",
            "user_id",
            F.col(PREDICTION).cast("int").alias("cluster_id"),
            "distance",
        )
        written = lake.overwrite_partitions(
            "cluster_assignments", assignments, {"run_id": [run_id]}
        )
        lake.overwrite_partitions(
            "cluster_centroids",
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
    finally:
        rows.unpersist()
    log.info("k=%d chosen (%s); cluster sizes %s", chosen_k, cfg.criterion, sizes)
    return ClusterResult(
        k=chosen_k,
        backend=backend,
        rows=written.rows_written,
        sizes=sizes,
        model_version=version,
        model_path=model_path,
        sweep=tuple(sweep),
    )


def main(argv: list[str] | None = None) -> int:
    """``spark-submit jobs/cluster.py --conf ... [--assign-only --model PATH]``."""
    from jobs.cli import execute_stage, parse_common

    def extend(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--assign-only",
            action="store_true",
            help="assign rows with a saved model instead of fitting",
        )
        parser.add_argument("--model", default=None, help="saved model path for --assign-only")

    args, config, run_id = parse_common(
        argv, "segments cluster", "Run the cluster stage.", extend=extend
    )
    if args.assign_only:
        if not args.model:
            raise SystemExit("segments cluster: --assign-only needs --model PATH")
        config = dataclasses.replace(
            config, cluster=dataclasses.replace(config.cluster, assign_with_model=args.model)
        )
    outcome = execute_stage("cluster", config, run_id)
    print(f"cluster: {outcome.summary} ({outcome.seconds:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
