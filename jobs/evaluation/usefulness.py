"""Usefulness: do the segments predict what a user does next?

Each user's last session is held out.  The user is re-embedded from the earlier sessions only
(same rendering and model as the run) and assigned to the nearest existing centroid; then
hit-rate@10 counts the held-out session's categories among the 10 most popular categories of the
user's cluster, against the 10 most popular overall (both ranked on history only), with a 95%
bootstrap interval of the lift over buckets of users.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.core.config import EncoderConfig, SessionizeConfig
from jobs.sequences.rendering import render_sequences
from jobs.sequences.user_sequences import build_user_sequences


def split_last_session(sessions: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(history, held out) rows of ``sessions`` (``user_id``, ``session_id``,
    ``session_start``, ...): each user's last session (latest start, then greatest id) is held
    out; users with one session have no history and are left out of both."""
    ranked = sessions.withColumn(
        "__from_end",
        F.row_number().over(
            Window.partitionBy("user_id").orderBy(F.desc("session_start"), F.desc("session_id"))
        ),
    ).withColumn("__n", F.count(F.lit(1)).over(Window.partitionBy("user_id")))
    eligible = ranked.where(F.col("__n") >= 2)
    return (
        eligible.where(F.col("__from_end") > 1).drop("__from_end", "__n"),
        eligible.where(F.col("__from_end") == 1).drop("__from_end", "__n"),
    )


def embed_histories(
    history: DataFrame, *, sessionize: SessionizeConfig, encoder: EncoderConfig, model_dir: str
) -> DataFrame:
    """``id`` (= user_id), ``embedding`` (``array<float>``): each user's history sessions built
    into one sequence (as sessionize does), rendered and encoded (as embed does) by the model
    in ``model_dir``."""
    from udfs.spark_udf import embedding_udf

    rendered = (
        build_user_sequences(history, config=sessionize)
        .select(F.col("user_id").alias("id"), "user_id", "events")
        .transform(render_sequences, config=encoder)
    )
    return rendered.select(
        "id", embedding_udf(encoder, model_dir)(F.col("rendered")).alias("embedding")
    )


def assign_to_centroids(rows: DataFrame, centroids: DataFrame) -> DataFrame:
    """``id``, ``cluster_id`` of the nearest centroid (squared Euclidean; ties to the lower
    cluster id), O(n·k·d).  ``rows``: ``id``, ``embedding``; ``centroids``: ``cluster_id``,
    ``centroid`` (arrays of the same length d), broadcast."""
    squared = F.aggregate(
        F.zip_with("embedding", "centroid", lambda a, b: (a - b) * (a - b)),
        F.lit(0.0).cast("double"),
        lambda acc, x: acc + x,
    )
    scored = rows.crossJoin(F.broadcast(centroids.select("cluster_id", "centroid"))).withColumn(
        "__d", squared
    )
    best = F.row_number().over(Window.partitionBy("id").orderBy("__d", "cluster_id"))
    return scored.withColumn("__r", best).where(F.col("__r") == 1).select("id", "cluster_id")


def _categories(df: DataFrame) -> DataFrame:
    """``user_id``, ``category``: one row per event with a category."""
    return (
        df.select("user_id", F.explode("events").alias("e"))
        .select("user_id", F.col("e.category").alias("category"))
        .where(F.col("category").isNotNull())
    )


