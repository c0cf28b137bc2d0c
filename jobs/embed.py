"""``embed`` stage: ``user_sequences`` (or ``sessions``) -> Delta ``embeddings``.

Sequences are rendered with Spark built-ins (:mod:`jobs.sequences.rendering`), then the transformer
runs inside an iterator pandas UDF (:mod:`udfs.spark_udf`).  ``model_version`` hashes the weights
and the rendering settings; the table is partitioned by (``unit``, ``model_version``), so a rerun
with the same model replaces its own partition and a new model adds a new one.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.core.config import AppConfig
from jobs.core.lake import Lake
from jobs.core.tables import EMBEDDINGS, SESSIONS, USER_SEQUENCES
from jobs.runner import run_stage
from jobs.sequences.encoder_choice import resolve_encoder
from jobs.sequences.rendering import content_hash, render_sequences, select_units

log = logging.getLogger(__name__)


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

    def summary(self) -> str:
        reused = self.rows - self.embedded
        return (
            f"{self.rows:,} {self.unit} embeddings from {self.model_name} "
            f"(model_version {self.model_version})"
            + (f"; {reused:,} unchanged sequences kept their vectors" if reused else "")
        )


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> EmbedCounts:
    """Embed the configured unit's sequences and write its ``embeddings`` partition."""
    from udfs.encoder import model_version, resolve_model_path
    from udfs.spark_udf import embedding_udf

    cfg = config.embed
    enc, reason = resolve_encoder(config.encoder, lake.read(SESSIONS))
    if config.encoder.kind == "auto":
        log.info("%s", reason)
    model_dir = resolve_model_path(enc, default_sequence_dir=config.train_encoder.output_dir)
    version = model_version(enc, model_dir)
    name = enc.model_path or (
        "sentence-transformers/all-MiniLM-L6-v2" if enc.kind == "text" else str(model_dir)
    )
    log.info("embedding %ss with %s encoder %s (version %s)", cfg.unit, enc.kind, name, version)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_rows))
    source = lake.read(USER_SEQUENCES if cfg.unit == "user" else SESSIONS)
    rendered = (
        source.transform(select_units, unit=cfg.unit, include_bots=cfg.include_bots)
        .transform(render_sequences, config=enc)
        .withColumn("content_hash", content_hash(F.col("rendered")))
    )
    previous = None
    if cfg.mode == "incremental" and lake.exists(EMBEDDINGS):
        previous = lake.read(EMBEDDINGS).where(
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
    partition: dict[str, list[str]] = {"unit": [cfg.unit], "model_version": [version]}
    if previous is None:
        # One commit replaces the partition: readers see the old or the new vectors, never a mix.
        result = lake.overwrite_partitions(EMBEDDINGS, embedded, partition)
        return EmbedCounts(
            rows=result.rows_written,
            unit=cfg.unit,
            model_version=version,
            model_name=name,
            embedded=result.rows_written,
        )
    unchanged = previous.join(
        rendered.select("id", "content_hash"), ["id", "content_hash"], "left_semi"
    )
    carried = unchanged.count()
    log.info("incremental embed: %d sequences unchanged since their last embedding", carried)
    # Delta MERGE, one commit: changed sequences get their new vector, new ones are inserted,
    # and vectors of sequences no longer selected (e.g. a user now flagged as a bot) are
    # deleted; the unchanged rows of the source only tell the merge what to keep.
    result = lake.merge(
        EMBEDDINGS,
        unchanged.select(*embedded.columns).unionByName(embedded),
        update_if="t.content_hash <> s.content_hash",
        delete_unmatched_in=partition,
    )
    if result.rows_deleted:
        log.info(
            "incremental embed: %d vectors of sequences no longer selected deleted",
            result.rows_deleted,
        )
    return EmbedCounts(
        rows=carried + result.rows_written,
        unit=cfg.unit,
        model_version=version,
        model_name=name,
        embedded=result.rows_written,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/embed.py --conf conf/local.yaml``."""
    return run_stage("embed", argv)


if __name__ == "__main__":
    sys.exit(main())
