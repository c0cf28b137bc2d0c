"""Baselines on the same rows and k as the embedding: what the segments must beat.

* ``tfidf_baseline``: bag of categories (:func:`category_tokens`), TF-IDF, K-Means;
* ``tfidf_tokens_baseline``: bag of event type x category x brand x price band tokens
  (:func:`behaviour_tokens`), TF-IDF, K-Means;
* ``random_baseline``: uniform random labels (:func:`random_clusters`), measured in the
  embedding space.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.sequences.rendering import price_band

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


def tfidf_clusters(
    df: DataFrame, *, tokens: str, k: int, seed: int, vocab_size: int, max_iter: int
) -> DataFrame:
    """TF-IDF vectors (L2-normalised) of a token column, clustered by MLlib K-Means.

    ``df``: ``id`` and the ``array<string>`` column ``tokens``; the vocabulary keeps the
    ``vocab_size`` most frequent tokens.  Returns ``id``, ``embedding`` (the dense TF-IDF vector
    as ``array<float>``, so the same metric code applies) and ``cluster_id`` (int in [0, k)).
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
    """``df`` with ``cluster_id``: uniform random int labels in [0, k), the floor every method
    must clear (seeded; the labels also depend on ``df``'s partitioning)."""
    return df.withColumn("cluster_id", F.floor(F.rand(seed) * k).cast("int"))
