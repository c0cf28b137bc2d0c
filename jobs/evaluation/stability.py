"""Stability: does K-Means find the same clusters when only the seed changes?"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.clustering.kmeans import PREDICTION, kmeans_estimator, with_features
from jobs.core.config import ClusterConfig
from jobs.evaluation.external import adjusted_rand_index, contingency, normalized_mutual_info


def refit_seeds(base_seed: int, count: int) -> list[int]:
    """The ``count`` seeds the refits use: ``base_seed + 1000``, ``+ 2000``, ..."""
    return [base_seed + 1000 * (i + 1) for i in range(count)]


def stability_metrics(
    rows: DataFrame, *, k: int, cluster: ClusterConfig, seeds: list[int]
) -> dict[str, float]:
    """Agreement between the run's assignments and CPU K-Means refits of the same embeddings.

    ``rows``: ``id``, ``embedding``, ``cluster_id`` (the run's labels).  One refit per seed in
    ``seeds`` (non-empty), with ``cluster``'s other settings.  Returns ``stability_ari_mean``,
    ``stability_ari_sd`` (sample sd, 0.0 for a single seed) and ``stability_nmi_mean``.
    """
    features = rows.select("id", "embedding").transform(with_features).cache()
    aris, nmis = [], []
    for seed in seeds:
        model = kmeans_estimator("cpu", k, replace(cluster, seed=seed)).fit(features)
        refit = model.transform(features).select("id", F.col(PREDICTION).alias("__refit"))
        table = contingency(rows.join(refit, "id"), "cluster_id", "__refit")
        aris.append(adjusted_rand_index(table))
        nmis.append(normalized_mutual_info(table))
    features.unpersist()
    return {
        "stability_ari_mean": float(np.mean(aris)),
        "stability_ari_sd": float(np.std(aris, ddof=1)) if len(aris) > 1 else 0.0,
        "stability_nmi_mean": float(np.mean(nmis)),
    }
