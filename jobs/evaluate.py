"""``evaluate`` stage: how good are the segments, and better than what? (SPEC section 8)

For one cluster run it records in ``cluster_metrics`` (method ``embedding``):

* internal metrics, all O(n·k·d) (:mod:`jobs.quality`): ``sse``, ``silhouette_sqeuclidean``,
  ``silhouette_cosine``, ``davies_bouldin``, ``calinski_harabasz``, ``size_*``; plus
  ``silhouette_exact_sample``, scikit-learn's exact Euclidean silhouette on a bounded sample;
* stability: mean / sd ARI and mean NMI between the run's assignments and K-Means refits with
  other seeds (contingency tables via ``groupBy``);
* external metrics when ground truth exists: ``ari_vs_truth``, ``nmi_vs_truth``,
  ``purity_vs_truth``;

and the same internal and external metrics for three baselines on the same rows and k:
``tfidf_baseline`` (bag of categories, TF-IDF, K-Means), ``tfidf_tokens_baseline`` (bag of event
type x category x brand x price band tokens) and ``random_baseline`` (uniform random labels,
measured in the embedding space).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import quality
from jobs.config import AppConfig, ClusterConfig
from jobs.lake import Lake
from jobs.metrics import Metric, record_metrics
from jobs.privacy import Pseudonymizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    run_id: str
    k: int
    rows: int
    metrics: dict[str, dict[str, float]]  # method -> metric -> value
    report_path: str | None = None

    def headline(self) -> str:
        parts = []
        for method in ("embedding", "tfidf_tokens_baseline", "tfidf_baseline", "random_baseline"):
            values = self.metrics.get(method, {})
            if "ari_vs_truth" in values:
                parts.append(f"{method} ARI {values['ari_vs_truth']:.3f}")
        emb = self.metrics.get("embedding", {})
        parts.append(f"silhouette {emb.get('silhouette_cosine', float('nan')):.3f} (cosine)")
        return "; ".join(parts)


# ==================================================================== pure transforms


def category_tokens(events: Column) -> Column:
    """Bag of categories: one token per event (``none`` for events without one)."""
    return F.transform(events, lambda e: F.coalesce(e["category"], F.lit("none")))


def behaviour_tokens(events: Column, edges: tuple[float, ...]) -> Column:
    """Bag of event type x category x brand x price band tokens."""
    from jobs.embed import price_band

    return F.transform(
        events,
        lambda e: F.concat_ws(
            "|",
            e["event_type"],
            F.coalesce(e["category"], F.lit("none")),
            F.coalesce(e["brand"], F.lit("none")),
            F.coalesce(price_band(e["price"], edges), F.lit("none")),
        ),
    )


def tfidf_clusters(
    df: DataFrame, *, tokens: str, k: int, seed: int, vocab_size: int, max_iter: int
) -> DataFrame:
    """TF-IDF vectors (L2-normalised) of a token column, clustered by MLlib K-Means.

    Returns ``id``, ``embedding`` (the dense TF-IDF vector as an array, so the same metric code
    applies) and ``cluster_id``.
    """
    from pyspark.ml import Pipeline
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import IDF, CountVectorizer, Normalizer
    from pyspark.ml.functions import vector_to_array

    pipeline = Pipeline(
        stages=[
            CountVectorizer(inputCol=tokens, outputCol="__tf", vocabSize=vocab_size),
            IDF(inputCol="__tf", outputCol="__tfidf"),
            Normalizer(inputCol="__tfidf", outputCol="__features", p=2.0),
            KMeans(
                k=k,
                seed=seed,
                maxIter=max_iter,
                featuresCol="__features",
                predictionCol="cluster_id",
            ),
        ]
    )
    fitted = pipeline.fit(df).transform(df)
    return fitted.select(
        "id",
        vector_to_array(F.col("__features"), dtype="float32").alias("embedding"),
        F.col("cluster_id").cast("int"),
    )


def random_clusters(df: DataFrame, *, k: int, seed: int) -> DataFrame:
    """Uniform random labels: the floor every method must clear."""
    return df.withColumn("cluster_id", F.floor(F.rand(seed) * k).cast("int"))


# ==================================================================== profiles


def _top_values(exploded: DataFrame, column: str, population: DataFrame, top_n: int) -> DataFrame:
    """Per cluster: the ``top_n`` most frequent values of ``column`` with their share of the
    cluster's events and their lift over the whole population's share."""
    from pyspark.sql import Window

    counts = exploded.where(F.col(column).isNotNull()).groupBy("cluster_id", column).count()
    totals = counts.groupBy("cluster_id").agg(F.sum("count").alias("__total"))
    overall = population.where(F.col(column).isNotNull()).groupBy(column).count()
    overall_total = overall.agg(F.sum("count").alias("__all"))
    ranked = (
        counts.join(totals, "cluster_id")
        .join(overall.withColumnRenamed("count", "__pop"), column)
        .crossJoin(overall_total)
        .withColumn("share", F.col("count") / F.col("__total"))
        .withColumn("lift", F.col("share") / (F.col("__pop") / F.col("__all")))
        .withColumn(
            "__rank",
            F.row_number().over(
                Window.partitionBy("cluster_id").orderBy(F.desc("count"), F.asc(column))
            ),
        )
        .where(F.col("__rank") <= top_n)
    )
    return ranked.groupBy("cluster_id").agg(
        F.array_sort(
            F.collect_list(
                F.struct(
                    F.col("__rank").alias("rank"), F.col(column).alias("value"), "share", "lift"
                )
            )
        ).alias(f"top_{column}")
    )


def cluster_profiles(
    assignments: DataFrame,
    sequences: DataFrame,
    sessions: DataFrame,
    *,
    top_n: int = 5,
    representatives: int = 3,
) -> DataFrame:
    """One row per cluster for analysts: size and share, behaviour rates, top categories /
    brands / items with share and lift, and the ids closest to the centroid.

    ``assignments``: id, user_id, cluster_id, distance; ``sequences``: id, events (the clustered
    unit's sequences); ``sessions``: the ``sessions`` table (for durations and funnel rates).
    """
    from pyspark.sql import Window

    total = F.sum("size").over(Window.partitionBy())
    per_user_sessions = sessions.groupBy("user_id").agg(
        F.avg("duration_s").alias("__duration"),
        F.max(F.col("n_purchases") > 0).alias("__bought"),
        F.max(F.col("n_add_to_cart") > 0).alias("__carted"),
        F.avg("n_events").alias("__events_per_session"),
    )
    base = (
        assignments.join(per_user_sessions, "user_id", "left")
        .groupBy("cluster_id")
        .agg(
            F.count(F.lit(1)).alias("size"),
            F.avg(F.col("__bought").cast("double")).alias("conversion_rate"),
            F.avg(F.col("__carted").cast("double")).alias("cart_rate"),
            F.avg("__events_per_session").alias("mean_events_per_session"),
            F.avg("__duration").alias("mean_session_duration_s"),
        )
        .withColumn("share", F.col("size") / total)
    )
    exploded = (
        sequences.join(assignments.select("id", "cluster_id"), "id")
        .select("cluster_id", F.explode("events").alias("e"))
        .select(
            "cluster_id",
            F.col("e.category").alias("categories"),
            F.col("e.brand").alias("brands"),
            F.col("e.item_id").alias("items"),
        )
    )
    population = exploded.drop("cluster_id")
    ranked_ids = assignments.withColumn(
        "__rank",
        F.row_number().over(Window.partitionBy("cluster_id").orderBy("distance", "id")),
    )
    reps = (
        ranked_ids.where(F.col("__rank") <= representatives)
        .groupBy("cluster_id")
        .agg(F.array_sort(F.collect_list(F.struct("__rank", "id"))).alias("__reps"))
        .select("cluster_id", F.transform("__reps", lambda r: r["id"]).alias("representative_ids"))
    )
    profile = base
    for column in ("categories", "brands", "items"):
        profile = profile.join(
            _top_values(exploded, column, population, top_n), "cluster_id", "left"
        )
    return profile.join(reps, "cluster_id", "left").select(
        F.col("cluster_id").cast("int"),
        "size",
        "share",
        "conversion_rate",
        "cart_rate",
        "mean_events_per_session",
        "mean_session_duration_s",
        "top_categories",
        "top_brands",
        "top_items",
        "representative_ids",
    )


# ==================================================================== usefulness


def split_last_session(sessions: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(history, held out): each user's last session is held out; users with one session
    have no history and are left out of both."""
    from pyspark.sql import Window

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


def hit_rates(
    history: DataFrame,
    held_out: DataFrame,
    clusters: DataFrame,
    *,
    top_n: int = 10,
    buckets: int = 50,
) -> DataFrame:
    """Per user bucket: held-out (user, category) pairs, and how many of them are among the
    top ``top_n`` categories of the user's cluster and of the whole population (both ranked
    on history events only).  ``clusters``: user_id, cluster_id."""
    from pyspark.sql import Window

    def categories(df: DataFrame) -> DataFrame:
        return (
            df.select("user_id", F.explode("events").alias("e"))
            .select("user_id", F.col("e.category").alias("category"))
            .where(F.col("category").isNotNull())
        )

    past = categories(history).join(clusters, "user_id")
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
    pairs = categories(held_out).distinct().join(clusters, "user_id")
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

    ``per_bucket``: (pairs, cluster_hits, global_hits) per bucket of users.
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


def assign_to_centroids(rows: DataFrame, centroids: DataFrame) -> DataFrame:
    """Nearest centroid per row (O(n·k·d)): ``rows`` id + embedding, ``centroids`` cluster_id +
    centroid."""
    from pyspark.sql import Window

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


# ==================================================================== metric sets


def internal_metrics(df: DataFrame, *, sample: int, seed: int) -> dict[str, float]:
    """Every internal metric of ``embedding`` / ``cluster_id`` rows."""
    from sklearn.metrics import silhouette_score

    agg = quality.cluster_aggregates(df)
    values = {
        "sse": quality.sse(agg),
        "calinski_harabasz": quality.calinski_harabasz(agg),
        "davies_bouldin": quality.davies_bouldin(df, agg),
        "silhouette_sqeuclidean": quality.silhouette(df, distance="squaredEuclidean"),
        "silhouette_cosine": quality.silhouette(df, distance="cosine"),
        **quality.size_balance(agg),
    }
    rows = df.orderBy(F.rand(seed)).limit(sample).select("embedding", "cluster_id").collect()
    labels = np.array([r["cluster_id"] for r in rows])
    if len(set(labels)) > 1 and len(rows) > len(set(labels)):
        points = np.array([r["embedding"] for r in rows], dtype=np.float64)
        values["silhouette_exact_sample"] = float(silhouette_score(points, labels))
    return values


def external_metrics(df: DataFrame, truth: DataFrame) -> dict[str, float]:
    """ARI, NMI and purity of ``cluster_id`` against ``persona`` (joined on user_id)."""
    table = quality.contingency(df.join(truth, "user_id"), "persona", "cluster_id")
    return {
        "ari_vs_truth": quality.adjusted_rand_index(table),
        "nmi_vs_truth": quality.normalized_mutual_info(table),
        "purity_vs_truth": quality.purity(table),
    }


def stability_metrics(
    rows: DataFrame, *, k: int, cluster: ClusterConfig, seeds: list[int]
) -> dict[str, float]:
    """Agreement between the run's assignments (``rows.cluster_id``) and K-Means refits of the
    same embeddings with other seeds."""
    from jobs.cluster import kmeans_estimator, with_features

    features = rows.select("id", "embedding").transform(with_features).cache()
    aris, nmis = [], []
    for seed in seeds:
        model = kmeans_estimator("cpu", k, replace(cluster, seed=seed)).fit(features)
        refit = model.transform(features).select("id", F.col("cluster_id").alias("__refit"))
        table = quality.contingency(rows.join(refit, "id"), "cluster_id", "__refit")
        aris.append(quality.adjusted_rand_index(table))
        nmis.append(quality.normalized_mutual_info(table))
    features.unpersist()
    return {
        "stability_ari_mean": float(np.mean(aris)),
        "stability_ari_sd": float(np.std(aris, ddof=1)) if len(aris) > 1 else 0.0,
        "stability_nmi_mean": float(np.mean(nmis)),
    }


# ==================================================================== the job


def _ground_truth(spark: SparkSession, config: AppConfig) -> DataFrame | None:
    path = config.evaluate.ground_truth_path or config.generate.ground_truth_path
    if not path or ("://" not in path and not Path(path).is_file()):
        log.info("no ground truth at %s: external metrics skipped", path)
        return None
    truth = spark.read.option("header", "true").csv(path).select("user_id", "persona")
    pseudonymizer = Pseudonymizer.from_config(config.privacy, spark)
    if pseudonymizer is not None:
        # The clustered ids are HMACs of the trimmed raw ids (ingest.normalise): match them.
        truth = pseudonymizer.pseudonymize(truth, {"user_id": F.trim("user_id")})
    return truth


def _usefulness(
    lake: Lake, config: AppConfig, model_version: str, centroids: DataFrame
) -> dict[str, float]:
    """Hold out each user's last session; assign the user from the earlier sessions only
    (re-embedded with the run's model, nearest existing centroid); score hit-rate@10."""
    from jobs.embed import render_sequences
    from jobs.sessionize import build_user_sequences
    from udfs.encoder import model_version as version_of
    from udfs.encoder import resolve_model_path
    from udfs.spark_udf import embedding_udf

    model_dir = resolve_model_path(
        config.encoder, default_sequence_dir=config.train_encoder.output_dir
    )
    if version_of(config.encoder, model_dir) != model_version:
        log.info(
            "usefulness skipped: the configured encoder is not model_version %s", model_version
        )
        return {}
    history, held_out = split_last_session(lake.read("sessions").where(~F.col("is_bot")))
    rendered = (
        build_user_sequences(history, config=config.sessionize)
        .select(F.col("user_id").alias("id"), "user_id", "events")
        .transform(render_sequences, config=config.encoder)
    )
    embedded = rendered.select(
        "id", embedding_udf(config.encoder, str(model_dir))(F.col("rendered")).alias("embedding")
    )
    clusters = assign_to_centroids(embedded, centroids).withColumnRenamed("id", "user_id")
    buckets = hit_rates(history, held_out, clusters).collect()
    return usefulness_metrics(
        [(r["pairs"], r["cluster_hits"], r["global_hits"]) for r in buckets],
        seed=config.evaluate.seed,
    )


def latest_cluster_run(assignments: DataFrame) -> str:
    """The newest run id (run ids sort by their UTC timestamp prefix)."""
    row = assignments.agg(F.max("run_id")).first()
    if row is None or row[0] is None:
        raise ValueError("cluster_assignments is empty: run the cluster stage first")
    return str(row[0])


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> EvaluateResult:
    """Evaluate one cluster run and its baselines; write ``cluster_metrics``."""
    cfg = config.evaluate
    all_assignments = lake.read("cluster_assignments")
    cluster_run = cfg.cluster_run_id or latest_cluster_run(all_assignments)
    assigned = all_assignments.where(F.col("run_id") == cluster_run).select(
        "unit", "id", "user_id", "cluster_id"
    )
    first = assigned.first()
    if first is None:
        raise ValueError(f"cluster run {cluster_run!r} has no assignments")
    unit = first["unit"]
    centroids = lake.read("cluster_centroids").where(F.col("run_id") == cluster_run)
    k = centroids.count()
    version_row = (
        lake.read("cluster_metrics")
        .where(F.col("run_id") == cluster_run)
        .select("model_version", "backend")
        .first()
        if lake.exists("cluster_metrics")
        else None
    )
    embeddings = lake.read("embeddings").where(F.col("unit") == unit)
    if version_row is not None:
        model_version, backend = version_row["model_version"], version_row["backend"]
        embeddings = embeddings.where(F.col("model_version") == model_version)
    else:
        from jobs.cluster import latest_model_version

        model_version, backend = latest_model_version(embeddings, unit), "cpu"
        embeddings = embeddings.where(F.col("model_version") == model_version)

    rows = assigned.join(embeddings.select("id", "embedding"), "id").persist(
        StorageLevel.MEMORY_AND_DISK
    )
    n = rows.count()
    log.info(
        "evaluating cluster run %s: %d %ss, k=%d, model %s", cluster_run, n, unit, k, model_version
    )
    from jobs.embed import select_units

    source = lake.read("user_sequences" if unit == "user" else "sessions")
    sequences = source.transform(select_units, unit=unit, include_bots=True).join(
        rows.select("id"), "id"
    )
    truth = _ground_truth(spark, config)
    results: dict[str, dict[str, float]] = {}
    try:
        emb = internal_metrics(rows, sample=cfg.silhouette_sample, seed=cfg.seed)
        if cfg.stability_seeds > 0:
            seeds = [config.cluster.seed + 1000 * (i + 1) for i in range(cfg.stability_seeds)]
            emb.update(stability_metrics(rows, k=k, cluster=config.cluster, seeds=seeds))
        if truth is not None:
            emb.update(external_metrics(rows, truth))
        if unit == "user":
            emb.update(_usefulness(lake, config, model_version, centroids))
        results["embedding"] = emb

        bags = sequences.select(
            "id",
            "user_id",
            category_tokens(F.col("events")).alias("__categories"),
            behaviour_tokens(F.col("events"), config.encoder.price_band_edges).alias("__tokens"),
        ).persist(StorageLevel.MEMORY_AND_DISK)
        for method, column in (
            ("tfidf_baseline", "__categories"),
            ("tfidf_tokens_baseline", "__tokens"),
        ):
            clustered = tfidf_clusters(
                bags,
                tokens=column,
                k=k,
                seed=config.cluster.seed,
                vocab_size=cfg.tfidf_vocab_size,
                max_iter=config.cluster.max_iter,
            ).join(bags.select("id", "user_id"), "id")
            values = internal_metrics(clustered, sample=cfg.silhouette_sample, seed=cfg.seed)
            if truth is not None:
                values.update(external_metrics(clustered, truth))
            results[method] = values
        bags.unpersist()

        sample = (
            rows.orderBy(F.rand(cfg.seed))
            .limit(cfg.silhouette_sample)
            .select("embedding", "cluster_id")
            .collect()
        )
        random = random_clusters(rows.drop("cluster_id"), k=k, seed=cfg.seed)
        values = internal_metrics(random, sample=cfg.silhouette_sample, seed=cfg.seed)
        if truth is not None:
            values.update(external_metrics(random, truth))
        results["random_baseline"] = values
    finally:
        rows.unpersist()

    assignments_with_distance = all_assignments.where(F.col("run_id") == cluster_run).select(
        "id", "user_id", "cluster_id", "distance"
    )
    profiles = cluster_profiles(assignments_with_distance, sequences, lake.read("sessions"))
    lake.overwrite_partitions(
        "cluster_profiles",
        profiles.select(F.lit(cluster_run).alias("run_id"), "*"),
        {"run_id": [cluster_run]},
    )
    record_metrics(
        spark,
        lake,
        cluster_run,
        [
            Metric(
                method,
                name,
                value,
                k,
                unit,
                model_version,
                backend if method == "embedding" else "cpu",
                min(n, cfg.silhouette_sample) if name == "silhouette_exact_sample" else n,
            )
            for method, values in results.items()
            for name, value in values.items()
        ],
    )
    for method, values in results.items():
        log.info("%s: %s", method, ", ".join(f"{m}={v:.4f}" for m, v in sorted(values.items())))
    from jobs.report import sweep_frame, write_report

    sweep = sweep_frame(
        [
            r.asDict()
            for r in lake.read("cluster_metrics")
            .where(
                (F.col("run_id") == cluster_run)
                & (F.col("method") == "embedding")
                & F.col("metric").isin("sse", "silhouette_sqeuclidean")
            )
            .select("k", "metric", "value")
            .collect()
        ]
    )
    report = write_report(
        Path(cfg.report_dir) / cluster_run,
        run_id=cluster_run,
        k=k,
        rows=n,
        unit=unit,
        model_version=model_version,
        metrics=results,
        sweep=sweep,
        profiles=lake.read("cluster_profiles").where(F.col("run_id") == cluster_run).toPandas(),
        sample_points=np.array([r["embedding"] for r in sample], dtype=np.float64),
        sample_labels=np.array([r["cluster_id"] for r in sample]),
    )
    log.info("report written to %s", report)
    return EvaluateResult(run_id=cluster_run, k=k, rows=n, metrics=results, report_path=str(report))


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/evaluate.py --conf conf/local.yaml``."""
    from jobs.cli import run_stage

    return run_stage("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
