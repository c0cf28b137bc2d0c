"""The token bags of the TF-IDF baselines (fitted in :mod:`jobs.evaluation.methods`):

* ``tfidf_baseline``: bag of categories (:func:`category_tokens`);
* ``tfidf_tokens_baseline``: bag of event type x category x brand x price band tokens
  (:func:`behaviour_tokens`).
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
