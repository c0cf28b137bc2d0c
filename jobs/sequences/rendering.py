"""How a sequence of events becomes the encoder's input: rows to embed and their rendering.

Shared by ``embed`` (what is encoded), ``train_encoder`` (what is trained on) and ``evaluate``
(re-encoding histories): all three must render a sequence identically, or the model version
would not mean the same thing.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.core.config import EncoderConfig
from udfs.rendering import EVENT_WORDS, PRICE_BANDS

UNITS = ("user", "session")


def select_units(df: DataFrame, *, unit: str, include_bots: bool) -> DataFrame:
    """Rows to embed: ``unit``, ``id``, ``user_id``, ``events`` (bots dropped by default)."""
    if not include_bots:
        df = df.where(~F.col("is_bot"))
    id_column = "user_id" if unit == "user" else "session_id"
    return df.select(F.lit(unit).alias("unit"), F.col(id_column).alias("id"), "user_id", "events")


def price_band(price: Column, edges: tuple[float, ...]) -> Column:
    """``cheap`` / ``low`` / ``mid`` / ``high`` / ``premium`` for ``price`` below each of the
    increasing ``edges`` (``encoder.price_band_edges``); null for a null price."""
    band = F.when(price.isNull(), F.lit(None))
    for edge, name in zip(edges, PRICE_BANDS, strict=False):
        band = band.when(price < edge, F.lit(name))
    return band.otherwise(F.lit(PRICE_BANDS[min(len(edges), len(PRICE_BANDS) - 1)]))


def _event_text(e: Column, config: EncoderConfig) -> Column:
    """``view electronics smartphone samsung mid`` (search events carry their query)."""
    word = F.coalesce(
        F.create_map(*[F.lit(x) for kv in EVENT_WORDS.items() for x in kv])[e["event_type"]],
        F.lit("other"),
    )
    category = F.regexp_replace(e["category"], r"[._]", " ")
    parts = [word, category, e["brand"], price_band(e["price"], config.price_band_edges)]
    if config.include_item_ids:
        parts.append(e["item_id"])
    return F.concat_ws(" ", *parts)


def _event_token(e: Column, config: EncoderConfig) -> Column:
    """``view:electronics.smartphone`` (one vocabulary entry per event type x category)."""
    token = F.concat(e["event_type"], F.lit(":"), F.coalesce(e["category"], F.lit("none")))
    if config.include_item_ids:
        bucket = F.pmod(F.xxhash64(e["item_id"]), F.lit(1024)).cast("string")
        token = F.concat(token, F.lit(":i"), bucket)
    return token


def render_sequences(df: DataFrame, *, config: EncoderConfig) -> DataFrame:
    """Add ``rendered``: the sequence as the encoder reads it, oldest event first.

    Session boundaries inside user sequences become ``|`` (text) or ``[SEP]`` (sequence).
    """
    events = F.col("events")
    has_sessions = "session_id" in df.schema["events"].dataType.elementType.names  # type: ignore[attr-defined]
    if config.kind == "text":
        render, joiner, boundary = _event_text, ", ", "| "
    elif config.kind == "sequence":
        render, joiner, boundary = _event_token, " ", "[SEP] "
    else:  # the config loader admits only the two kinds
        raise ValueError(f"encoder.kind must be text or sequence, got {config.kind!r}")

    def one(e: Column, i: Column) -> Column:
        text = render(e, config)
        if not has_sessions:
            return text
        new_session = (i > 0) & (e["session_id"] != F.element_at(events, i)["session_id"])
        return F.concat(F.when(new_session, F.lit(boundary)).otherwise(F.lit("")), text)

    return df.withColumn("rendered", F.array_join(F.transform(events, one), joiner))


def content_hash(rendered: Column) -> Column:
    """``embeddings.content_hash`` of a rendered sequence: the first 32 hex digits of its
    SHA-256.  Equal texts, and only they (up to hash collisions), share a hash, so a vector
    stored under it serves every unit that renders to that text with the same model."""
    return F.substring(F.sha2(rendered, 256), 1, 32)
