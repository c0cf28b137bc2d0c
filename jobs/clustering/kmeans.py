"""K-Means on Spark, shared by ``cluster`` (fitting, assigning) and ``evaluate`` (baselines,
stability refits; data that fits the start sample is refitted on the driver by
:func:`fit_on_driver`, the same fit without a Spark job per step).

Backends with the same parameters: ``gpu`` is ``spark_rapids_ml.clustering.KMeans`` (cuML),
fed the ``array<float>`` column as is; ``cpu`` is ``pyspark.ml.clustering.KMeans`` (k-means||),
fed vectors from ``array_to_vector``.  ``cluster.algorithm: bisecting_kmeans`` is MLlib's
``BisectingKMeans`` (divisive hierarchical K-Means, Steinbach, Karypis and Kumar, 2000; CPU
only).  Embeddings are L2-normalised, so Euclidean K-Means approximates cosine clustering.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.clustering.centres import FEATURES, PREDICTION, numbered_model
from jobs.clustering.sample import (
    StartSample,
    arrays_from_arrow,
    dense_copy,
    distinct_points,
    fetch_start_sample,
    stacked_rows,
    vectors_from_arrow,
)
from jobs.core.config import ClusterConfig
from jobs.core.errors import DataError

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


def kmeans_estimator(
    backend: str,
    k: int,
    config: ClusterConfig,
    *,
    rows: int | None = None,
    sample_col: str | None = None,
    sample: StartSample | None = None,
) -> Any:
    """An unfitted K-Means of ``backend`` and ``config.algorithm`` (``bisecting_kmeans``:
    MLlib's ``BisectingKMeans`` on :data:`FEATURES`, whatever the backend; ``gpu``:
    spark-rapids-ml on the array column; ``cpu``: :class:`SampledStartKMeans` on
    :data:`FEATURES`) predicting :data:`PREDICTION`.  ``rows``: the row count of the data it
    will fit, when the caller has counted it (the CPU path then does not count again);
    ``sample_col``: a dense array column of the data holding the same values as
    :data:`FEATURES`; ``sample``: its start sample, already fetched (both: the CPU path, see
    :class:`SampledStartKMeans`)."""
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
    return SampledStartKMeans(k=k, config=config, rows=rows, sample_col=sample_col, sample=sample)


class SingleCluster(DataError):
    """Every point coincides: there is nothing to split into clusters."""


@dataclass
class StartReport:
    """How a :class:`SampledStartKMeans` fit started: the sample's size, the k-means++ cost of
    each restart on it (the lowest was kept) and the Lloyd passes over the full data."""

    sample_rows: int
    restart_costs: tuple[float, ...]
    lloyd_passes: int

    @property
    def chosen_cost(self) -> float:
        return min(self.restart_costs)

    @property
    def cost_spread(self) -> float:
        """(worst - best) / best restart cost: 0 when every restart found the same optimum."""
        best = min(self.restart_costs)
        return (max(self.restart_costs) - best) / best if best > 0 else 0.0


class SampledStartKMeans:
    """K-Means on Spark (CPU) with a k-means++ start on a bounded sample, refined by Lloyd
    iterations on the full data; ``fit`` returns an MLlib ``KMeansModel``.

    Why not MLlib's own ``KMeans`` alone: its k-means|| start lands in a local optimum 1.33x
    worse than scikit-learn's k-means++ on well-separated data (``benchmarks/kmeans.py``), and
    pyspark.ml's ``KMeans`` cannot start from given centres (no initial model; the RDD API's
    ``initialModel`` is not available under Spark Connect).  So:

    1. at most ``cluster.init_sample`` rows are sampled (seeded) to the driver, and
       scikit-learn's ``KMeans`` (greedy k-means++, Arthur and Vassilvitskii, 2007) runs
       ``cluster.n_init`` restarts on them; the lowest-cost restart's centres are kept
       (:attr:`last_start` reports every restart's cost);
    2. when the data is larger than the sample, Lloyd iterations run on the full data with
       Spark's own pieces: an MLlib ``KMeansModel`` holding the current centres assigns the
       rows, ``Summarizer.mean`` per cluster gives the new centres, until no centre would move
       more than ``cluster.tol`` (the model then kept) or ``cluster.max_iter`` passes;
    3. the centres are wrapped in an MLlib ``KMeansModel``
       (:func:`jobs.clustering.centres.numbered_model`, which reproduces them exactly), so
       assignment, saving and ``assign-only`` are MLlib's.

    Nothing but the bounded sample reaches the driver: O(n k d) per pass, as MLlib's Lloyd.
    """

    def __init__(
        self,
        *,
        k: int,
        config: ClusterConfig,
        rows: int | None = None,
        sample_col: str | None = None,
        sample: StartSample | None = None,
    ) -> None:
        self.k = k
        self.config = config
        #: Rows of the data ``fit`` gets, when the caller counted them (else ``fit`` counts).
        self.rows = rows
        #: A dense ``array<float>`` (or double) column of that data with the values of
        #: :data:`FEATURES` (the cluster stage's ``embedding``, which its vectors are made from):
        #: the start sample is fetched from it, half the bytes of float64 vectors and no vector
        #: conversion, the same numbers.  None: the vectors themselves are fetched.
        self.sample_col = sample_col
        #: The start sample ``fit`` uses (fetched by it when None): the same data, ``seed`` and
        #: ``init_sample`` give the same one, so a k sweep passes on the first fit's
        #: :attr:`last_sample` (the top-up of a short sample stays per fit).
        self.sample = sample
        self.last_start: StartReport | None = None
        self.last_sample: StartSample | None = None

    def fit(self, features: DataFrame) -> Any:
        """An MLlib ``KMeansModel`` of ``features`` (column :data:`FEATURES`, dense or sparse
        vectors).  Fewer than k centres when the data has fewer distinct points (a sample
        with fewer is topped up from the full data); :class:`SingleCluster` when it has one."""
        import numpy as np
        from pyspark import StorageLevel
        from pyspark.ml.stat import Summarizer

        cfg = self.config
        total = features.count() if self.rows is None else self.rows
        fetched = self.sample_col or FEATURES
        from_arrow = arrays_from_arrow if self.sample_col else vectors_from_arrow
        start = self.sample or fetch_start_sample(
            features,
            total=total,
            at_most=cfg.init_sample,
            seed=cfg.seed,
            column=fetched,
            dense_array=self.sample_col is not None,
        )
        self.last_sample = start
        raw, sampled, points, weights = start.raw, start.rows, start.points, start.weights
        if points.shape[0] < self.k and total > sampled:
            # The sample missed rare points of the full data (the caller counted its distinct
            # vectors): up to k of the full data's distinct vectors join the start, so that it
            # can hold k centres; the Lloyd passes below then refine them on every row.  One
            # more job over the data (a distinct), only when the sample is this short.
            extra = from_arrow(
                features.select(fetched).distinct().limit(self.k).toArrow().column(0)
            )
            points, weights = distinct_points(stacked_rows(raw, extra))
        centres, costs = _start(points, weights, k=self.k, config=cfg)
        spark = features.sparkSession
        model, current = numbered_model(spark, centres, seed=cfg.seed)
        passes = 0
        if total > sampled:
            cached = features.storageLevel != StorageLevel.NONE
            data = features if cached else features.persist(StorageLevel.MEMORY_AND_DISK)
            try:
                for passes in range(1, cfg.max_iter + 1):  # noqa: B007 - reported below
                    means = (
                        model.transform(data)
                        .groupBy(PREDICTION)
                        .agg(Summarizer.mean(F.col(FEATURES)).alias("__mean"))
                        .collect()
                    )
                    moved = current.copy()
                    for row in means:  # a cluster without rows keeps its centre
                        moved[int(row[PREDICTION])] = row["__mean"].toArray()
                    shift = float(np.linalg.norm(moved - current, axis=1).max())
                    if shift <= cfg.tol:
                        break  # converged: the model's centres are within tol of the update
                    model, current = numbered_model(spark, np.unique(moved, axis=0), seed=cfg.seed)
            finally:
                if not cached:
                    data.unpersist()
        self.last_start = StartReport(sampled, tuple(costs), passes)
        return model


def _start(points: Any, weights: Any, *, k: int, config: ClusterConfig) -> tuple[Any, list[float]]:
    """The start's centres ((k', d) dense, k' <= k) and every restart's cost, from distinct
    ``points`` weighted by ``weights``; :class:`SingleCluster` when there are fewer than two."""
    if points.shape[0] < 2:
        raise SingleCluster("K-Means found a single cluster: every sampled point coincides")
    if points.shape[0] <= k:
        # No more distinct points than clusters: each point is a centre, at cost 0.
        return dense_copy(points), [0.0] * config.n_init
    return _kmeans_pp_restarts(points, weights, k=k, config=config)


def fit_on_driver(raw: Any, *, k: int, config: ClusterConfig) -> tuple[Any, list[float]]:
    """``(labels, restart costs)`` of CPU K-Means on every row of ``raw`` ((n, d) array or CSR
    matrix, n <= ``config.init_sample``), computed on the driver: labels ``(n,)`` int in
    [0, k') (k' <= k; ids are arbitrary, only the partition counts).

    This is :class:`SampledStartKMeans` on data that fits its start sample: the sample is then
    every row, its k-means++ restarts are the whole fit (no Lloyd pass on Spark follows), and
    each row goes to its nearest centre, as the model's ``transform`` assigns it.  ``evaluate``
    refits baselines and stability models this way on small data: one Arrow fetch instead of
    a Spark job per step and a model wrapper per fit.  :class:`SingleCluster` when the rows
    hold fewer than two distinct points."""
    from sklearn.metrics import pairwise_distances_argmin

    if raw.shape[0] > config.init_sample:
        raise ValueError(
            f"{raw.shape[0]} rows exceed cluster.init_sample={config.init_sample}: fit on Spark"
        )
    points, weights = distinct_points(raw)
    centres, costs = _start(points, weights, k=k, config=config)
    with _SKLEARN_BLAS:
        return pairwise_distances_argmin(raw, centres), costs


#: Held around this module's scikit-learn calls that set and restore the process-wide BLAS
#: limit: two at once (evaluate fits from two threads) would restore it out of turn.
_SKLEARN_BLAS = threading.Lock()


def _kmeans_pp_restarts(
    points: Any, weights: Any, *, k: int, config: ClusterConfig
) -> tuple[Any, list[float]]:
    """Centres of the lowest-cost of ``config.n_init`` scikit-learn K-Means fits (k-means++,
    seeds ``seed``, ``seed + 1``, ...) on ``points`` (more distinct rows than ``k``) weighted by
    ``weights``, and every fit's cost (weighted inertia), in seed order.

    The fits run side by side in driver threads (scikit-learn's Lloyd iterations release the
    GIL; three restarts on the README demo's 5,000 rows: 0.16-0.26 s -> 0.11-0.14 s on 2 cores).
    Each keeps scikit-learn's own OpenMP threads, so it sums up its Lloyd steps as when it runs
    alone (to the last bit with up to 2 threads; with more, scikit-learn's merge order varies
    from run to run anyway); BLAS is held at one thread meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from joblib import cpu_count
    from sklearn.cluster import KMeans as SkKMeans
    from threadpoolctl import threadpool_limits

    tol = sklearn_tol(points, config.tol)

    def restart(i: int) -> Any:
        return SkKMeans(
            n_clusters=k,
            init="k-means++",
            n_init=1,
            max_iter=config.max_iter,
            tol=tol,
            random_state=(config.seed + i) % 2**32,
        ).fit(points, sample_weight=weights)

    # joblib's count honours CPU affinity and container quotas (os.cpu_count does not).
    workers = max(1, min(config.n_init, cpu_count(only_physical_cores=False)))
    with _SKLEARN_BLAS, threadpool_limits(limits=1, user_api="blas"):
        if workers == 1:
            fits = [restart(i) for i in range(config.n_init)]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="kmeans-restart") as pool:
                fits = list(pool.map(restart, range(config.n_init)))
    best = min(fits, key=lambda f: f.inertia_)
    centres = np.unique(np.asarray(best.cluster_centers_, dtype=np.float64), axis=0)
    return centres, [float(f.inertia_) for f in fits]


def sklearn_tol(points: Any, tol: float) -> float:
    """scikit-learn's ``tol`` that makes its Lloyd iterations stop as ``cluster.tol`` says:
    once no centre moves more than ``tol`` (Euclidean), MLlib's meaning, which the Spark
    passes of :class:`SampledStartKMeans` use too.

    scikit-learn stops when the sum over centres of the squared shifts is at most ``tol`` times
    the mean per-feature variance of ``points`` (``sklearn.cluster._kmeans._tolerance``, or
    when no label changes).  Passing ``tol**2 / mean variance`` makes that bound ``tol**2``:
    a sum of squared shifts within ``tol**2`` leaves every single shift within ``tol``.
    ``points`` holds at least two distinct rows (:func:`_start`), so the variance is > 0."""
    import numpy as np

    if tol == 0:
        return 0.0
    if hasattr(points, "tocsr"):
        from sklearn.utils.sparsefuncs import mean_variance_axis

        variance = float(np.mean(mean_variance_axis(points.tocsr(), axis=0)[1]))
    else:
        variance = float(np.mean(np.var(points, axis=0)))
    return tol * tol / variance


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
        raise DataError(f"embeddings has no rows for unit {unit!r}: run embed first")
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
