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
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
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
from jobs.evaluation.baselines import TFIDF_BASELINES, token_bags
from jobs.sequences.rendering import content_hash, render_sequences

log = logging.getLogger(__name__)

SEGMENT = "segment"
EVENT_TYPES = ("view", "add_to_cart", "remove_from_cart", "purchase", "search")
#: Method names, in the order the metrics table knows them.
PROTOCOL_METHODS = METHODS


class NotApplicable(Exception):
    """A method or metric that cannot be computed on this data; the message says why."""


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
    import numpy as np

    # One job whatever the size: on small data it is the whole input; on data larger than the
    # bound it is a bounded fetch thrown away before the Spark fit (small next to its passes).
    table = features.select("id", FEATURES).limit(cluster.init_sample + 1).toArrow()
    if table.num_rows > cluster.init_sample:
        return None
    try:
        labels, _ = fit_on_driver(vectors_from_arrow(table.column(FEATURES)), k=k, config=cluster)
    except SingleCluster as reason:
        raise NotApplicable(str(reason)) from None
    if len(np.unique(labels)) < 2:
        raise NotApplicable("K-Means found a single cluster (all history vectors coincide)")
    return _labelled(features.sparkSession, table.column("id"), labels)


def _labelled(spark: SparkSession, ids: Any, labels: Any) -> DataFrame:
    """``id``, ``segment`` from the driver's ids and K-Means labels (a local relation)."""
    import pyarrow as pa

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


def tfidf_features(
    units: DataFrame, *, method: str, config: EvaluateConfig, edges: tuple[float, ...]
) -> DataFrame:
    """``id`` and :data:`FEATURES`: L2-normalised TF-IDF of the method's tokens, with sublinear
    term frequency (1 + log tf, Manning et al., *Introduction to IR*, 6.4.1) and the vocabulary
    bounded by document frequency (``tfidf_min_df`` documents to ``tfidf_max_df`` of them) and
    capped at ``tfidf_vocab_size``.  :class:`NotApplicable` when no token survives."""
    from pyspark.ml.feature import IDF, CountVectorizerModel, Normalizer

    column = dict(TFIDF_BASELINES)[method]
    # Read by the vocabulary's pass and again by the transform: built once.
    bags = token_bags(units, edges=edges).select("id", column).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        vocabulary = tfidf_vocabulary(bags, column=column, config=config)
        size = len(vocabulary)
        if size == 0:
            raise NotApplicable(
                f"no token occurs in at least {config.tfidf_min_df:g} and at most "
                f"{config.tfidf_max_df:.0%} of the histories"
            )
        if size >= config.tfidf_vocab_size:
            log.info("%s: vocabulary capped at evaluate.tfidf_vocab_size=%d", method, size)
        counter = CountVectorizerModel.from_vocabulary(
            vocabulary, inputCol=column, outputCol="__tf"
        )
        counts = counter.transform(bags)
        # Materialised: MLlib's fits read their input as an RDD, where a Python UDF cannot run.
        sublinear = counts.withColumn("__tf", _sublinear_tf(F.col("__tf"))).localCheckpoint()
    finally:
        bags.unpersist()
    idf = IDF(inputCol="__tf", outputCol="__tfidf").fit(sublinear)
    weighted = idf.transform(sublinear)
    normal = Normalizer(inputCol="__tfidf", outputCol=FEATURES, p=2.0).transform(weighted)
    return normal.select("id", FEATURES)


def tfidf_vocabulary(bags: DataFrame, *, column: str, config: EvaluateConfig) -> list[str]:
    """The vocabulary of the token arrays in ``column`` of ``bags`` (one row per document),
    as MLlib's ``CountVectorizer`` selects it: tokens in at least ``tfidf_min_df`` documents (a
    count) and at most ``tfidf_max_df`` of them (a share in (0, 1], as the config loader
    checks: 1.0 keeps a token that is in every document, where ``CountVectorizer``'s
    ``maxDF=1.0`` would mean one document), the ``tfidf_vocab_size`` most frequent by total
    count.  In that order, ties by token, so the same tokens get the same columns on every run.

    Computed here rather than by ``CountVectorizer.fit``: its vocabulary comes out in the order
    the shuffle blocks arrive (and which tokens tie at the cap is as arbitrary), the feature
    columns follow it, and a baseline's K-Means start depends on them, so the same data could
    give another baseline segmentation from run to run.  One Spark job instead of its five.
    """
    occurrences = bags.select(F.explode(column).alias("t")).groupBy("t").count()
    containing = bags.select(F.explode(F.array_distinct(column)).alias("t")).groupBy("t").count()
    per_token = occurrences.withColumnRenamed("count", "tf").join(
        containing.withColumnRenamed("count", "df"), "t"
    )
    documents = bags.agg(F.count(F.lit(1)).cast("double").alias("__docs"))

    kept = per_token.crossJoin(documents).where(
        (F.col("df") >= F.lit(float(config.tfidf_min_df)))
        & (F.col("df") <= F.lit(float(config.tfidf_max_df)) * F.col("__docs"))
    )
    rows = kept.orderBy(F.desc("tf"), "t").limit(config.tfidf_vocab_size).select("t").collect()
    return [r["t"] for r in rows]


