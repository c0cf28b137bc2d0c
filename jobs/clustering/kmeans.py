"""K-Means on Spark, shared by ``cluster`` (fitting, assigning) and ``evaluate`` (baselines,
stability refits).

Backends with the same parameters: ``gpu`` is ``spark_rapids_ml.clustering.KMeans`` (cuML),
fed the ``array<float>`` column as is; ``cpu`` is ``pyspark.ml.clustering.KMeans`` (k-means||),
fed vectors from ``array_to_vector``.  ``cluster.algorithm: bisecting_kmeans`` is MLlib's
``BisectingKMeans`` (divisive hierarchical K-Means, Steinbach, Karypis and Kumar, 2000; CPU
only).  Embeddings are L2-normalised, so Euclidean K-Means approximates cosine clustering.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.core.config import ClusterConfig

FEATURES = "features"
PREDICTION = "cluster_id"


# ==================================================================== backend choice


def resolve_backend(
    spark: SparkSession, requested: str, algorithm: str = "kmeans"
) -> tuple[str, str]:
    """``gpu`` or ``cpu`` for ``requested``, with the reason (``auto`` logs it)."""
    if requested == "cpu":
        return "cpu", "cluster.backend=cpu"
    if algorithm == "bisecting_kmeans":
        return "cpu", "bisecting K-Means runs on Spark MLlib"
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


def candidate_ks(config: ClusterConfig) -> tuple[int, ...]:
    """The k values to fit, ascending and distinct (the config loader checked each is >= 2)."""
    candidates = (config.k,) if isinstance(config.k, int) else tuple(config.k)
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
    """An unfitted K-Means of ``backend`` and ``config.algorithm`` (``bisecting_kmeans``:
    MLlib's ``BisectingKMeans`` on :data:`FEATURES`, whatever the backend; ``gpu``:
    spark-rapids-ml on the array column;
    ``cpu``: MLlib's k-means|| on :data:`FEATURES`, with the block solver: the same centres as
    the row solver, about 1.5-2x faster on dense vectors; Spark >= 3.4) predicting
    :data:`PREDICTION`."""
    if config.algorithm == "bisecting_kmeans":
        from pyspark.ml.clustering import BisectingKMeans

        return BisectingKMeans(
            k=k,
            maxIter=config.max_iter,
            seed=config.seed,
            featuresCol=FEATURES,
            predictionCol=PREDICTION,
        )
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
        solver="block",
    )


def centroid_frame(spark: SparkSession, model: Any, assigned: DataFrame) -> DataFrame:
    """``cluster_id``, ``centroid`` (array<float>) and ``size`` of a fitted model's clusters."""
    centres = [(i, [float(x) for x in centre]) for i, centre in enumerate(model.clusterCenters())]
    frame = spark.createDataFrame(centres, "cluster_id int, centroid array<float>").coalesce(1)
    sizes = assigned.groupBy(PREDICTION).agg(F.count(F.lit(1)).alias("size"))
    return frame.join(sizes, PREDICTION, "left").fillna(0, ["size"])


def silhouette_sqeuclidean(assigned: DataFrame) -> float:
    """MLlib's squared-Euclidean silhouette of ``assigned`` (O(n·k) by its own algorithm)."""
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
    """A saved model of either backend or algorithm (Spark ML checks the class recorded in the
    model's metadata, so the wrong loader fails and the next one is tried)."""
    from pyspark.ml.clustering import BisectingKMeansModel, KMeansModel

    failure: Exception | None = None
    for loader in (KMeansModel, BisectingKMeansModel):
        try:
            return loader.load(path)
        except Exception as exc:  # not this class (or not this backend)
            failure = exc
    try:
        from spark_rapids_ml.clustering import KMeansModel as GpuKMeansModel
    except ImportError:
        raise ValueError(f"no MLlib K-Means or bisecting K-Means model at {path}") from failure
    return GpuKMeansModel.load(path)


def distinct_vectors(rows: DataFrame, *, at_most: int) -> int:
    """How many distinct ``embedding`` values ``rows`` has, counted up to ``at_most`` (one
    bounded job: K-Means cannot make more clusters than distinct points)."""
    return int(rows.select("embedding").distinct().limit(at_most).count())