def hit_rates(
    history: DataFrame,
    held_out: DataFrame,
    clusters: DataFrame,
    *,
    top_n: int = 10,
    buckets: int = 50,
) -> DataFrame:
    """Per user bucket (``bucket`` in [0, buckets), by a hash of user_id): ``pairs``, the
    held-out distinct (user, category) pairs, and how many of them are among the top ``top_n``
    categories of the user's cluster (``cluster_hits``) and of the whole population
    (``global_hits``), both ranked on history events only (by count, ties by category).

    ``history`` / ``held_out``: ``user_id``, ``events`` (from :func:`split_last_session`);
    ``clusters``: ``user_id``, ``cluster_id``.
    """
    past = _categories(history).join(clusters, "user_id")
    rank = F.row_number().over(Window.partitionBy("cluster_id").orderBy(F.desc("n"), "category"))
    cluster_top = (
        past.groupBy("cluster_id", "category")
        .agg(F.count(F.lit(1)).alias("n"))
        .withColumn("__r", rank)
        .where(F.col("__r") <= top_n)
        .select("cluster_id", "category", F.lit(1).alias("__in_cluster_top"))
    )
    global_top = (
        past.groupBy("category")
        .agg(F.count(F.lit(1)).alias("n"))
        .orderBy(F.desc("n"), "category")
        .limit(top_n)
        .select("category", F.lit(1).alias("__in_global_top"))
    )
    pairs = _categories(held_out).distinct().join(clusters, "user_id")
    scored = (
        pairs.join(F.broadcast(cluster_top), ["cluster_id", "category"], "left")
        .join(F.broadcast(global_top), "category", "left")
        .fillna(0, ["__in_cluster_top", "__in_global_top"])
    )
    return scored.groupBy(F.pmod(F.xxhash64("user_id"), F.lit(buckets)).alias("bucket")).agg(
        F.count(F.lit(1)).alias("pairs"),
        F.sum("__in_cluster_top").alias("cluster_hits"),
        F.sum("__in_global_top").alias("global_hits"),
    )


def usefulness_metrics(
    per_bucket: list[tuple[int, int, int]], *, resamples: int = 1000, seed: int = 7
) -> dict[str, float]:
    """Hit rates, their lift, and a 95% bootstrap interval of the lift over user buckets.

    ``per_bucket``: (pairs, cluster_hits, global_hits) per bucket of users.  Returns
    ``hit_rate_at_10``, ``hit_rate_at_10_global`` (in [0, 1]), ``hit_rate_lift`` (NaN when no
    global hit) and ``hit_rate_lift_ci_low`` / ``_high`` (percentiles 2.5 and 97.5 of
    ``resamples`` seeded resamples of the buckets); ``{}`` when there is no held-out pair.
    """
    table = np.array(per_bucket, dtype=np.float64)
    if table.size == 0 or table[:, 0].sum() == 0:
        return {}
    pairs, cluster_hits, global_hits = table.sum(axis=0)
    rate, base = cluster_hits / pairs, global_hits / pairs
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(table), size=(resamples, len(table)))
    sums = table[picks].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lifts = sums[:, 1] / sums[:, 2]
    lifts = lifts[np.isfinite(lifts)]
    return {
        "hit_rate_at_10": float(rate),
        "hit_rate_at_10_global": float(base),
        "hit_rate_lift": float(rate / base) if base > 0 else float("nan"),
        "hit_rate_lift_ci_low": float(np.percentile(lifts, 2.5)) if lifts.size else float("nan"),
        "hit_rate_lift_ci_high": float(np.percentile(lifts, 97.5)) if lifts.size else float("nan"),
    }


def usefulness(
    sessions: DataFrame,
    centroids: DataFrame,
    *,
    sessionize: SessionizeConfig,
    encoder: EncoderConfig,
    model_dir: str,
    seed: int,
) -> dict[str, float]:
    """The usefulness metrics (:func:`usefulness_metrics`) of a run's ``centroids``
    (``cluster_id``, ``centroid``) on human ``sessions`` (bots already dropped), re-embedding
    histories with the run's model in ``model_dir``.  Runs the Spark jobs (an action)."""
    history, held_out = split_last_session(sessions)
    embedded = embed_histories(history, sessionize=sessionize, encoder=encoder, model_dir=model_dir)
    clusters = assign_to_centroids(embedded, centroids).withColumnRenamed("id", "user_id")
    buckets = hit_rates(history, held_out, clusters).collect()
    return usefulness_metrics(
        [(r["pairs"], r["cluster_hits"], r["global_hits"]) for r in buckets], seed=seed
    )
