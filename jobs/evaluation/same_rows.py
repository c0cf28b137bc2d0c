"""Metrics on the cluster run's own rows: the embedding and every baseline refitted on the same
rows and k, plus the stability of the embedding's segments."""

from __future__ import annotations

import logging

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.core.config import AppConfig
from jobs.evaluation.external import external_metrics
from jobs.evaluation.internal import internal_metrics
from jobs.evaluation.methods import SEGMENT, NotApplicable, baseline_fitters
from jobs.evaluation.stability import refit_seeds, segment_jaccard, stability_metrics

log = logging.getLogger(__name__)


def _method_rows(rows: DataFrame, segments: DataFrame) -> DataFrame:
    """The run's rows (embeddings) with another method's segments as ``cluster_id``."""
    return rows.drop("cluster_id").join(
        segments.select("id", F.col(SEGMENT).alias("cluster_id")), "id"
    )


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
    try:
        run = rows.select("id", F.col("cluster_id").alias(SEGMENT))
        for method, fit in {"embedding": lambda _: run, **fits}.items():
            try:
                segments = fit(units).localCheckpoint(eager=True)
            except NotApplicable as reason:
                skipped[(method, "*")] = str(reason)
                continue
            # Read by five metric passes: joined once.
            labelled = _method_rows(rows, segments).persist(StorageLevel.MEMORY_AND_DISK)
            values, reasons = internal_metrics(
                labelled, sample=cfg.silhouette_sample, seed=cfg.seed
            )
            skipped.update({(method, name): why for name, why in reasons.items()})
            if truth is not None:
                external = external_metrics(labelled, truth)
                if not external and method == "embedding":
                    log.warning(
                        "the ground truth matches no clustered user: external metrics skipped"
                    )
                values.update(external)
            labelled.unpersist()
            results[method] = values
    finally:
        units.unpersist()
    skipped[("global_baseline", "internal")] = "one segment: partition metrics do not apply"
    emb = results["embedding"]
    if cfg.stability_seeds > 0:
        seeds = refit_seeds(cluster.seed, cfg.stability_seeds)
        emb.update(stability_metrics(rows, k=k, cluster=cluster, seeds=seeds))
    jaccard: dict[int, float] = {}
    if cfg.stability_bootstraps > 0:
        jaccard = segment_jaccard(
            rows, k=k, cluster=cluster, bootstraps=cfg.stability_bootstraps, seed=cfg.seed
        )
        if jaccard:
            emb["segment_jaccard_mean"] = float(np.mean(list(jaccard.values())))
            emb["segment_jaccard_min"] = float(min(jaccard.values()))
    return results, skipped, jaccard
