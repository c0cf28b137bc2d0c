"""The segmentations the backtest compares, each fitted on history units only.

Every method maps ``history_units`` (``id``, ``user_id``, ``events``; see
:func:`jobs.evaluation.protocol.history_units`) to ``id``, ``segment`` (int): one segment per
unit, fitted with ``k`` segments (``global_baseline``: one).

* ``embedding``: the run's encoder encodes each history (a history that renders to a text the
  model already encoded, in ``embeddings`` or ``history_embeddings``, reuses that vector by
  ``content_hash``: :func:`encoded_histories`), then K-Means with the run's settings
  (:func:`embedding_segments`);
* ``tfidf_baseline`` / ``tfidf_tokens_baseline``: bag of categories / of event type x category x
  brand x price band tokens, vocabulary bounded by document frequency, sublinear TF, IDF, L2,
  K-Means (:func:`tfidf_segments`);
* ``aggregate_baseline``: the per-user figures analysts build by hand (recency, frequency,
  monetary, event-type shares, top-category shares), standardised, K-Means
  (:func:`aggregate_segments`);
* ``random_baseline``: uniform random segments; ``global_baseline``: one segment, so its
  rankings are plain popularity.

A method that cannot be fitted on the data raises :class:`NotApplicable` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.clustering.kmeans import (
    FEATURES,
    PREDICTION,
    SingleCluster,
    fit_on_driver,
    kmeans_estimator,
    with_features,
)
from jobs.clustering.sample import vectors_from_arrow
from jobs.core.config import AppConfig, ClusterConfig, EncoderConfig, EvaluateConfig
from jobs.core.metrics import METHODS
from jobs.evaluation.baselines import (
    TFIDF_BASELINES,
    NotApplicable,
    tfidf_features,
    tfidf_matrix,
    token_bags,
)
from jobs.sequences.rendering import content_hash, render_sequences

log = logging.getLogger(__name__)

SEGMENT = "segment"
EVENT_TYPES = ("view", "add_to_cart", "remove_from_cart", "purchase", "search")
#: Method names, in the order the metrics table knows them.
PROTOCOL_METHODS = METHODS


def _kmeans_segments(
    features: DataFrame, *, k: int, cluster: ClusterConfig, seed: int | None = None
) -> DataFrame:
    """``id``, ``segment`` of CPU K-Means (the cluster stage's, ``cluster``'s settings) on
    ``features`` (``id``, vector column :data:`FEATURES`); :class:`NotApplicable` when the
    rows hold a single distinct point or K-Means finds a single cluster.

    Rows that fit ``cluster.init_sample`` are fitted on the driver from one Arrow fetch
    (:func:`jobs.clustering.kmeans.fit_on_driver`: the same fit, without a Spark job per
    step); larger data and bisecting K-Means are fitted on Spark."""
    settings = cluster if seed is None else replace(cluster, seed=seed)
    if settings.algorithm == "kmeans":
        local = _driver_segments(features, k=k, cluster=settings)
        if local is not None:
            return local
    try:
        model = kmeans_estimator("cpu", k, settings).fit(features)
    except SingleCluster as reason:
        raise NotApplicable(str(reason)) from None
    if len(model.clusterCenters()) < 2:
        raise NotApplicable("K-Means found a single cluster (all history vectors coincide)")
    return model.transform(features).select("id", F.col(PREDICTION).cast("int").alias(SEGMENT))


def _driver_segments(features: DataFrame, *, k: int, cluster: ClusterConfig) -> DataFrame | None:
    """:func:`_kmeans_segments` on the driver, or None when the rows exceed
    ``cluster.init_sample`` (one bounded fetch decides: at most that many rows plus one)."""
    # One job whatever the size: on small data it is the whole input; on data larger than the
    # bound it is a bounded fetch thrown away before the Spark fit (small next to its passes).
    table = features.select("id", FEATURES).limit(cluster.init_sample + 1).toArrow()
    if table.num_rows > cluster.init_sample:
        return None
    matrix = vectors_from_arrow(table.column(FEATURES))
    return _fit_labelled(features.sparkSession, table.column("id"), matrix, k=k, cluster=cluster)


def _fit_labelled(
    spark: SparkSession, ids: Any, matrix: Any, *, k: int, cluster: ClusterConfig
) -> DataFrame:
    """``id``, ``segment`` (a local relation) of :func:`jobs.clustering.kmeans.fit_on_driver`
    on ``matrix`` (rows in the order of the Arrow array ``ids``); :class:`NotApplicable` when
    the rows hold a single distinct point or K-Means finds a single cluster."""
    import numpy as np
    import pyarrow as pa

    try:
        labels, _ = fit_on_driver(matrix, k=k, config=cluster)
    except SingleCluster as reason:
        raise NotApplicable(str(reason)) from None
    if len(np.unique(labels)) < 2:
        raise NotApplicable("K-Means found a single cluster (all history vectors coincide)")
    return spark.createDataFrame(pa.table({"id": ids, SEGMENT: pa.array(labels, pa.int32())}))


#: Column of :func:`encoded_histories`: true where the vector was encoded by this call.
ENCODED = "encoded"


def encoded_histories(
    units: DataFrame,
    *,
    known: DataFrame,
    encoder: EncoderConfig,
    model_dir: str,
) -> DataFrame:
    """``id``, ``content_hash``, ``embedding``, :data:`ENCODED`: ``units`` rendered and encoded
    as ``embed`` does.

    ``known`` (``content_hash``, ``embedding``, at most one row per hash) holds vectors the
    run's model already gave rendered texts (``embeddings``, ``history_embeddings``): a unit
    whose history renders to one of those texts keeps that vector (:data:`ENCODED` false); only
    the others go through the encoder.  A history equals a stored text when the unit did
    nothing after the cutoff, when its history renders like another unit's sequence (short
    sessions often do), or when an earlier ``evaluate`` of the model encoded it.  One small
    Spark action checks whether any history is left to encode; when none is, the encoder is
    not started at all.
    """
    from udfs.spark_udf import embedding_udf

    rendered = units.transform(render_sequences, config=encoder).withColumn(
        "content_hash", content_hash(F.col("rendered"))
    )
    vectors = known.select("content_hash", "embedding")
    reused = rendered.join(vectors, "content_hash").select(
        "id", "content_hash", "embedding", F.lit(False).alias(ENCODED)
    )
    fresh = rendered.join(vectors.select("content_hash"), "content_hash", "left_anti")
    if fresh.isEmpty():  # a rerun: no Python worker, no model load
        return reused
    encoded = fresh.select(
        "id",
        "content_hash",
        embedding_udf(encoder, model_dir)(F.col("rendered")).alias("embedding"),
        F.lit(True).alias(ENCODED),
    )
    return reused.unionByName(encoded)


def known_vectors(*sources: DataFrame) -> DataFrame:
    """``content_hash``, ``embedding``: one vector per rendered text from ``sources`` (each with
    ``content_hash`` and ``embedding``; earlier sources win).  Within a source the vector of the
    smallest ``id`` (when it has ids) is kept, so the choice is the same on every run; vectors of
    one text differ only by the encoder's batch-to-batch rounding (cosine >= 0.9999)."""
    ranked = [
        df.select(
            "content_hash",
            "embedding",
            F.struct(
                F.lit(i).alias("source"),
                (F.col("id") if "id" in df.columns else F.lit(None).cast("string")).alias("id"),
            ).alias("__rank"),
        )
        for i, df in enumerate(sources)
    ]
    stacked = ranked[0]
    for more in ranked[1:]:
        stacked = stacked.unionByName(more)
    return stacked.groupBy("content_hash").agg(F.min_by("embedding", "__rank").alias("embedding"))


