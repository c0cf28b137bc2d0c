"""The embed job and train_encoder on Spark: rendering, the UDF, versions, idempotent reruns."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import embed, ingest, sessionize, train_encoder
from jobs.core.config import AppConfig, EncoderConfig, LakeConfig
from jobs.core.lake import Lake
from jobs.sequences.rendering import render_sequences, select_units
from jobs.synthetic import generate
from udfs.encoder import load_encoder
from udfs.spark_udf import embedding_udf

T0 = datetime(2024, 3, 1, 10, 0)
USER_EVENTS = (
    "array<struct<ts:timestamp, event_type:string, item_id:string, category:string, "
    "brand:string, price:double, session_id:string>>"
)


def test_rendering_of_user_sequences(spark: SparkSession) -> None:
    events = [
        (T0, "view", "p1", "electronics.smartphone", "samsung", 450.0, "s1"),
        (T0, "add_to_cart", "p1", "electronics.smartphone", "samsung", 450.0, "s1"),
        (T0, "search", None, None, None, None, "s2"),
        (T0, "purchase", "p9", "kids.toys", None, 12.5, "s2"),
    ]
    df = spark.createDataFrame([("u1", events)], f"user_id string, events {USER_EVENTS}")
    text = render_sequences(df, config=EncoderConfig()).first()
    assert text is not None
    assert text["rendered"] == (
        "view electronics smartphone samsung high, cart electronics smartphone samsung high, "
        "| search, buy kids toys cheap"
    )
    tokens = render_sequences(df, config=EncoderConfig(kind="sequence")).first()
    assert tokens is not None
    assert tokens["rendered"] == (
        "view:electronics.smartphone add_to_cart:electronics.smartphone [SEP] search:none "
        "purchase:kids.toys"
    )
    with_items = render_sequences(df, config=EncoderConfig(include_item_ids=True)).first()
    assert with_items is not None and "samsung high p1" in with_items["rendered"]


@pytest.fixture(scope="module")
def small_lake(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> AppConfig:
    """A lake with sessions and user sequences of 120 generated users."""
    root = tmp_path_factory.mktemp("embed")
    base = AppConfig()
    config = dataclasses.replace(
        base,
        generate=dataclasses.replace(
            base.generate,
            n_users=120,
            n_days=2,
            output_dir=str(root / "raw"),
            ground_truth_path=str(root / "truth.csv"),
        ),
        lake=LakeConfig(engine="delta-rs", root=str(root / "lake")),
        encoder=EncoderConfig(max_length=64, batch_size=32),
    )
    spec = dataclasses.replace(base.ingest.source.inputs[0], paths=(str(root / "raw" / "jsonl"),))
    config = dataclasses.replace(
        config,
        ingest=dataclasses.replace(
            base.ingest, source=dataclasses.replace(base.ingest.source, inputs=(spec,))
        ),
        train_encoder=dataclasses.replace(
            base.train_encoder,
            output_dir=str(root / "model"),
            epochs=12,
            hidden_size=32,
            batch_size=16,
            learning_rate=0.003,
        ),
    )
    generate(config.generate)
    lake = Lake(spark, config.lake)
    ingest.run(spark, lake, config, run_id="fixture")
    sessionize.run(spark, lake, config, run_id="fixture")
    return config


def test_udf_vectors_equal_the_core_for_the_same_rows(
    spark: SparkSession, small_lake: AppConfig
) -> None:
    from udfs.encoder import resolve_model_path

    lake = Lake(spark, small_lake.lake)
    rendered = (
        lake.read("user_sequences")
        .transform(select_units, unit="user", include_bots=False)
        .transform(render_sequences, config=small_lake.encoder)
        .repartition(3)  # several tasks, so several batches and worker encoders
    )
    # fp32: bf16 results depend (by ~1e-3) on which rows share a batch, and the UDF's batches
    # are not the core's.
    encoder = dataclasses.replace(small_lake.encoder, precision="fp32")
    model_dir = str(resolve_model_path(encoder))
    rows = rendered.select(
        "id", "rendered", embedding_udf(encoder, model_dir)("rendered").alias("v")
    ).collect()
    core = load_encoder(encoder, device="cpu")
    expected = core.encode([r["rendered"] for r in rows])
    got = np.array([r["v"] for r in rows], dtype=np.float32)
    assert got.shape == expected.shape == (120, 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_embed_job_versions_and_idempotent_reruns(
    spark: SparkSession, small_lake: AppConfig
) -> None:
    lake = Lake(spark, small_lake.lake)
    first = embed.run(spark, lake, small_lake, run_id="e1")
    assert first.rows == 120  # every human user; the generator's bots are excluded
    table = lake.read("embeddings")
    assert table.where("user_id like 'u00001%'").count() > 0
    norms = table.select(F.aggregate("embedding", F.lit(0.0), lambda a, x: a + x * x).alias("n"))
    assert all(abs(r["n"] - 1.0) < 1e-4 for r in norms.collect())

    embed.run(spark, lake, small_lake, run_id="e2")  # same model: replaces its partition
    table = lake.read("embeddings")
    assert table.count() == 120
    assert {r[0] for r in table.select("run_id").distinct().collect()} == {"e2"}

    sessions = dataclasses.replace(
        small_lake, embed=dataclasses.replace(small_lake.embed, unit="session")
    )
    by_session = embed.run(spark, lake, sessions, run_id="e3")  # another unit: added alongside
    assert lake.read("embeddings").count() == 120 + by_session.rows
    assert lake.read("embeddings").where("unit = 'session'").select("id").distinct().count() == (
        by_session.rows
    )


def test_train_encoder_lowers_its_loss_and_embeds_through_the_udf(
    spark: SparkSession, small_lake: AppConfig
) -> None:
    lake = Lake(spark, small_lake.lake)
    result = train_encoder.run(spark, lake, small_lake, run_id="t1")
    assert result.last_loss < 0.85 * result.first_loss
    assert (Path(result.output_dir) / "metadata.json").is_file()

    sequence = dataclasses.replace(
        small_lake, encoder=dataclasses.replace(small_lake.encoder, kind="sequence")
    )
    before = lake.read("embeddings").select("model_version").distinct().count()
    counts = embed.run(spark, lake, sequence, run_id="s1")
    assert counts.rows == 120
    assert lake.read("embeddings").select("model_version").distinct().count() == before + 1
    new_rows = lake.read("embeddings").where(F.col("model_version") == counts.model_version)
    assert new_rows.where("unit = 'user'").count() == 120
    assert {r[0] for r in new_rows.select(F.size("embedding")).distinct().collect()} == {32}


@pytest.mark.slow  # starts torchrun; the training itself is test_train_encoder_lowers_its_loss...
def test_train_encoder_runs_through_torch_distributor(
    spark: SparkSession, small_lake: AppConfig, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        small_lake.train_encoder,
        distributed=True,
        num_processes=1,
        output_dir=str(tmp_path / "distributed"),
    )
    config = dataclasses.replace(small_lake, train_encoder=settings)
    result = train_encoder.run(spark, Lake(spark, config.lake), config, run_id="td")
    assert result.last_loss < result.first_loss
    assert (tmp_path / "distributed" / "model.safetensors").is_file()
    assert (tmp_path / "distributed" / "event_vocab.json").is_file()


def test_incremental_embed_encodes_only_changed_sequences(
    spark: SparkSession, small_lake: AppConfig, tmp_path: Path
) -> None:
    root = tmp_path / "lake"
    for table in ("sessions", "user_sequences"):
        shutil.copytree(Path(small_lake.lake.root or "") / table, root / table)
    config = dataclasses.replace(small_lake, lake=LakeConfig(engine="delta-rs", root=str(root)))
    lake = Lake(spark, config.lake)
    embed.run(spark, lake, config, run_id="full")
    first = {r["id"]: r["embedding"] for r in lake.read("embeddings").collect()}

    sequences = lake.read("user_sequences").where(~F.col("is_bot"))
    target = sorted(r["user_id"] for r in sequences.select("user_id").collect())[0]
    one_less = F.slice("events", 1, F.size("events") - 1)
    changed = lake.read("user_sequences").withColumn(
        "events", F.when(F.col("user_id") == target, one_less).otherwise(F.col("events"))
    )
    lake.overwrite("user_sequences", changed)

    incremental = dataclasses.replace(
        config, embed=dataclasses.replace(config.embed, mode="incremental")
    )
    counts = embed.run(spark, lake, incremental, run_id="inc")
    assert (counts.rows, counts.embedded) == (sequences.count(), 1)
    rows = {r["id"]: r for r in lake.read("embeddings").collect()}
    assert {i for i, r in rows.items() if r["run_id"] == "inc"} == {target}
    assert len(rows) == counts.rows  # one row per id: replaced, not added
    assert not np.allclose(rows[target]["embedding"], first[target], atol=1e-4)
    # One Delta MERGE replaced the changed vector; no other row was rewritten or deleted.
    last = DeltaTable(str(root / "embeddings")).history(1)[0]
    assert last["operation"] == "MERGE"
    metrics = last["operationMetrics"]
    assert (metrics["num_target_rows_updated"], metrics["num_target_rows_deleted"]) == (1, 0)

    # The mix of carried and re-encoded vectors equals a full re-embed of the new sequences.
    embed.run(spark, lake, config, run_id="full-again")
    fresh = {r["id"]: r for r in lake.read("embeddings").collect()}
    assert set(fresh) == set(rows)
    for key, row in rows.items():
        # Equal up to the numeric path: with bf16 (the CPU default where the CPU has it) a
        # vector moves by ~1e-3 with the rows that share its batch; fp32 agrees to 1e-5.
        cosine = float(np.dot(row["embedding"], fresh[key]["embedding"]))
        assert cosine >= 0.9999, (key, cosine)
        assert row["content_hash"] == fresh[key]["content_hash"]