def _sublinear_tf(counts: Column) -> Column:
    """``1 + log(tf)`` of each non-zero count of a sparse count vector.

    Written here because MLlib has no element-wise function on vectors, and going through
    ``vector_to_array`` would make each row as wide as the vocabulary; this Python UDF touches
    only the non-zero entries.
    """
    import numpy as np
    from pyspark.ml.linalg import SparseVector, VectorUDT

    def sublinear(v: SparseVector) -> SparseVector:
        return SparseVector(v.size, v.indices, 1.0 + np.log(v.values))

    return F.udf(sublinear, VectorUDT())(counts)


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
            try:
                labels, _ = fit_on_driver(matrix, k=k, config=cluster)
            except SingleCluster as reason:
                raise NotApplicable(str(reason)) from None
            if len(set(labels.tolist())) < 2:
                raise NotApplicable("K-Means found a single cluster (all histories coincide)")
            return _labelled(units.sparkSession, table.column("id"), labels)
    features = tfidf_features(units, method=method, config=config, edges=edges)
    return _kmeans_segments(features, k=k, cluster=cluster)


def tfidf_matrix(bags: list[list[str]], *, config: EvaluateConfig) -> Any:
    """The rows of :func:`tfidf_features` for token ``bags`` (one list per document) computed
    on the driver: an ``(n, vocabulary)`` float64 CSR matrix, columns in
    :func:`tfidf_vocabulary`'s order.  The same rules and formulas as MLlib's path: sublinear
    term frequency ``1 + ln tf``, MLlib's IDF ``ln((n + 1) / (df + 1))`` (not scikit-learn's
    ``ln((1 + n) / (1 + df)) + 1``), L2 rows (a row without a vocabulary token stays zero).
    :class:`NotApplicable` when no token survives the document-frequency bounds.

    Counting is scikit-learn's ``CountVectorizer`` on the given vocabulary; the vocabulary
    rule (its order and cap) is the project's own (:func:`tfidf_vocabulary` says why)."""
    import numpy as np
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.preprocessing import normalize

    total: Counter[str] = Counter()
    containing: Counter[str] = Counter()
    for bag in bags:
        total.update(bag)
        containing.update(set(bag))
    docs = float(len(bags))
    kept = [
        t
        for t, df in containing.items()
        if df >= float(config.tfidf_min_df) and df <= float(config.tfidf_max_df) * docs
    ]
    vocabulary = sorted(kept, key=lambda t: (-total[t], t))[: config.tfidf_vocab_size]
    if not vocabulary:
        raise NotApplicable(
            f"no token occurs in at least {config.tfidf_min_df:g} and at most "
            f"{config.tfidf_max_df:.0%} of the histories"
        )
    counter = CountVectorizer(analyzer=_tokens_as_given, vocabulary=vocabulary)
    matrix = counter.transform(bags).astype(np.float64).tocsr()
    matrix.sort_indices()
    matrix.data = 1.0 + np.log(matrix.data)
    df = np.bincount(matrix.indices, minlength=len(vocabulary))
    matrix.data *= np.log((docs + 1.0) / (df + 1.0))[matrix.indices]
    matrix.eliminate_zeros()  # a token in every document weighs 0
    return normalize(matrix, norm="l2", copy=False)


def _tokens_as_given(bag: list[str]) -> list[str]:
    """A document that is already its list of tokens (``CountVectorizer``'s analyzer)."""
    return bag


def aggregate_features(units: DataFrame, *, top_categories: int) -> DataFrame:
    """``id`` and the unscaled figures of ``aggregate_baseline``: ``recency_days`` (from the
    unit's last history event to the last history event of all), ``log_events``,
    ``log_sessions`` (frequency), ``log_revenue`` (monetary: purchase prices), the share of each
    event type and of each of the ``top_categories`` most frequent history categories (the
    classic RFM figures plus behaviour mix; Hughes, *Strategic Database Marketing*, 1994)."""
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
    per_unit = events.groupBy("id").agg(*figures)
    last = events.agg(F.max(F.unix_micros("e.ts"))).first()[0]  # type: ignore[index]
    recency = (F.lit(last) - F.unix_micros("__last")) / F.lit(86_400_000_000.0)
    return per_unit.withColumn("recency_days", recency).drop("__last")


def aggregate_segments(
    units: DataFrame, *, k: int, config: EvaluateConfig, cluster: ClusterConfig
) -> DataFrame:
    """``id``, ``segment`` of ``aggregate_baseline``: :func:`aggregate_features`, standardised
    (zero mean, unit variance: ``pyspark.ml.feature.StandardScaler``), K-Means."""
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    figures = aggregate_features(units, top_categories=config.aggregate_top_categories)
    columns = [c for c in figures.columns if c != "id"]
    assembled = VectorAssembler(inputCols=columns, outputCol="__raw").transform(figures)
    scaler = StandardScaler(inputCol="__raw", outputCol=FEATURES, withMean=True, withStd=True)
    scaled = scaler.fit(assembled).transform(assembled)
    return _kmeans_segments(scaled.select("id", FEATURES), k=k, cluster=cluster)


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
