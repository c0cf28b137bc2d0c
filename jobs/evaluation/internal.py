"""Internal cluster-quality metrics that stay O(n·k·d) on warehouse-scale data.

Nothing here is pairwise over the rows.  Each metric is one or two distributed passes that reduce
the data to per-cluster aggregates (counts, vector sums, sums of squared norms, mean distances);
only those small results reach the driver, where the closed forms are evaluated.  The
squared-Euclidean silhouette is Spark ``ClusteringEvaluator``'s own algorithm run for several
clusterings in one pass (:func:`distance_pass`); the cosine one of non-unit vectors is the
evaluator itself (:func:`silhouette`); both are exact and computed from cluster aggregates.
``silhouette_exact_sample`` cross-checks the squared-Euclidean one with scikit-learn
(``metric="sqeuclidean"``) on a bounded sample.

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

    def table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What a row's distances to the clusters need: cluster ids, centroids, counts and mean
        squared norms (:func:`cluster_distance_sums`)."""
        return self.cluster_ids, self.centroids, self.counts, self.squared_norms / self.counts


def array_rows(column: Any) -> np.ndarray:
    """The ``(n, d)`` float64 matrix of an Arrow list column (an ``Array`` or ``ChunkedArray``
    fetched with ``toArrow()`` or read in ``mapInArrow``) whose n rows all hold d numbers."""
    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return flat.reshape(len(column), -1) if len(column) else np.zeros((0, 0))


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
    """Count, vector sum and sum of squared norms per cluster, in one job
    (:func:`aggregates_by` of a single clustering).  Raises ``ValueError`` when ``df`` is
    empty."""
    return aggregates_by(df, by=None, features=features, cluster=cluster)[None]


def aggregates_by(
    df: DataFrame, *, by: str | None, features: str = "embedding", cluster: str = "cluster_id"
) -> dict[Any, ClusterAggregates]:
    """:class:`ClusterAggregates` of each value of column ``by`` (several clusterings of the
    same rows stacked: ``by`` names the clustering; None: ``df`` is one clustering, keyed
    None), in one job.

    ``df``: rows with a length-d array column ``features`` (the same d on every row and no
    null vector or element, as in ``embeddings``; otherwise MLlib's ``Summarizer`` fails the
    job) and a cluster column; the norms of :func:`with_squared_norms` are used when ``df``
    has them, else computed.  The vector sums are MLlib's ``Summarizer.sum`` per (clustering,
    cluster): one aggregate buffer of d doubles each (d separate ``sum`` columns would turn off
    whole-stage code generation beyond 100 fields).  Only those k rows per clustering reach
    the driver.  Raises ``ValueError`` when ``df`` is empty.
    """
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.ml.stat import Summarizer

    norm = squared_norm_column(features)
    if norm not in df.columns:
        df = df.transform(with_squared_norms, features=features)
    squared = F.col(norm)
    key = F.col(by).cast("string") if by else F.lit(None).cast("string")
    table = (
        df.groupBy(key.alias("__by"), F.col(cluster))
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(squared).alias("sq"),
            F.count(F.when(squared == 0, 1)).alias("zeros"),
            F.count(F.when(F.abs(squared - 1.0) > UNIT_TOLERANCE, 1)).alias("non_unit"),
            vector_to_array(Summarizer.sum(array_to_vector(F.col(features)))).alias("sums"),
        )
        .orderBy("__by", cluster)
        .toArrow()
    )
    if table.num_rows == 0:
        raise ValueError("cannot compute cluster metrics of an empty DataFrame")
    keys = np.array(table.column("__by").to_pylist(), dtype=object)
    sums = table.column("sums").combine_chunks()
    all_sums = sums.flatten().to_numpy().reshape(len(sums), -1).astype(np.float64)
    ids = np.array(table.column(cluster).to_pylist())
    counts = table.column("n").to_numpy().astype(np.float64)
    squares = table.column("sq").to_numpy().astype(np.float64)
    zeros, non_unit = table.column("zeros").to_numpy(), table.column("non_unit").to_numpy()
    out: dict[Any, ClusterAggregates] = {}
    for value in dict.fromkeys(keys.tolist()):
        mine = keys == value
        out[value] = ClusterAggregates(
            cluster_ids=ids[mine],
            counts=counts[mine],
            sums=all_sums[mine],
            squared_norms=squares[mine],
            zero_vectors=int(zeros[mine].sum()),
            non_unit_vectors=int(non_unit[mine].sum()),
        )
    return out


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


