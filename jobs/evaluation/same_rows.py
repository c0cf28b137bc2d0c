"""Metrics on the cluster run's own rows: the embedding and every baseline refitted on the same
rows and k, plus the stability of the embedding's segments."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.core.config import AppConfig, EvaluateConfig
from jobs.core.session import bind_to_thread
from jobs.evaluation.measure import (
    METHOD,
    LocalRows,
    external_metrics_by,
    external_metrics_local,
    fetch_rows,
    internal_metrics_by,
    internal_metrics_local,
    sample_ids,
)
from jobs.evaluation.methods import SEGMENT, NotApplicable, baseline_fitters
from jobs.evaluation.stability import refit_seeds, segment_jaccard, stability_metrics

log = logging.getLogger(__name__)


def same_rows_metrics(
    config: AppConfig,
    rows: DataFrame,
    sequences: DataFrame,
    truth: DataFrame | None,
    *,
    k: int,
) -> tuple[dict[str, dict[str, float]], dict[tuple[str, str], str], dict[int, float]]:
    """Metrics by method on the run's rows, what was not applicable (``(method, metric)`` ->
    reason), and the run's per-segment Jaccard (cluster id -> mean, in [0, 1]).

    ``rows``: the run's ``id``, ``user_id``, ``cluster_id``, ``embedding``; ``sequences``: their
    ``id``, ``user_id``, ``events``; ``truth``: ``user_id``, ``persona`` or None.  Each baseline
    is refitted on the full sequences with ``k`` segments; internal metrics are measured in the
    embedding space for every method, external ones against ``truth``; stability (seed refits,
    bootstrap Jaccard) for the embedding.  Runs Spark jobs.
    """
    cfg, cluster = config.evaluate, config.cluster
    results: dict[str, dict[str, float]] = {}
    skipped: dict[tuple[str, str], str] = {}
    units = sequences.select("id", "user_id", "events").persist(StorageLevel.MEMORY_AND_DISK)
    fits = {
        method: fit
        for method, fit in baseline_fitters(config, k).items()
        if method != "global_baseline"  # one segment: nothing to measure on the same rows
    }
    run = rows.select("id", F.col("cluster_id").alias(SEGMENT))
    segments: dict[str, DataFrame] = {"embedding": run}

    def fit_baseline(method: str, fit: Callable[[DataFrame], DataFrame]) -> None:
        started = time.perf_counter()
        try:
            segments[method] = fit(units).localCheckpoint(eager=True)
        except NotApplicable as reason:
            skipped[(method, "*")] = str(reason)
            return
        log.info("same rows: %s fitted in %.1fs", method, time.perf_counter() - started)

    stability: dict[str, float] = {}
    jaccard: dict[int, float] = {}

    def measure_seed_refits() -> None:
        started = time.perf_counter()
        seeds = refit_seeds(cluster.seed, cfg.stability_seeds)
        stability.update(stability_metrics(rows, k=k, cluster=cluster, seeds=seeds))
        log.info("same rows: seed refits in %.1fs", time.perf_counter() - started)

    def measure_bootstraps() -> None:
        started = time.perf_counter()
        jaccard.update(
            segment_jaccard(
                rows, k=k, cluster=cluster, bootstraps=cfg.stability_bootstraps, seed=cfg.seed
            )
        )
        log.info("same rows: bootstrap refits in %.1fs", time.perf_counter() - started)

    try:
        # Independent fits, two at a time: on small data Spark's per-job overhead dominates,
        # and a second driver thread keeps the executors busy meanwhile.  Every fit is seeded,
        # so the values do not depend on the interleaving.
        with ThreadPoolExecutor(
            max_workers=2,
            thread_name_prefix="same-rows",
            initializer=bind_to_thread,
            initargs=(rows.sparkSession,),
        ) as pool:
            tasks = [pool.submit(fit_baseline, method, fit) for method, fit in fits.items()]
            if cfg.stability_seeds > 0:
                tasks.append(pool.submit(measure_seed_refits))
            if cfg.stability_bootstraps > 0:
                tasks.append(pool.submit(measure_bootstraps))
            for task in tasks:
                task.result()
    finally:
        units.unpersist()
    # On data the K-Means refits fetch to the driver, the metrics are computed there too.
    bound = cluster.init_sample if cluster.algorithm == "kmeans" else 0
    results.update(
        _measure(rows, segments, truth, k=k, config=cfg, local_rows=bound, skipped=skipped)
    )
    results = {m: results[m] for m in ("embedding", *fits) if m in results}
    skipped[("global_baseline", "internal")] = "one segment: partition metrics do not apply"
    emb = results["embedding"]
    emb.update(stability)
    unsplittable = "every refit's rows held a single distinct point"
    if cfg.stability_seeds > 0 and not stability:
        skipped[("embedding", "stability_*")] = unsplittable
    if cfg.stability_bootstraps > 0 and not jaccard:
        skipped[("embedding", "segment_jaccard_*")] = unsplittable
    if jaccard:
        emb["segment_jaccard_mean"] = float(np.mean(list(jaccard.values())))
        emb["segment_jaccard_min"] = float(min(jaccard.values()))
    return results, skipped, jaccard


def _measure(
    rows: DataFrame,
    segments: dict[str, DataFrame],
    truth: DataFrame | None,
    *,
    k: int,
    config: EvaluateConfig,
    local_rows: int,
    skipped: dict[tuple[str, str], str],
) -> dict[str, dict[str, float]]:
    """Internal (and, with ``truth``, external) metrics of every method's ``segments`` (``id``,
    ``segment``) on the run's ``rows``, all methods in the same few jobs
    (:mod:`jobs.evaluation.measure`), or on the driver when the rows are at most
    ``local_rows``; what is not applicable goes to ``skipped``."""
    started = time.perf_counter()
    labels = [
        frame.select(F.lit(method).alias(METHOD), "id", F.col(SEGMENT).alias("cluster_id"))
        for method, frame in segments.items()
    ]
    stacked = labels[0]
    for more in labels[1:]:
        stacked = stacked.unionByName(more)
    ids = sample_ids(rows, sample=config.silhouette_sample, seed=config.seed)
    local = fetch_rows(rows, at_most=local_rows)
    if local is not None:
        values, external = _measure_local(rows, local, stacked, ids, truth, k=k, skipped=skipped)
        where = "on the driver"
    else:
        # Read by every pass below: joined once.
        long = stacked.join(rows.drop("cluster_id"), "id").persist(StorageLevel.MEMORY_AND_DISK)
        try:
            values, reasons = internal_metrics_by(long, sample_ids=ids, k=k)
            _skip(skipped, reasons)
            external = external_metrics_by(long, truth) if truth is not None else None
        finally:
            long.unpersist()
        where = "on Spark"
    if external is not None:
        if "embedding" not in external:
            log.warning("the ground truth matches no clustered user: external metrics skipped")
        for method, agreement in external.items():
            values[method].update(agreement)
    log.info(
        "same rows: %d methods measured %s in %.1fs",
        len(segments),
        where,
        time.perf_counter() - started,
    )
    return values


def _measure_local(
    rows: DataFrame,
    local: LocalRows,
    stacked: DataFrame,
    ids: DataFrame,
    truth: DataFrame | None,
    *,
    k: int,
    skipped: dict[tuple[str, str], str],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]] | None]:
    """:func:`_measure`'s metrics from the rows fetched to the driver (``local``): the labels
    and the truth of the rows' users come in one small fetch each."""
    labels = stacked.toArrow()
    values, reasons = internal_metrics_local(
        local,
        labels,
        sample_ids=ids.toArrow().column("id").to_pylist(),
        # Only the cosine silhouette of non-unit vectors reads it (Spark's evaluator).
        long=stacked.join(rows.drop("cluster_id"), "id"),
        k=k,
    )
    _skip(skipped, reasons)
    if truth is None:
        return values, None
    users = rows.select("user_id").distinct()
    matched = truth.join(users, "user_id", "left_semi").select("user_id", "persona").toArrow()
    return values, external_metrics_local(local, labels, matched)


def _skip(skipped: dict[tuple[str, str], str], reasons: dict[str, dict[str, str]]) -> None:
    for method, why in reasons.items():
        skipped.update({(method, name): reason for name, reason in why.items()})
