"""``encoder.kind: auto`` decides by the data's shape (README, "Encoder and embeddings")."""

from __future__ import annotations

from datetime import datetime

import pytest
from pyspark.sql import SparkSession

from jobs.core.config import EncoderConfig
from jobs.sequences.encoder_choice import readable_share, resolve_encoder

EVENT = (
    "struct<ts:timestamp, event_type:string, item_id:string, category:string, "
    "brand:string, price:double>"
)


def _sessions(spark: SparkSession, pairs: list[tuple[str | None, str | None]]):  # type: ignore[no-untyped-def]
    ts = datetime(2024, 1, 1)
    events = [
        (ts, "view", f"i{n}", category, brand, 1.0) for n, (category, brand) in enumerate(pairs)
    ]
    return spark.createDataFrame(
        [(f"s{n}", [event]) for n, event in enumerate(events)],
        f"session_id string, events array<{EVENT}>",
    )


def test_words_in_categories_or_brands_choose_the_text_encoder(spark: SparkSession) -> None:
    rees46_like = _sessions(
        spark,
        [
            ("electronics.smartphone", "samsung"),
            ("category_id:2053013555631882655", "apple"),
            ("category_id:2053013555631882655", None),
            ("appliances.kitchen", None),
        ],
    )
    assert readable_share(rees46_like) == pytest.approx(3 / 4)  # the labelled id is not a word
    resolved, reason = resolve_encoder(EncoderConfig(kind="auto"), rees46_like)
    assert resolved.kind == "text" and not resolved.include_item_ids
    assert reason == (
        "encoder.kind=auto chose text: 75% of events name a category or brand in words (>= 50%)"
    )


def test_opaque_ids_choose_the_sequence_encoder_with_item_buckets(spark: SparkSession) -> None:
    diginetica_like = _sessions(
        spark, [("1217", None), ("88", None), ("category_id:5", "x1"), (None, None)]
    )
    assert readable_share(diginetica_like) == 0.0
    resolved, reason = resolve_encoder(EncoderConfig(kind="auto"), diginetica_like)
    assert (resolved.kind, resolved.include_item_ids) == ("sequence", True)
    assert reason.startswith("encoder.kind=auto chose sequence: only 0% of events")


def test_an_explicit_kind_is_kept(spark: SparkSession) -> None:
    sessions = _sessions(spark, [("1217", None)])
    config = EncoderConfig(kind="text")
    assert resolve_encoder(config, sessions) == (config, "encoder.kind=text")