@dataclass(frozen=True)
class Distances:
    """What :func:`distance_pass` measured for one clustering."""

    #: (k,) mean Euclidean distance of each cluster's rows to its centroid, in the order of
    #: :attr:`ClusterAggregates.cluster_ids`.
    scatter: np.ndarray
    #: Mean squared-Euclidean silhouette over the rows, as Spark's ``ClusteringEvaluator``.
    silhouette_sqeuclidean: float


def distance_pass(
    df: DataFrame,
    aggregates: dict[Any, ClusterAggregates],
    *,
    by: str | None,
    features: str = "embedding",
    cluster: str = "cluster_id",
) -> dict[Any, Distances]:
    """Davies-Bouldin scatter and squared-Euclidean silhouette of every clustering in ``df``
    with at least two clusters, in one job: each row's distances to its clustering's k
    clusters from ``aggregates`` (:func:`aggregates_by` of the same ``df`` and ``by``).

    The silhouette is Spark's own O(n·k·d) form (``SquaredEuclideanSilhouette`` behind
    ``pyspark.ml.evaluation.ClusteringEvaluator``): the mean squared distance from x to the
    rows of cluster C is ``||x||^2 + Q_C / n_C - 2 x . S_C / n_C`` (S: vector sum, Q: sum of
    squared norms); for x's own cluster it is scaled by ``n_C / (n_C - 1)`` to leave x out,
    and a row alone in its cluster scores 0.  Written here rather than calling the evaluator
    because that measures one clustering per call (two jobs each); this measures all the
    clusterings stacked in ``df`` in one pass and agrees with the evaluator to 1e-9
    (tests/test_quality.py).  Each Arrow batch is one (rows x k) matrix product in NumPy
    (``mapInArrow``); Spark SQL's higher-order functions evaluate the same d-long dot products
    element by element, about 5x slower.
    """
    import pyarrow as pa

    spread = {key: agg for key, agg in aggregates.items() if len(agg.counts) >= 2}
    if not spread:
        return {}
    tables = {None if key is None else str(key): agg.table() for key, agg in spread.items()}
    key = F.col(by).cast("string") if by else F.lit(None).cast("string")
    rows = df.select(key.alias("__key"), F.col(cluster).alias("__cluster"), F.col(features))
    schema_ddl = "__key string, __cluster long, distance double, score double, n long"
    schema = pa.schema(
        [
            ("__key", pa.string()),
            ("__cluster", pa.int64()),
            ("distance", pa.float64()),
            ("score", pa.float64()),
            ("n", pa.int64()),
        ]
    )

    def partial_sums(batches: Any) -> Any:
        for batch in batches:
            yield pa.RecordBatch.from_pylist(_distance_sums(batch, tables, features), schema)

    measured = (
        rows.mapInArrow(partial_sums, schema_ddl)
        .groupBy("__key", "__cluster")
        .agg(*[F.sum(c).alias(c) for c in ("distance", "score", "n")])
        .collect()
    )
    out: dict[Any, Distances] = {}
    for key_value, agg in spread.items():
        name = None if key_value is None else str(key_value)
        mine = {r["__cluster"]: r for r in measured if r["__key"] == name}
        scatter = np.array(
            [mine[c]["distance"] / mine[c]["n"] for c in agg.cluster_ids], dtype=np.float64
        )
        total = sum(r["score"] for r in mine.values()) / sum(r["n"] for r in mine.values())
        out[key_value] = Distances(scatter, float(total))
    return out