def embedding_segments(vectors: DataFrame, *, k: int, cluster: ClusterConfig) -> DataFrame:
    """``id``, ``segment``: K-Means (CPU, the run's settings) on history vectors (``id``,
    ``embedding``)."""
    return _kmeans_segments(vectors.transform(with_features), k=k, cluster=cluster)


def tfidf_segments(
    units: DataFrame,
    *,
    method: str,
    k: int,
    config: EvaluateConfig,
    cluster: ClusterConfig,
    edges: tuple[float, ...],
) -> DataFrame:
    """``id``, ``segment`` of a TF-IDF baseline (:func:`tfidf_features`, then K-Means).

    Units that fit ``cluster.init_sample`` (K-Means then runs on the driver anyway) are
    weighted on the driver too (:func:`tfidf_matrix`, the same numbers): one Arrow fetch of
    their token bags instead of the vocabulary, count, IDF and Python UDF jobs on Spark."""
    if cluster.algorithm == "kmeans":
        column = dict(TFIDF_BASELINES)[method]
        bags = token_bags(units, edges=edges).select("id", column)
        table = bags.limit(cluster.init_sample + 1).toArrow()
        if table.num_rows <= cluster.init_sample:
            matrix = tfidf_matrix(table.column(column).to_pylist(), config=config)
            return _fit_labelled(
                units.sparkSession, table.column("id"), matrix, k=k, cluster=cluster
            )
    features = tfidf_features(units, method=method, config=config, edges=edges)
    return _kmeans_segments(features, k=k, cluster=cluster)


