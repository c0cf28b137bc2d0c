"""Internal and external metrics of several clusterings of the same rows, in a fixed handful of
Spark jobs (about six) whatever the number of clusterings.

``evaluate`` measures the run's segments and every baseline's on the same embeddings.  Their
labels are stacked into one long frame (``method``, ``id``, ``user_id``, ``cluster_id``,
``embedding``), and each pass groups by ``method`` as well as by cluster: one job for every
clustering's aggregates (:func:`jobs.evaluation.internal.aggregates_by`), one for the
Davies-Bouldin scatter and the squared-Euclidean silhouette
(:func:`jobs.evaluation.internal.distance_pass`), two for the exact-silhouette cross-check (the
seeded sample's ids, then their rows), one contingency table against the ground truth.  Measured
one clustering at a time this was about eight jobs per clustering (on small data most of
``evaluate``'s time was Spark's fixed cost per job).  All stays O(n·k·d) per clustering.

Rows that fit on the driver (:func:`fetch_rows`, bounded by ``cluster.init_sample`` as the
K-Means refits are) skip those passes: the rows and every clustering's labels are fetched once
through Arrow, and the same per-cluster sums are computed in NumPy
(:func:`internal_metrics_local`, :func:`external_metrics_local`).  The closed forms that turn
the sums into metrics are shared by both paths, so they agree to floating-point rounding
(tests/test_quality.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.evaluation.external import (
    adjusted_rand_index,
    count_table,
    normalized_mutual_info,
    purity,
)
from jobs.evaluation.internal import (
    UNIT_TOLERANCE,
    ClusterAggregates,
    Distances,
    aggregates_by,
    array_rows,
    calinski_harabasz,
    cluster_distance_sums,
    davies_bouldin_index,
    distance_pass,
    silhouette,
    size_balance,
    squared_norm_column,
    sse,
)

METHOD = "method"
#: Metrics that need two clusters; a clustering with one gets them all as not applicable.
_NEEDS_TWO = (
    "calinski_harabasz",
    "davies_bouldin",
    "silhouette_sqeuclidean",
    "silhouette_cosine",
    "silhouette_exact_sample",
)


def internal_metrics(
    df: DataFrame, *, sample: int, seed: int, k: int | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """:func:`internal_metrics_by` of one clustering (``embedding`` / ``cluster_id`` rows, with
    or without an ``id``; the exact silhouette's sample is :func:`sample_ids` of ``df``)."""
    if "id" not in df.columns:
        df = df.withColumn("id", F.monotonically_increasing_id()).localCheckpoint()
    ids = sample_ids(df, sample=sample, seed=seed)
    values, skipped = internal_metrics_by(df.withColumn(METHOD, F.lit("_")), sample_ids=ids, k=k)
    return values["_"], skipped["_"]


def sample_ids(rows: DataFrame, *, sample: int, seed: int) -> DataFrame:
    """``id`` of a seeded random sample of at most ``sample`` of ``rows`` (the same rows for the
    same data, partitioning and seed), as a small local frame: every clustering's exact
    silhouette is measured on the same rows."""
    table = rows.orderBy(F.rand(seed)).limit(sample).select("id").toArrow()
    return rows.sparkSession.createDataFrame(table)


@dataclass(frozen=True)
class LocalRows:
    """Evaluated rows fetched to the driver (:func:`fetch_rows`), in one order."""

    ids: np.ndarray  # (n,) unit ids
    user_ids: np.ndarray  # (n,)
    points: np.ndarray  # (n, d) float64 embeddings
    squared_norms: np.ndarray  # (n,) float64


def fetch_rows(rows: DataFrame, *, at_most: int) -> LocalRows | None:
    """``rows`` (``id``, ``user_id``, ``embedding``, optionally the norms of
    :func:`jobs.evaluation.internal.with_squared_norms`) on the driver through one Arrow fetch,
    or None when they are more than ``at_most`` (the fetch is bounded: at most ``at_most + 1``
    rows, about ``8 d`` bytes each once widened to float64)."""
    norm = squared_norm_column("embedding")
    columns = ["id", "user_id", "embedding"] + ([norm] if norm in rows.columns else [])
    table = rows.select(*columns).limit(at_most + 1).toArrow()
    if table.num_rows > at_most:
        return None
    points = array_rows(table.column("embedding"))
    norms = (
        table.column(norm).to_numpy().astype(np.float64)
        if norm in table.column_names
        else (points**2).sum(axis=1)
    )
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    users = np.array(table.column("user_id").to_pylist(), dtype=object)
    return LocalRows(ids, users, points, norms)


def _local_aggregates(local: LocalRows, at: np.ndarray, labels: np.ndarray) -> ClusterAggregates:
    """:func:`jobs.evaluation.internal.aggregates_by` of one clustering of the fetched rows:
    rows ``at`` (positions in ``local``) with cluster ``labels``."""
    ids, own = np.unique(labels, return_inverse=True)
    points, norms = local.points[at], local.squared_norms[at]
    sums = np.zeros((len(ids), points.shape[1]))
    for position in range(len(ids)):
        sums[position] = points[own == position].sum(axis=0)
    return ClusterAggregates(
        cluster_ids=ids,
        counts=np.bincount(own, minlength=len(ids)).astype(np.float64),
        sums=sums,
        squared_norms=np.bincount(own, weights=norms, minlength=len(ids)),
        zero_vectors=int((norms == 0).sum()),
        non_unit_vectors=int((np.abs(norms - 1.0) > UNIT_TOLERANCE).sum()),
    )


def _positions(local: LocalRows, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of a fetched ``method``, ``id``, ``cluster_id`` Arrow table: each label's method, row
    position in ``local`` (-1 when the id is not among the rows) and cluster id."""
    import pandas as pd

    methods = np.array(labels.column(METHOD).to_pylist(), dtype=object)
    at = pd.Index(local.ids).get_indexer(labels.column("id").to_pylist())
    clusters = labels.column("cluster_id").to_numpy(zero_copy_only=False)
    return methods, at, clusters


def internal_metrics_local(
    local: LocalRows,
    labels: Any,
    *,
    sample_ids: Any,
    long: DataFrame,
    k: int | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """:func:`internal_metrics_by` of rows already on the driver: ``local`` (:func:`fetch_rows`),
    ``labels`` an Arrow table of ``method``, ``id``, ``cluster_id`` (a label whose id is not
    among the rows is ignored, as the Spark path's join drops it), ``sample_ids`` the ids of the
    exact silhouette's sample (a sequence of Python strings: ``to_pylist()`` an Arrow array
    first, whose scalars would match no id).  ``long`` is the same data as the
    Spark path's frame, read only for the cosine silhouette of non-unit vectors."""
    methods, at, clusters = _positions(local, labels)
    sampled = np.isin(local.ids, np.array(list(sample_ids), dtype=object))
    in_sample_rows = np.flatnonzero(sampled)
    labelled = {
        method: ((methods == method) & (at >= 0)) for method in sorted(set(methods[at >= 0]))
    }
    groups = {
        method: (
            np.searchsorted(in_sample_rows, at[mine][sampled[at[mine]]]),
            clusters[mine][sampled[at[mine]]],
        )
        for method, mine in labelled.items()
    }
    exact = sample_silhouettes(local.points[in_sample_rows], groups)
    values: dict[str, dict[str, float]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for method, mine in labelled.items():
        rows, these = at[mine], clusters[mine]
        agg = _local_aggregates(local, rows, these)
        distances = None
        if len(agg.counts) >= 2:
            distance, score, n = cluster_distance_sums(local.points[rows], these, agg.table())
            distances = Distances(distance / n, float(score.sum() / n.sum()))
        values[method], skipped[method] = _metrics_of(
            long, method, agg, distances, exact.get(method), k
        )
    return values, skipped


def internal_metrics_by(
    long: DataFrame, *, sample_ids: DataFrame, k: int | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """Every internal metric that can be computed for each clustering in ``long``, and the
    reason for each one that cannot (every value returned is finite), both by ``method``.

    ``long``: ``method``, ``id``, ``cluster_id``, ``embedding`` (``array<float>`` or
    ``array<double>``) and optionally the norms of
    :func:`jobs.evaluation.internal.with_squared_norms`; ``sample_ids``: the ``id`` of the rows
    for ``silhouette_exact_sample`` (:func:`sample_ids`); ``k``: the segments asked for (empty
    ones count in the ``size_*`` metrics), None: those present.

    Not applicable: everything but ``sse`` and ``size_*`` for a single cluster; the cosine
    silhouette when a vector is all zeros; Calinski-Harabasz when every point sits on its
    centroid (clusters collapsed onto duplicate points: the ratio is infinite); Davies-Bouldin
    when centroids coincide; ``silhouette_exact_sample`` (scikit-learn, squared Euclidean) when
    the sample has a single cluster or no more rows than clusters.  For unit vectors (every
    embedding) the cosine silhouette equals the squared-Euclidean one (``||x - y||^2 =
    2 (1 - cos)``, so the two silhouettes, ratios of such means, are equal) and is not measured
    twice; otherwise it is Spark's ``ClusteringEvaluator``, one clustering at a time.
    """
    aggregates = aggregates_by(long, by=METHOD)
    distances = distance_pass(long, aggregates, by=METHOD)
    exact = _exact_sample_silhouettes(long, sample_ids)
    values: dict[str, dict[str, float]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for method, agg in aggregates.items():
        values[method], skipped[method] = _metrics_of(
            long, method, agg, distances.get(method), exact.get(method), k
        )
    return values, skipped


def _metrics_of(
    long: DataFrame,
    method: str,
    agg: ClusterAggregates,
    distances: Distances | None,
    exact: float | None,
    k: int | None,
) -> tuple[dict[str, float], dict[str, str]]:
    values = {"sse": sse(agg), **size_balance(agg, k=k)}
    skipped: dict[str, str] = {}
    if distances is None:  # a single cluster
        return values, dict.fromkeys(_NEEDS_TWO, "a single cluster")
    candidates = {
        "calinski_harabasz": (
            calinski_harabasz(agg),
            "every point sits on its centroid (clusters collapsed onto duplicate points)",
        ),
        "davies_bouldin": (
            davies_bouldin_index(agg, distances.scatter),
            "cluster centroids coincide",
        ),
        "silhouette_sqeuclidean": (distances.silhouette_sqeuclidean, "undefined on these points"),
    }
    if agg.zero_vectors:
        skipped["silhouette_cosine"] = f"{agg.zero_vectors:,} all-zero vectors have no direction"
    elif agg.non_unit_vectors:
        one = long.where(F.col(METHOD) == method)
        candidates["silhouette_cosine"] = (
            silhouette(one, distance="cosine"),
            "undefined on these points",
        )
    elif math.isfinite(distances.silhouette_sqeuclidean):
        candidates["silhouette_cosine"] = (distances.silhouette_sqeuclidean, "")
    for name, (value, reason) in candidates.items():
        if math.isfinite(value):
            values[name] = value
        else:
            skipped[name] = reason
    if exact is None:
        skipped["silhouette_exact_sample"] = "the sample has a single cluster or too few rows"
    else:
        values["silhouette_exact_sample"] = exact
    return values, skipped


def _exact_sample_silhouettes(long: DataFrame, sample_ids: DataFrame) -> dict[str, float]:
    """:func:`sample_silhouettes` of each clustering in ``long`` on the sampled rows (one job
    fetches them)."""
    import pandas as pd

    table = (
        long.join(F.broadcast(sample_ids), "id")
        .select(METHOD, "id", "cluster_id", "embedding")
        .toArrow()  # in any order: a silhouette does not depend on the rows' order
    )
    methods = np.array(table.column(METHOD).to_pylist(), dtype=object)
    labels = table.column("cluster_id").to_numpy(zero_copy_only=False)
    # Every clustering labels the same sampled rows: each row's vector is kept once.
    ids = pd.Index(table.column("id").to_pylist())
    distinct = ~ids.duplicated()
    at = ids[distinct].get_indexer(ids)
    points = array_rows(table.column("embedding"))
    groups = {
        method: (at[methods == method], labels[methods == method])
        for method in dict.fromkeys(methods.tolist())
    }
    return sample_silhouettes(points[distinct], groups)


#: Largest sample whose pairwise distances are held at once (5,000 rows: 200 MB of doubles).
SHARED_DISTANCE_ROWS = 5000


def sample_silhouettes(
    points: np.ndarray, groups: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """scikit-learn's squared-Euclidean silhouette of each clustering of the sampled
    ``points`` ((m, d) float64): ``groups`` maps a method to the positions of the rows it
    labels and their labels.  Methods whose rows hold a single cluster, or no more rows than
    clusters, are left out.  Up to :data:`SHARED_DISTANCE_ROWS` points, the (m, m) distances
    are computed once (SciPy's ``pdist``, as scikit-learn computes them for
    ``metric="sqeuclidean"``) and shared by every method; a larger sample is left to
    scikit-learn, which computes them in bounded chunks for each method."""
    from scipy.spatial.distance import pdist, squareform
    from sklearn.metrics import silhouette_score

    shared = None
    if 1 < len(points) <= SHARED_DISTANCE_ROWS:
        shared = squareform(pdist(points, "sqeuclidean"))
    out: dict[str, float] = {}
    for method, (at, labels) in groups.items():
        kinds = len(np.unique(labels))
        if kinds < 2 or len(at) <= kinds:
            continue
        if shared is None:
            score = silhouette_score(points[at], labels, metric="sqeuclidean")
        else:
            score = silhouette_score(shared[np.ix_(at, at)], labels, metric="precomputed")
        out[method] = float(score)
    return out


def external_metrics(df: DataFrame, truth: DataFrame) -> dict[str, float]:
    """:func:`external_metrics_by` of one clustering (``user_id``, ``cluster_id`` rows); ``{}``
    when no row has a truth label."""
    return external_metrics_by(df.withColumn(METHOD, F.lit("_")), truth).get("_", {})


def external_metrics_local(
    local: LocalRows, labels: Any, truth: Any
) -> dict[str, dict[str, float]]:
    """:func:`external_metrics_by` of rows already on the driver: ``labels`` as in
    :func:`internal_metrics_local`, ``truth`` an Arrow table of ``user_id``, ``persona`` (a user
    listed twice counts twice, as in the Spark path's join)."""
    import pandas as pd

    methods, at, clusters = _positions(local, labels)
    kept = at >= 0
    labelled = pd.DataFrame(
        {
            METHOD: methods[kept],
            "user_id": local.user_ids[at[kept]],
            "cluster_id": clusters[kept],
        }
    ).merge(truth.select(["user_id", "persona"]).to_pandas(), on="user_id")
    counts = labelled.groupby([METHOD, "persona", "cluster_id"]).size().reset_index(name="count")
    return _agreement_by(counts.to_dict("records"))


def external_metrics_by(long: DataFrame, truth: DataFrame) -> dict[str, dict[str, float]]:
    """``ari_vs_truth``, ``nmi_vs_truth`` and ``purity_vs_truth`` of each clustering in ``long``
    (``method``, ``user_id``, ``cluster_id``) against ``truth.persona``, joined on ``user_id``
    (rows without a truth label are left out), from one ``groupBy`` of every clustering's
    contingency table; a clustering with no labelled row is absent."""
    rows = long.join(truth, "user_id").groupBy(METHOD, "persona", "cluster_id").count().collect()
    return _agreement_by(rows)


def _agreement_by(rows: list[Any]) -> dict[str, dict[str, float]]:
    """ARI, NMI and purity against the truth of each method in ``rows`` (``method``,
    ``persona``, ``cluster_id``, ``count``: every method's contingency table, stacked)."""
    out: dict[str, dict[str, float]] = {}
    for method in sorted({r[METHOD] for r in rows}):
        table = count_table([r for r in rows if r[METHOD] == method], "persona", "cluster_id")
        out[method] = {
            "ari_vs_truth": adjusted_rand_index(table),
            "nmi_vs_truth": normalized_mutual_info(table),
            "purity_vs_truth": purity(table),
        }
    return out
