"""``embed`` stage: ``user_sequences`` (or ``sessions``) -> Delta ``embeddings``.

Sequences are rendered with Spark built-ins (:func:`render_sequences`), then the transformer
runs inside an iterator pandas UDF (:mod:`udfs.spark_udf`).  ``model_version`` hashes the weights
and the rendering settings; the table is partitioned by (``unit``, ``model_version``), so a rerun
with the same model replaces its own partition and a new model adds a new one.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import AppConfig, EncoderConfig
from jobs.lake import Lake

log = logging.getLogger(__name__)

UNITS = ("user", "session")
_EVENT_WORDS = {
    "view": "view",
    "add_to_cart": "cart",
    "remove_from_cart": "remove",
    "purchase": "buy",
    "search": "search",
    "other": "other",
}
_BANDS = ("cheap", "low", "mid", "high", "premium")


def select_units(df: DataFrame, *, unit: str, include_bots: bool) -> DataFrame:
    """Rows to embed: ``unit``, ``id``, ``user_id``, ``events`` (bots dropped by default)."""
    if unit not in UNITS:
        raise ValueError(f"embed.unit must be one of {UNITS}, got {unit!r}")
    if not include_bots:
        df = df.where(~F.col("is_bot"))
    id_column = "user_id" if unit == "user" else "session_id"
    return df.select(F.lit(unit).alias("unit"), F.col(id_column).alias("id"), "user_id", "events")


def price_band(price: Column, edges: tuple[float, ...]) -> Column:
    band = F.when(price.isNull(), F.lit(None))
    for edge, name in zip(edges, _BANDS, strict=False):
        band = band.when(price < edge, F.lit(name))
    return band.otherwise(F.lit(_BANDS[min(len(edges), len(_BANDS) - 1)]))


def _event_text(e: Column, config: EncoderConfig) -> Column:
    """``view electronics smartphone samsung mid`` (search events carry their query)."""
    word = F.coalesce(
        F.create_map(*[F.lit(x) for kv in _EVENT_WORDS.items() for x in kv])[e["event_type"]],
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
    else:
        raise ValueError(f"encoder.kind must be text or sequence, got {config.kind!r}")

    def one(e: Column, i: Column) -> Column:
        text = render(e, config)
        if not has_sessions:
            return text
        new_session = (i > 0) & (e["session_id"] != F.element_at(events, i)["session_id"])
        return F.concat(F.when(new_session, F.lit(boundary)).otherwise(F.lit("")), text)

    return df.withColumn("rendered", F.array_join(F.transform(events, one), joiner))


EMBED_MODES = ("full", "incremental")


def changed_rows(rendered: DataFrame, *, previous: DataFrame) -> DataFrame:
    """Rendered rows whose ``content_hash`` differs from (or is missing in) ``previous``
    embeddings of the same model version: the only ones an incremental run must encode."""
    return rendered.join(previous.select("id", "content_hash"), ["id", "content_hash"], "left_anti")


@dataclass(frozen=True)
class EmbedCounts:
    rows: int
    unit: str
    model_version: str
    model_name: str
    #: Rows run through the encoder (all of them unless ``embed.mode=incremental``).
    embedded: int = 0


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> EmbedCounts:
    """Embed the configured unit's sequences and write its ``embeddings`` partition."""
    from udfs.encoder import model_version, resolve_model_path
    from udfs.spark_udf import embedding_udf

    enc, cfg = config.encoder, config.embed
    model_dir = resolve_model_path(enc, default_sequence_dir=config.train_encoder.output_dir)
    version = model_version(enc, model_dir)
    name = enc.model_path or (
        "sentence-transformers/all-MiniLM-L6-v2" if enc.kind == "text" else str(model_dir)
    )
    log.info("embedding %ss with %s encoder %s (version %s)", cfg.unit, enc.kind, name, version)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_rows))
    if cfg.mode not in EMBED_MODES:
        raise ValueError(f"embed.mode must be one of {EMBED_MODES}, got {cfg.mode!r}")
    source = lake.read("user_sequences" if cfg.unit == "user" else "sessions")
    rendered = (
        source.transform(select_units, unit=cfg.unit, include_bots=cfg.include_bots)
        .transform(render_sequences, config=enc)
        .withColumn("content_hash", F.substring(F.sha2("rendered", 256), 1, 32))
    )
    previous = None
    if cfg.mode == "incremental" and lake.exists("embeddings"):
        previous = lake.read("embeddings").where(
            (F.col("unit") == cfg.unit) & (F.col("model_version") == version)
        )
    to_embed = rendered
    if previous is not None:
        to_embed = rendered.transform(changed_rows, previous=previous)
    embedded = to_embed.select(
        "unit",
        "id",
        "user_id",
        embedding_udf(enc, str(model_dir))(F.col("rendered")).alias("embedding"),
        "content_hash",
        F.lit(name).alias("model_name"),
        F.lit(version).alias("model_version"),
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("embedded_at"),
    )
    carried = 0
    if previous is not None:
        unchanged = previous.join(
            rendered.select("id", "content_hash"), ["id", "content_hash"], "left_semi"
        )
        carried = unchanged.count()
        log.info("incremental embed: %d sequences unchanged since their last embedding", carried)
        embedded = unchanged.select(*embedded.columns).unionByName(embedded)
    # One commit replaces the partition, so readers see the old or the new vectors, never a mix.
    result = lake.overwrite_partitions(
        "embeddings", embedded, {"unit": [cfg.unit], "model_version": [version]}
    )
    return EmbedCounts(
        rows=result.rows_written,
        unit=cfg.unit,
        model_version=version,
        model_name=name,
        embedded=result.rows_written - carried,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/embed.py --conf conf/local.yaml``."""
    from jobs.cli import run_stage

    return run_stage("embed", argv)


if __name__ == "__main__":
    sys.exit(main())