def aggregate_features(units: DataFrame, *, top_categories: int) -> DataFrame:
    """``id`` and the unscaled figures of ``aggregate_baseline``: ``recency_days`` (from the
    unit's last history event to the last history event of all), ``log_events``,
    ``log_sessions`` (frequency), ``log_revenue`` (monetary: purchase prices), the share of each
    event type and of each of the ``top_categories`` most frequent history categories (the
    classic RFM figures plus behaviour mix; Hughes, *Strategic Database Marketing*, 1994)."""
    per_unit = _unit_figures(units, top_categories=top_categories)
    last = per_unit.agg(F.max(F.unix_micros("__last"))).first()[0]  # type: ignore[index]
    return per_unit.withColumn("recency_days", _recency_days(F.unix_micros("__last"), last)).drop(
        "__last"
    )


def _unit_figures(units: DataFrame, *, top_categories: int) -> DataFrame:
    """:func:`aggregate_features` with ``__last`` (the unit's last event time) in place of
    ``recency_days``; finding the top categories is a Spark job."""
    events = units.select("id", F.explode("events").alias("e"))
    has_session = "session_id" in units.schema["events"].dataType.elementType.names  # type: ignore[attr-defined]
    top = [
        r["category"]
        for r in events.where(F.col("e.category").isNotNull())
        .groupBy(F.col("e.category").alias("category"))
        .count()
        .orderBy(F.desc("count"), "category")
        .limit(top_categories)
        .collect()
    ]
    n = F.count(F.lit(1))
    figures = [
        F.max("e.ts").alias("__last"),
        F.log1p(n).alias("log_events"),
        F.log1p(F.countDistinct("e.session_id") if has_session else F.lit(1)).alias("log_sessions"),
        F.log1p(
            F.coalesce(
                F.sum(F.when(F.col("e.event_type") == "purchase", F.col("e.price"))), F.lit(0.0)
            )
        ).alias("log_revenue"),
        *[
            (F.count(F.when(F.col("e.event_type") == t, 1)) / n).alias(f"share_{t}")
            for t in EVENT_TYPES
        ],
        *[
            (F.count(F.when(F.col("e.category") == c, 1)) / n).alias(f"share_category_{i}")
            for i, c in enumerate(top)
        ],
    ]
    return events.groupBy("id").agg(*figures)


def _recency_days(last_of_unit: Any, last_of_all: Any) -> Any:
    """Days from a unit's last history event to the last of all (both in epoch microseconds;
    Spark columns or NumPy arrays alike)."""
    return (last_of_all - last_of_unit) / 86_400_000_000.0


