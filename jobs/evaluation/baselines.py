"""The TF-IDF baselines' token bags and weights (clustered in :mod:`jobs.evaluation.methods`):

* ``tfidf_baseline``: bag of categories (:func:`category_tokens`);
* ``tfidf_tokens_baseline``: bag of event type x category x brand x price band tokens
  (:func:`behaviour_tokens`);
* weights: :func:`tfidf_features` on Spark, :func:`tfidf_matrix` on the driver (the same
  numbers), over :func:`tfidf_vocabulary`.

:class:`NotApplicable` (a method or metric the data does not allow) lives here, the bottom of
the evaluation's methods, and is re-exported by :mod:`jobs.evaluation.methods`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.clustering.kmeans import FEATURES
from jobs.core.config import EvaluateConfig
from jobs.sequences.rendering import price_band

log = logging.getLogger(__name__)


class NotApplicable(Exception):
    """A method or metric that cannot be computed on this data; the message says why."""


#: Baseline method name -> the token column of :func:`token_bags` it clusters.
TFIDF_BASELINES = (
    ("tfidf_baseline", "__categories"),
    ("tfidf_tokens_baseline", "__tokens"),
)


def category_tokens(events: Column) -> Column:
    """Bag of categories: one token per event (``none`` for events without one)."""
    return F.transform(events, lambda e: F.coalesce(e["category"], F.lit("none")))


def behaviour_tokens(events: Column, edges: tuple[float, ...]) -> Column:
    """Bag of ``event_type|category|brand|price band`` tokens, one per event (``none`` for a
    missing part; ``edges``: ``encoder.price_band_edges``)."""
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


def token_bags(sequences: DataFrame, *, edges: tuple[float, ...]) -> DataFrame:
    """``id``, ``user_id`` and both token bags (``__categories``, ``__tokens``) of ``sequences``
    (``id``, ``user_id``, ``events``)."""
    return sequences.select(
        "id",
        "user_id",
        category_tokens(F.col("events")).alias("__categories"),
        behaviour_tokens(F.col("events"), edges).alias("__tokens"),
    )


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
