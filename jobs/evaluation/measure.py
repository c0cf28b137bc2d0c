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
"""

from __future__ import annotations

import math

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
    ClusterAggregates,
    Distances,
    aggregates_by,
    calinski_harabasz,
    davies_bouldin_index,
    distance_pass,
    silhouette,
    size_balance,
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
    """scikit-learn's squared-Euclidean silhouette of each clustering on the sampled rows (one
    job fetches them), where the sample has two clusters and more rows than clusters."""
    from sklearn.metrics import silhouette_score

    table = (
        long.join(F.broadcast(sample_ids), "id")
        .select(METHOD, "cluster_id", "embedding")
        .toArrow()  # in any order: a silhouette does not depend on the rows' order
    )
    methods = np.array(table.column(METHOD).to_pylist(), dtype=object)
    labels = table.column("cluster_id").to_numpy(zero_copy_only=False)
    vectors = table.column("embedding").combine_chunks()
    flat = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    points = flat.reshape(len(labels), -1) if len(labels) else np.zeros((0, 0))
    out: dict[str, float] = {}
    for method in dict.fromkeys(methods.tolist()):
        mine = methods == method
        kinds = len(np.unique(labels[mine]))
        if kinds > 1 and mine.sum() > kinds:
            out[method] = float(silhouette_score(points[mine], labels[mine], metric="sqeuclidean"))
    return out


def external_metrics(df: DataFrame, truth: DataFrame) -> dict[str, float]:
    """:func:`external_metrics_by` of one clustering (``user_id``, ``cluster_id`` rows); ``{}``
    when no row has a truth label."""
    return external_metrics_by(df.withColumn(METHOD, F.lit("_")), truth).get("_", {})


def external_metrics_by(long: DataFrame, truth: DataFrame) -> dict[str, dict[str, float]]:
    """``ari_vs_truth``, ``nmi_vs_truth`` and ``purity_vs_truth`` of each clustering in ``long``
    (``method``, ``user_id``, ``cluster_id``) against ``truth.persona``, joined on ``user_id``
    (rows without a truth label are left out), from one ``groupBy`` of every clustering's
    contingency table; a clustering with no labelled row is absent."""
    rows = long.join(truth, "user_id").groupBy(METHOD, "persona", "cluster_id").count().collect()
    out: dict[str, dict[str, float]] = {}
    for method in sorted({r[METHOD] for r in rows}):
        table = count_table([r for r in rows if r[METHOD] == method], "persona", "cluster_id")
        out[method] = {
            "ari_vs_truth": adjusted_rand_index(table),
            "nmi_vs_truth": normalized_mutual_info(table),
            "purity_vs_truth": purity(table),
        }
    return out