def aggregate_segments(
    units: DataFrame, *, k: int, config: EvaluateConfig, cluster: ClusterConfig
) -> DataFrame:
    """``id``, ``segment`` of ``aggregate_baseline``: :func:`aggregate_features`, standardised
    (zero mean, unit variance: ``pyspark.ml.feature.StandardScaler``), K-Means.  Units that fit
    ``cluster.init_sample`` are scaled and clustered on the driver (:func:`aggregate_matrix`,
    the same numbers): no scaler job, no job for the last event time."""
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    if cluster.algorithm == "kmeans":
        local = aggregate_matrix(units, config=config, at_most=cluster.init_sample)
        if local is not None:
            ids, matrix = local
            return _fit_labelled(units.sparkSession, ids, matrix, k=k, cluster=cluster)
    figures = aggregate_features(units, top_categories=config.aggregate_top_categories)
    columns = [c for c in figures.columns if c != "id"]
    assembled = VectorAssembler(inputCols=columns, outputCol="__raw").transform(figures)
    scaler = StandardScaler(inputCol="__raw", outputCol=FEATURES, withMean=True, withStd=True)
    scaled = scaler.fit(assembled).transform(assembled)
    return _kmeans_segments(scaled.select("id", FEATURES), k=k, cluster=cluster)


def aggregate_matrix(
    units: DataFrame, *, config: EvaluateConfig, at_most: int
) -> tuple[Any, Any] | None:
    """``(ids, matrix)``: the ``id`` column (Arrow) and the standardised figures of
    :func:`aggregate_segments` ((n, figures) float64, columns in :func:`aggregate_features`'
    order), computed on the driver from one bounded Arrow fetch; None when ``units`` hold more
    than ``at_most`` rows.

    The same numbers as the Spark path: the overall last event is the largest of the units'
    (no job of its own), and each figure is standardised as MLlib's ``StandardScaler`` with
    ``withMean`` and ``withStd`` does it: minus the mean, times 1 / the sample standard deviation
    (n - 1), 0 for a constant figure (whose deviation is 0)."""
    import numpy as np

    per_unit = _unit_figures(units, top_categories=config.aggregate_top_categories)
    table = per_unit.withColumn("__last", F.unix_micros("__last")).limit(at_most + 1).toArrow()
    if table.num_rows > at_most:
        return None
    names = [c for c in table.column_names if c not in ("id", "__last")]
    columns = [table.column(c).to_numpy().astype(np.float64) for c in names]
    last = table.column("__last").to_numpy()
    columns.append(_recency_days(last, int(last.max()) if last.size else 0))
    raw = np.column_stack(columns)
    n = raw.shape[0]
    mean = raw.mean(axis=0) if n else np.zeros(raw.shape[1])
    std = np.zeros(raw.shape[1])
    if n > 1:
        std = raw.std(axis=0, ddof=1)
        # A constant figure's deviation is 0 exactly, as MLlib's online summary gets it; NumPy's
        # mean of equal values can be an ulp off, which a scale of 1 / 1e-16 would blow up.
        std[np.ptp(raw, axis=0) == 0] = 0.0
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std != 0)
    return table.column("id"), (raw - mean) * scale


def random_segments(units: DataFrame, *, k: int, seed: int) -> DataFrame:
    """``id``, ``segment``: uniform random in [0, k), seeded by a hash of the id (so the same
    unit gets the same segment however the data is partitioned)."""
    draw = F.pmod(F.xxhash64(F.col("id"), F.lit(seed)), F.lit(k)).cast("int")
    return units.select("id", draw.alias(SEGMENT))


def global_segments(units: DataFrame) -> DataFrame:
    """``id``, ``segment`` 0 for every unit: rankings over it are plain popularity."""
    return units.select("id", F.lit(0).alias(SEGMENT))


def baseline_fitters(config: AppConfig, k: int) -> dict[str, Callable[[DataFrame], DataFrame]]:
    """Every method but ``embedding``: name -> (units -> ``id``, ``segment``), with ``k``
    segments and the settings of ``config``."""
    ev, cluster, edges = config.evaluate, config.cluster, config.encoder.price_band_edges

    def tfidf(method: str) -> Callable[[DataFrame], DataFrame]:
        return lambda units: tfidf_segments(
            units, method=method, k=k, config=ev, cluster=cluster, edges=edges
        )

    return {
        "tfidf_baseline": tfidf("tfidf_baseline"),
        "tfidf_tokens_baseline": tfidf("tfidf_tokens_baseline"),
        "aggregate_baseline": lambda u: aggregate_segments(u, k=k, config=ev, cluster=cluster),
        "random_baseline": lambda u: random_segments(u, k=k, seed=ev.seed),
        "global_baseline": global_segments,
    }
