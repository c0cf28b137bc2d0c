"""Stability: does K-Means find the same clusters when only the seed changes (seed-refit ARI /
NMI), and which segments survive a bootstrap of the units (per-segment Jaccard)?"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.clustering.kmeans import (
    PREDICTION,
    SingleCluster,
    fit_on_driver,
    kmeans_estimator,
    with_features,
)
from jobs.core.config import ClusterConfig
from jobs.evaluation.external import adjusted_rand_index, contingency, normalized_mutual_info
from jobs.evaluation.internal import array_rows


def refit_seeds(base_seed: int, count: int) -> list[int]:
    """The ``count`` seeds the refits use: ``base_seed + 1000``, ``+ 2000``, ..."""
    return [base_seed + 1000 * (i + 1) for i in range(count)]


def stability_metrics(
    rows: DataFrame, *, k: int, cluster: ClusterConfig, seeds: list[int]
) -> dict[str, float]:
    """Agreement between the run's assignments and CPU K-Means refits of the same embeddings.

    ``rows``: ``id``, ``embedding``, ``cluster_id`` (the run's labels).  One refit per seed in
    ``seeds`` (non-empty), with ``cluster``'s other settings.  Returns ``stability_ari_mean``,
    ``stability_ari_sd`` (sample sd, 0.0 for a single seed) and ``stability_nmi_mean``, or ``{}``
    when no refit could be made (its rows held a single distinct point: a refit that
    cannot split the rows is left out, not an error).  Rows that fit ``cluster.init_sample``
    are fetched once (per call) and refitted on the driver
    (:func:`jobs.clustering.kmeans.fit_on_driver`).
    """
    local = _driver_rows(rows, cluster)
    if local is not None:
        points, run = local
        tables = []
        for seed in seeds:
            try:
                labels, _ = fit_on_driver(points, k=k, config=replace(cluster, seed=seed))
            except SingleCluster:
                continue
            tables.append(_contingency(run, labels))
        return _agreement(tables)
    features = rows.select("id", "embedding").transform(with_features).cache()
    tables = []
    try:
        for seed in seeds:
            try:
                model = kmeans_estimator("cpu", k, replace(cluster, seed=seed)).fit(features)
            except SingleCluster:
                continue
            refit = model.transform(features).select("id", F.col(PREDICTION).alias("__refit"))
            tables.append(contingency(rows.join(refit, "id"), "cluster_id", "__refit"))
    finally:
        features.unpersist()
    return _agreement(tables)


def _agreement(tables: list[np.ndarray]) -> dict[str, float]:
    """The stability metrics of the run-versus-refit contingency tables (``{}`` for none)."""
    if not tables:
        return {}
    aris = [adjusted_rand_index(table) for table in tables]
    nmis = [normalized_mutual_info(table) for table in tables]
    return {
        "stability_ari_mean": float(np.mean(aris)),
        "stability_ari_sd": float(np.std(aris, ddof=1)) if len(aris) > 1 else 0.0,
        "stability_nmi_mean": float(np.mean(nmis)),
    }


#: clusterboot's reading of a segment's mean Jaccard (Hennig, 2007; R package fpc).
DISSOLVED_BELOW = 0.5
STABLE_FROM = 0.75


def jaccard_label(value: float | None) -> str:
    """``stable`` (>= 0.75), ``dissolved`` (< 0.5), ``doubtful`` between, ``-`` unknown."""
    if value is None or not np.isfinite(value):
        return "-"
    if value >= STABLE_FROM:
        return "stable"
    return "dissolved" if value < DISSOLVED_BELOW else "doubtful"


def best_jaccard(table: np.ndarray) -> np.ndarray:
    """Per row cluster of a contingency ``table`` (original x refit counts over the same
    points), the highest Jaccard similarity with any refit cluster:
    ``n_ij / (n_i. + n_.j - n_ij)``.  Rows without points are NaN."""
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    union = rows[:, None] + cols[None, :] - table
    with np.errstate(divide="ignore", invalid="ignore"):
        jaccard = np.where(union > 0, table / union, np.nan)
    best = np.full(table.shape[0], np.nan)
    has_points = rows > 0
    best[has_points] = np.nanmax(jaccard[has_points], axis=1)
    return best


def segment_jaccard(
    rows: DataFrame, *, k: int, cluster: ClusterConfig, bootstraps: int, seed: int
) -> dict[int, float]:
    """Per-segment stability by the bootstrap (``fpc::clusterboot``, Hennig 2007): for each of
    ``bootstraps`` resamples of the rows (with replacement), refit K-Means (CPU, ``cluster``'s
    settings, ``k``), and for each of the run's segments take the best Jaccard similarity with a
    refit cluster over the resampled points; return each segment's mean over the resamples.
    As in ``clusterboot`` (its Jaccard of an empty set is 0), a segment none of whose rows was
    drawn scores 0 in that resample: a small segment that most resamples miss is not stable.
    A resample that holds a single distinct point (e.g. it missed the one row that differs)
    cannot be split and is left out (there ``clusterboot`` would still score it).

    ``rows``: ``id``, ``embedding``, ``cluster_id`` (the run's segments, ids in [0, k)).  Each
    refit is one K-Means fit and one ``groupBy`` (O(n·k)); the k x k tables reach the driver.
    Rows that fit ``cluster.init_sample`` are fetched once (per call) and refitted on the driver
    (:func:`_driver_segment_jaccard`).  Empty when no resample could be split.
    """
    local = _driver_rows(rows, cluster)
    if local is not None:
        return _driver_segment_jaccard(
            *local, k=k, cluster=cluster, bootstraps=bootstraps, seed=seed
        )
    features = (
        rows.select("id", "embedding", F.col("cluster_id").alias("__run"))
        .transform(with_features)
        .cache()
    )
    per_segment: dict[int, list[float]] = {}
    try:
        segments = sorted(int(r["__run"]) for r in features.select("__run").distinct().collect())
        for b in range(bootstraps):
            sample = features.sample(withReplacement=True, fraction=1.0, seed=seed + 7919 * b)
            estimator = kmeans_estimator("cpu", k, replace(cluster, seed=cluster.seed + b + 1))
            try:
                model = estimator.fit(sample)
            except SingleCluster:
                continue
            points = features.join(sample.select("id").distinct(), "id")
            refit = model.transform(points).select("__run", F.col(PREDICTION).alias("__b"))
            counts = refit.groupBy("__run", "__b").count().collect()
            if not counts:
                continue
            ids = sorted({int(r["__run"]) for r in counts})
            width = 1 + max(int(r["__b"]) for r in counts)
            table = np.zeros((len(ids), width))
            position = {c: i for i, c in enumerate(ids)}
            for r in counts:
                table[position[int(r["__run"])], int(r["__b"])] = r["count"]
            _add_resample(per_segment, segments, dict(zip(ids, best_jaccard(table), strict=True)))
    finally:
        features.unpersist()
    return {segment: float(np.mean(values)) for segment, values in sorted(per_segment.items())}


def _add_resample(
    per_segment: dict[int, list[float]], segments: list[int], best: dict[int, float]
) -> None:
    """Record one resample's best Jaccard per segment (``best``: the segments with rows in
    the resample) for every one of the run's ``segments``: 0 for a segment absent from it."""
    for segment in segments:
        value = best.get(segment, 0.0)
        per_segment.setdefault(segment, []).append(float(value) if np.isfinite(value) else 0.0)


def _contingency(run: np.ndarray, refit: np.ndarray) -> np.ndarray:
    """The (run segments x refit clusters) count table of two label arrays of the same rows,
    rows and columns in sorted label order, as float64 (scikit-learn's ``contingency_matrix``;
    imported here so that scikit-learn, and joblib's multiprocessing set-up, stay out of every
    stage's start-up, as with the other scikit-learn helpers)."""
    from sklearn.metrics.cluster import contingency_matrix

    return np.asarray(contingency_matrix(run, refit), dtype=np.float64)


def _driver_rows(rows: DataFrame, cluster: ClusterConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """``(points (n, d) float64, run labels (n,))`` of ``rows`` fetched once through Arrow when
    the refits can run on the driver (``cluster.algorithm`` kmeans and n <= ``init_sample``:
    :func:`jobs.clustering.kmeans.fit_on_driver`); None otherwise (refit on Spark)."""
    if cluster.algorithm != "kmeans":
        return None
    table = rows.select("embedding", "cluster_id").limit(cluster.init_sample + 1).toArrow()
    n = table.num_rows
    if n > cluster.init_sample:
        return None
    return array_rows(table.column("embedding")), table.column("cluster_id").to_numpy(
        zero_copy_only=False
    )


def _driver_segment_jaccard(
    points: np.ndarray,
    run: np.ndarray,
    *,
    k: int,
    cluster: ClusterConfig,
    bootstraps: int,
    seed: int,
) -> dict[int, float]:
    """:func:`segment_jaccard` on the driver: each resample draws n of the n rows with
    replacement (the classic bootstrap of ``clusterboot``; the Spark path's Poisson sampling
    approximates it), the refit labels each distinct drawn row, and the run's segments are
    compared with the refit's clusters over those rows."""
    per_segment: dict[int, list[float]] = {}
    n, segments = len(run), [int(s) for s in np.unique(run)]
    for b in range(bootstraps):
        drawn = np.random.default_rng(seed + 7919 * b).integers(0, n, n)
        settings = replace(cluster, seed=cluster.seed + b + 1)
        try:
            labels, _ = fit_on_driver(points[drawn], k=k, config=settings)
        except SingleCluster:
            continue
        rows, first = np.unique(drawn, return_index=True)  # a row's copies share a centre
        present, table = np.unique(run[rows]), _contingency(run[rows], labels[first])
        best = dict(zip((int(s) for s in present), best_jaccard(table), strict=True))
        _add_resample(per_segment, segments, best)
    return {segment: float(np.mean(values)) for segment, values in sorted(per_segment.items())}
