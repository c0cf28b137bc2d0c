"""Internal cluster-quality metrics that stay O(n·k·d) on warehouse-scale data.

Nothing here is pairwise over the rows.  Each metric is one or two distributed passes that reduce
the data to per-cluster aggregates (counts, vector sums, sums of squared norms, mean distances);
only those small results reach the driver, where the closed forms are evaluated.  Silhouettes
come from Spark's ``ClusteringEvaluator`` (exact for squared-Euclidean and cosine distance,
computed from cluster aggregates as well); ``silhouette_exact_sample`` cross-checks the
squared-Euclidean one with scikit-learn (``metric="sqeuclidean"``) on a bounded sample.

Inputs: a DataFrame with an ``array<float>`` (or ``array<double>``) column ``embedding`` and an
integer cluster column ``cluster_id``.  Metric names are listed in the README ("Evaluation").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

#: A vector counts as unit length when its squared norm is within this of 1 (float32 vectors
#: normalised by the encoder are within about 1e-7).
UNIT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ClusterAggregates:
    """Per-cluster sufficient statistics, ordered by cluster id."""

    cluster_ids: np.ndarray  # (k,)
    counts: np.ndarray  # (k,)
    sums: np.ndarray  # (k, d) vector sums
    squared_norms: np.ndarray  # (k,) sums of ||x||^2
    #: Rows whose vector is all zeros (no direction: the cosine silhouette is undefined).
    zero_vectors: int = 0
    #: Rows whose squared norm differs from 1 by more than :data:`UNIT_TOLERANCE`.
    non_unit_vectors: int = 0

    @property
    def centroids(self) -> np.ndarray:
        """(k, d) mean vector of each cluster."""
        return self.sums / self.counts[:, None]


def squared_norm_column(features: str) -> str:
    """Name of the column holding each row's squared Euclidean norm of ``features``
    (:func:`with_squared_norms`): named after the features, so that a norm of one column is
    never read as the norm of another."""
    return f"__squared_norm_{features}"


def with_squared_norms(df: DataFrame, *, features: str = "embedding") -> DataFrame:
    """``df`` with :func:`squared_norm_column` of ``features`` (double, ``||x||^2`` of that
    array column).

    The norms are a property of the rows, not of a clustering: a caller that measures several
    clusterings of the same rows adds them once, before caching, and every
    :func:`cluster_aggregates` of those rows reuses them instead of another pass over the
    ``d`` elements of each row.
    """
    # Each element is squared in double: a float32 square (``array<float>``, as ``embeddings``
    # holds) rounds to ~1e-7, which leaves clusters of identical points a non-zero dispersion.
    squared = F.aggregate(
        features,
        F.lit(0.0).cast("double"),
        lambda acc, x: acc + x.cast("double") * x.cast("double"),
    )
    return df.withColumn(squared_norm_column(features), squared)


def cluster_aggregates(
    df: DataFrame, *, features: str = "embedding", cluster: str = "cluster_id"
) -> ClusterAggregates:
    """Count, vector sum and sum of squared norms per cluster, in one job.

    ``df``: n rows with a length-d array column ``features`` (the same d on every row and no
    null vector or element, as in ``embeddings``; otherwise MLlib's ``Summarizer`` fails the
    job) and a cluster column; the norms of :func:`with_squared_norms` are used when ``df``
    has them, else computed.  The vector sums are
    MLlib's ``Summarizer.sum`` per cluster (one aggregate buffer of d doubles per cluster; d
    separate ``sum`` columns would turn off whole-stage code generation beyond 100 fields).
    Only the k result rows reach the driver.  Raises ``ValueError`` when ``df`` is empty.
    """
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.ml.stat import Summarizer

    norm = squared_norm_column(features)
    if norm not in df.columns:
        df = df.transform(with_squared_norms, features=features)
    squared = F.col(norm)
    table = (
        df.groupBy(cluster)
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(squared).alias("sq"),
            F.count(F.when(squared == 0, 1)).alias("zeros"),
            F.count(F.when(F.abs(squared - 1.0) > UNIT_TOLERANCE, 1)).alias("non_unit"),
            vector_to_array(Summarizer.sum(array_to_vector(F.col(features)))).alias("sums"),
        )
        .orderBy(cluster)
        .toArrow()
    )
    if table.num_rows == 0:
        raise ValueError("cannot compute cluster metrics of an empty DataFrame")
    sums = table.column("sums").combine_chunks()
    return ClusterAggregates(
        cluster_ids=np.array(table.column(cluster).to_pylist()),
        counts=table.column("n").to_numpy().astype(np.float64),
        sums=sums.flatten().to_numpy().reshape(len(sums), -1).astype(np.float64),
        squared_norms=table.column("sq").to_numpy().astype(np.float64),
        zero_vectors=int(table.column("zeros").to_numpy().sum()),
        non_unit_vectors=int(table.column("non_unit").to_numpy().sum()),
    )


def sse(agg: ClusterAggregates) -> float:
    """Within-cluster sum of squared Euclidean distances to the centroid (inertia), >= 0."""
    per_cluster = agg.squared_norms - (agg.sums**2).sum(axis=1) / agg.counts
    return float(np.clip(per_cluster, 0.0, None).sum())


#: Within-cluster dispersion at most this share of the total counts as none: clusters of
#: identical points leave ~1e-16 of the total in double-precision rounding, never exactly 0.
COLLAPSED_SHARE = 1e-9


def calinski_harabasz(agg: ClusterAggregates) -> float:
    """Between-cluster over within-cluster dispersion, each per degree of freedom (Calinski and
    Harabasz, 1974).  NaN for k < 2 or n <= k; inf when every point sits on its centroid
    (within-cluster dispersion at most :data:`COLLAPSED_SHARE` of the total)."""
    n, k = agg.counts.sum(), len(agg.counts)
    if k < 2 or n <= k:
        return float("nan")
    overall = agg.sums.sum(axis=0) / n
    between = float((agg.counts * ((agg.centroids - overall) ** 2).sum(axis=1)).sum())
    within = sse(agg)
    if within <= COLLAPSED_SHARE * (within + between):
        return float("inf")
    return between * (n - k) / (within * (k - 1))


def davies_bouldin(
    df: DataFrame,
    agg: ClusterAggregates,
    *,
    features: str = "embedding",
    cluster: str = "cluster_id",
) -> float:
    """Mean over clusters of the worst (scatter_i + scatter_j) / distance(c_i, c_j); scatter is
    the mean Euclidean distance to the centroid (a second pass, joining the k centroids).

    ``agg`` must be :func:`cluster_aggregates` of the same ``df``.  NaN for k < 2.
    """
    k = len(agg.counts)
    if k < 2:
        return float("nan")
    spark = df.sparkSession
    centres = spark.createDataFrame(
        [
            (int(c), [float(x) for x in v])
            for c, v in zip(agg.cluster_ids, agg.centroids, strict=True)
        ],
        f"{cluster} int, __centroid array<double>",
    )
    distance = F.sqrt(
        F.aggregate(
            F.zip_with(features, "__centroid", lambda a, b: (a - b) * (a - b)),
            F.lit(0.0).cast("double"),
            lambda acc, x: acc + x,
        )
    )
    scatter_rows = (
        df.join(F.broadcast(centres), cluster)
        .groupBy(cluster)
        .agg(F.avg(distance).alias("s"))
        .collect()
    )
    scatter_by_id = {r[cluster]: r["s"] for r in scatter_rows}
    scatter = np.array([scatter_by_id[c] for c in agg.cluster_ids])
    gaps = np.linalg.norm(agg.centroids[:, None, :] - agg.centroids[None, :, :], axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (scatter[:, None] + scatter[None, :]) / gaps
    np.fill_diagonal(ratios, -np.inf)
    return float(np.nanmax(np.where(np.isfinite(ratios), ratios, -np.inf), axis=1).mean())


def silhouette(
    df: DataFrame, *, distance: str, features: str = "embedding", cluster: str = "cluster_id"
) -> float:
    """Spark's mean silhouette in [-1, 1] for ``distance`` ``squaredEuclidean`` or ``cosine``,
    exact and O(n·k·d)."""
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.functions import array_to_vector

    vectors = df.select(
        array_to_vector(F.col(features)).alias("__v"), F.col(cluster).cast("double").alias("__c")
    )
    evaluator = ClusteringEvaluator(
        featuresCol="__v", predictionCol="__c", distanceMeasure=distance
    )
    return float(evaluator.evaluate(vectors))


def size_balance(agg: ClusterAggregates, *, k: int | None = None) -> dict[str, float]:
    """``size_min_share`` and ``size_max_share`` (in [0, 1]) and ``size_entropy``, the entropy
    of the size shares normalised to [0, 1] by log k (1.0 for a single cluster).

    ``k``: the segments asked for; those that came out empty (no row in ``agg``) count as share
    0, so a method asked for 6 segments that made 2 shows min share 0 and entropy log 2 / log 6,
    not a perfect balance.  None: the clusters in ``agg``."""
    shares = agg.counts / agg.counts.sum()
    if k is not None and k > len(shares):
        shares = np.concatenate([shares, np.zeros(k - len(shares))])
    k = len(shares)
    filled = shares[shares > 0]  # 0 log 0 = 0
    entropy = float(-(filled * np.log(filled)).sum() / math.log(k)) if k > 1 else 1.0
    return {
        "size_min_share": float(shares.min()),
        "size_max_share": float(shares.max()),
        "size_entropy": entropy,
    }


def sample_rows(df: DataFrame, *, sample: int, seed: int) -> list[Any]:
    """A seeded random sample of at most ``sample`` rows' ``embedding`` and ``cluster_id``,
    collected to the driver (the same rows for the same data, partitioning and seed)."""
    return df.orderBy(F.rand(seed)).limit(sample).select("embedding", "cluster_id").collect()


def internal_metrics(
    df: DataFrame, *, sample: int, seed: int, k: int | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """Every internal metric of ``embedding`` / ``cluster_id`` rows that can be computed, by
    metric name, and the reason for each one that cannot (every value returned is finite).
    ``k``: the segments asked for (empty ones count in the ``size_*`` metrics), None: those in
    ``df``.

    Not applicable: everything but ``sse`` and ``size_*`` for a single cluster; the cosine
    silhouette when a vector is all zeros; Calinski-Harabasz when every point sits on its
    centroid (clusters collapsed onto duplicate points: the ratio is infinite); Davies-Bouldin
    when centroids coincide; ``silhouette_exact_sample`` (scikit-learn, squared Euclidean, on
    :func:`sample_rows`) when the sample has a single cluster or no more rows than clusters.
    For unit vectors (every embedding) the cosine silhouette equals the squared-Euclidean one
    and is not measured twice.
    """
    from sklearn.metrics import silhouette_score

    agg = cluster_aggregates(df)
    values = {"sse": sse(agg), **size_balance(agg, k=k)}
    skipped: dict[str, str] = {}
    if len(agg.counts) < 2:
        for name in (
            "calinski_harabasz",
            "davies_bouldin",
            "silhouette_sqeuclidean",
            "silhouette_cosine",
            "silhouette_exact_sample",
        ):
            skipped[name] = "a single cluster"
        return values, skipped
    candidates = {
        "calinski_harabasz": (
            lambda: calinski_harabasz(agg),
            "every point sits on its centroid (clusters collapsed onto duplicate points)",
        ),
        "davies_bouldin": (lambda: davies_bouldin(df, agg), "cluster centroids coincide"),
        "silhouette_sqeuclidean": (
            lambda: silhouette(df, distance="squaredEuclidean"),
            "undefined on these points",
        ),
    }
    if agg.zero_vectors:
        skipped["silhouette_cosine"] = f"{agg.zero_vectors:,} all-zero vectors have no direction"
    elif agg.non_unit_vectors:
        candidates["silhouette_cosine"] = (
            lambda: silhouette(df, distance="cosine"),
            "undefined on these points",
        )
    for name, (compute, reason) in candidates.items():
        value = compute()
        if math.isfinite(value):
            values[name] = value
        else:
            skipped[name] = reason
    if not agg.zero_vectors and not agg.non_unit_vectors and "silhouette_sqeuclidean" in values:
        # Unit vectors: ||x - y||^2 = 2 (1 - cos(x, y)), so every dissimilarity of the squared
        # Euclidean silhouette is twice the cosine one and the two silhouettes (ratios of such
        # means) are equal; measured once instead of twice (Spark's evaluator makes two passes).
        values["silhouette_cosine"] = values["silhouette_sqeuclidean"]
    rows = sample_rows(df, sample=sample, seed=seed)
    labels = np.array([r["cluster_id"] for r in rows])
    if len(set(labels)) > 1 and len(rows) > len(set(labels)):
        points = np.array([r["embedding"] for r in rows], dtype=np.float64)
        # Squared Euclidean, as Spark's silhouette_sqeuclidean: on the same rows they agree.
        values["silhouette_exact_sample"] = float(
            silhouette_score(points, labels, metric="sqeuclidean")
        )
    else:
        skipped["silhouette_exact_sample"] = "the sample has a single cluster or too few rows"
    return values, skipped
