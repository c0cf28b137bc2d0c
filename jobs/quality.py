"""Cluster-quality metrics that stay O(n·k·d) on warehouse-scale data (SPEC section 8).

Nothing here is pairwise over the rows.  Each metric is one or two distributed passes that reduce
the data to per-cluster aggregates (counts, vector sums, sums of squared norms, mean distances)
or to a k x k' contingency table; only those small results reach the driver, where the closed
forms are evaluated.  Silhouettes come from Spark's ``ClusteringEvaluator`` (exact for
squared-Euclidean and cosine distance, computed from cluster aggregates as well).

Inputs: a DataFrame with an ``array<float>`` column (``embedding``) and an integer cluster column.
Metric names follow SPEC section 8 so runs compare across versions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


@dataclass(frozen=True)
class ClusterAggregates:
    """Per-cluster sufficient statistics, ordered by cluster id."""

    cluster_ids: np.ndarray  # (k,)
    counts: np.ndarray  # (k,)
    sums: np.ndarray  # (k, d) vector sums
    squared_norms: np.ndarray  # (k,) sums of ||x||^2

    @property
    def centroids(self) -> np.ndarray:
        return self.sums / self.counts[:, None]


def cluster_aggregates(
    df: DataFrame, *, features: str = "embedding", cluster: str = "cluster_id"
) -> ClusterAggregates:
    """One pass: count, vector sum and sum of squared norms per cluster."""
    dim_row = df.select(F.size(features).alias("d")).first()
    if dim_row is None:
        raise ValueError("cannot compute cluster metrics of an empty DataFrame")
    dim = int(dim_row["d"])
    sums = [F.sum(F.col(features)[i]).alias(f"s{i}") for i in range(dim)]
    squared = F.aggregate(features, F.lit(0.0).cast("double"), lambda acc, x: acc + x * x)
    rows = (
        df.groupBy(cluster)
        .agg(F.count(F.lit(1)).alias("n"), F.sum(squared).alias("sq"), *sums)
        .orderBy(cluster)
        .collect()
    )
    return ClusterAggregates(
        cluster_ids=np.array([r[cluster] for r in rows]),
        counts=np.array([r["n"] for r in rows], dtype=np.float64),
        sums=np.array([[r[f"s{i}"] for i in range(dim)] for r in rows], dtype=np.float64),
        squared_norms=np.array([r["sq"] for r in rows], dtype=np.float64),
    )


def sse(agg: ClusterAggregates) -> float:
    """Within-cluster sum of squared distances to the centroid (inertia)."""
    per_cluster = agg.squared_norms - (agg.sums**2).sum(axis=1) / agg.counts
    return float(np.clip(per_cluster, 0.0, None).sum())


def calinski_harabasz(agg: ClusterAggregates) -> float:
    """Between-cluster over within-cluster dispersion, each per degree of freedom."""
    n, k = agg.counts.sum(), len(agg.counts)
    if k < 2 or n <= k:
        return float("nan")
    overall = agg.sums.sum(axis=0) / n
    between = float((agg.counts * ((agg.centroids - overall) ** 2).sum(axis=1)).sum())
    within = sse(agg)
    return float("inf") if within == 0 else between * (n - k) / (within * (k - 1))


def davies_bouldin(
    df: DataFrame,
    agg: ClusterAggregates,
    *,
    features: str = "embedding",
    cluster: str = "cluster_id",
) -> float:
    """Mean over clusters of the worst (scatter_i + scatter_j) / distance(c_i, c_j); scatter is
    the mean Euclidean distance to the centroid (a second pass, joining the k centroids)."""
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
    """Spark's silhouette (``squaredEuclidean`` or ``cosine``), exact and O(n·k·d)."""
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.functions import array_to_vector

    vectors = df.select(
        array_to_vector(F.col(features)).alias("__v"), F.col(cluster).cast("double").alias("__c")
    )
    evaluator = ClusteringEvaluator(
        featuresCol="__v", predictionCol="__c", distanceMeasure=distance
    )
    return float(evaluator.evaluate(vectors))


def size_balance(agg: ClusterAggregates) -> dict[str, float]:
    """Smallest and largest cluster share, and size entropy normalised to [0, 1]."""
    shares = agg.counts / agg.counts.sum()
    k = len(shares)
    entropy = float(-(shares * np.log(shares)).sum() / math.log(k)) if k > 1 else 1.0
    return {
        "size_min_share": float(shares.min()),
        "size_max_share": float(shares.max()),
        "size_entropy": entropy,
    }


def contingency(df: DataFrame, left: str, right: str) -> np.ndarray:
    """Counts of rows per (left label, right label): a k x k' matrix, via one groupBy."""
    rows = df.groupBy(left, right).count().collect()
    lefts = sorted({r[left] for r in rows}, key=str)
    rights = sorted({r[right] for r in rows}, key=str)
    li = {v: i for i, v in enumerate(lefts)}
    ri = {v: i for i, v in enumerate(rights)}
    table = np.zeros((len(lefts), len(rights)), dtype=np.float64)
    for r in rows:
        table[li[r[left]], ri[r[right]]] = r["count"]
    return table


def _comb2(x: np.ndarray) -> np.ndarray:
    """Pairs among x items, elementwise."""
    return x * (x - 1) / 2


def adjusted_rand_index(table: np.ndarray) -> float:
    """ARI from a contingency table (Hubert and Arabie's adjustment, as scikit-learn)."""
    n = table.sum()
    index = float(_comb2(table).sum())
    rows = float(_comb2(table.sum(axis=1)).sum())
    cols = float(_comb2(table.sum(axis=0)).sum())
    expected = rows * cols / float(n * (n - 1) / 2)
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def normalized_mutual_info(table: np.ndarray) -> float:
    """NMI with the arithmetic mean of the entropies (scikit-learn's default)."""
    n = table.sum()
    pij = table / n
    pi, pj = pij.sum(axis=1), pij.sum(axis=0)
    nz = pij > 0
    mutual = float((pij[nz] * np.log(pij[nz] / np.outer(pi, pj)[nz])).sum())
    hi = float(-(pi[pi > 0] * np.log(pi[pi > 0])).sum())
    hj = float(-(pj[pj > 0] * np.log(pj[pj > 0])).sum())
    if hi == 0 and hj == 0:
        return 1.0
    return mutual / ((hi + hj) / 2) if (hi + hj) > 0 else 0.0


def purity(table: np.ndarray) -> float:
    """Share of rows in their cluster's majority class (rows = truth, columns = clusters)."""
    return float(table.max(axis=0).sum() / table.sum())