def _distance_sums(
    batch: Any, tables: dict[Any, tuple[Any, ...]], features: str
) -> list[dict[str, Any]]:
    """Per (clustering, cluster) of one Arrow batch: the sum of the rows' Euclidean distances
    to their centroid, the sum of their silhouettes and their count (:func:`distance_pass`)."""
    keys = np.array(batch.column("__key").to_pylist(), dtype=object)
    labels = batch.column("__cluster").to_numpy(zero_copy_only=False)
    points = array_rows(batch.column(features))
    sums: list[dict[str, Any]] = []
    for key in dict.fromkeys(keys.tolist()):
        if key not in tables:
            continue
        mine = keys == key
        ids = tables[key][0]
        distance, score, n = cluster_distance_sums(points[mine], labels[mine], tables[key], key)
        sums.extend(
            {
                "__key": key,
                "__cluster": int(ids[i]),
                "distance": float(distance[i]),
                "score": float(score[i]),
                "n": int(n[i]),
            }
            for i in np.flatnonzero(n)
        )
    return sums


def cluster_distance_sums(
    x: np.ndarray, labels: np.ndarray, table: tuple[Any, ...], key: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows ``x`` ((n, d) float64) of one clustering with ``labels`` ((n,)), and that
    clustering's ``table`` (cluster ids (k,) sorted, centroids (k, d), sizes (k,), mean squared
    norms (k,), from its :class:`ClusterAggregates`): per cluster, in the table's order, the sum
    of the rows' Euclidean distances to their centroid, the sum of their squared-Euclidean
    silhouettes (:func:`distance_pass`) and their count, three (k,) arrays.  ``ValueError``
    when a row's label is not among the table's clusters."""
    ids, means, sizes, mean_sq = table
    own = np.searchsorted(ids, labels)
    if not (own < len(ids)).all() or not (ids[np.minimum(own, len(ids) - 1)] == labels).all():
        raise ValueError(f"clustering {key!r}: a row's cluster is not in its aggregates")
    rows = np.arange(len(x))
    # Mean squared distance from each row to every cluster's rows (itself included).
    to_cluster = (x**2).sum(axis=1)[:, None] + mean_sq[None, :] - 2.0 * x @ means.T
    size = sizes[own]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(size > 1, to_cluster[rows, own] * size / (size - 1), 0.0)
        to_cluster[rows, own] = np.inf
        b = to_cluster.min(axis=1)
        score = np.where(
            size <= 1, 0.0, np.where(a < b, 1 - a / b, np.where(a > b, b / a - 1, 0.0))
        )
    distance = np.sqrt(((x - means[own]) ** 2).sum(axis=1))
    k = len(ids)
    return (
        np.bincount(own, weights=distance, minlength=k),
        np.bincount(own, weights=score, minlength=k),
        np.bincount(own, minlength=k),
    )


def davies_bouldin_index(agg: ClusterAggregates, scatter: np.ndarray) -> float:
    """Mean over clusters of the worst (scatter_i + scatter_j) / distance(c_i, c_j) (Davies and
    Bouldin, 1979); ``scatter``: each cluster's mean Euclidean distance to its centroid
    (:class:`Distances`).  NaN for k < 2."""
    if len(agg.counts) < 2:
        return float("nan")
    gaps = np.linalg.norm(agg.centroids[:, None, :] - agg.centroids[None, :, :], axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (scatter[:, None] + scatter[None, :]) / gaps
    np.fill_diagonal(ratios, -np.inf)
    return float(np.nanmax(np.where(np.isfinite(ratios), ratios, -np.inf), axis=1).mean())


def davies_bouldin(
    df: DataFrame,
    agg: ClusterAggregates,
    *,
    features: str = "embedding",
    cluster: str = "cluster_id",
) -> float:
    """Davies-Bouldin index of one clustering (:func:`davies_bouldin_index` with the scatter
    of :func:`distance_pass`); ``agg`` must be :func:`cluster_aggregates` of the same ``df``.
    NaN for k < 2."""
    passed = distance_pass(df, {None: agg}, by=None, features=features, cluster=cluster)
    return davies_bouldin_index(agg, passed[None].scatter) if passed else float("nan")


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
