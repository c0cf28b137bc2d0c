"""Events with equal timestamps keep source order (README: "Bring your own log"): the file and the
record's position in it, or a configured ``ingest.source.order_by`` such as a ``step`` field, in
the session cut, the ``events`` arrays, ``max_events`` truncation and the rendered text."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import ingest, sessionize
from jobs.core.config import AppConfig, EncoderConfig, LakeConfig
from jobs.core.lake import Lake
from jobs.core.tables import EVENTS, EVENTS_QUARANTINE, SESSIONS, USER_SEQUENCES
from jobs.sequences.rendering import render_sequences
from jobs.sources.columns import POSITION
from jobs.sources.readers import read_raw, resolve_positions


def line(event_id: str, kind: str, *, second: int = 0, **extra: object) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "user": "u1",
            "event_time": f"2024-03-01T10:00:{second:02d}Z",
            "type": kind,
            "product_id": f"p-{event_id}",
            **extra,
        }
    )


def config_for(
    tmp_path: Path, path: Path, *, max_events: int = 200, order_by: str | None = None
) -> AppConfig:
    base = AppConfig()
    spec = dataclasses.replace(base.ingest.source.inputs[0], paths=(str(path),))
    source = dataclasses.replace(base.ingest.source, inputs=(spec,), order_by=order_by)
    return dataclasses.replace(
        base,
        ingest=dataclasses.replace(base.ingest, source=source),
        sessionize=dataclasses.replace(base.sessionize, max_events=max_events),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
    )


def run(spark: SparkSession, config: AppConfig) -> Lake:
    lake = Lake(spark, config.lake)
    assert ingest.run(spark, lake, config, run_id="r").reconciles
    sessionize.run(spark, lake, config, run_id="r")
    return lake


def session_types(lake: Lake) -> list[str]:
    (session,) = lake.read(SESSIONS).collect()
    return [e["event_type"] for e in session["events"]]


def test_events_in_one_second_keep_the_order_they_were_logged_in(
    spark: SparkSession, tmp_path: Path
) -> None:
    # Ids sort the other way round, and so do the type names (add_to_cart < purchase < view).
    path = tmp_path / "one_second.jsonl"
    path.write_text("\n".join([line("z", "view"), line("y", "cart"), line("x", "purchase")]))
    lake = run(spark, config_for(tmp_path, path))

    assert session_types(lake) == ["view", "add_to_cart", "purchase"]
    (user,) = lake.read(USER_SEQUENCES).collect()
    assert [e["event_type"] for e in user["events"]] == ["view", "add_to_cart", "purchase"]
    text = render_sequences(lake.read(USER_SEQUENCES), config=EncoderConfig(kind="text"))
    assert text.first()["rendered"] == "view, cart, buy"  # type: ignore[index]
    events = lake.read(EVENTS).orderBy("event_id").collect()
    assert [(r["event_id"], r["source_order"]) for r in events] == [
        ("x", 2 * 65536),
        ("y", 65536),
        ("z", 0),
    ]

    # Truncation keeps the last events in that order.
    short = run(spark, config_for(tmp_path / "short", path, max_events=2))
    assert session_types(short) == ["add_to_cart", "purchase"]
    (user,) = short.read(USER_SEQUENCES).collect()
    assert [e["item_id"] for e in user["events"]] == ["p-y", "p-x"]
    text = render_sequences(short.read(SESSIONS), config=EncoderConfig(kind="text"))
    assert text.first()["rendered"] == "cart, buy"  # type: ignore[index]


@pytest.mark.slow  # an ingest and a sessionize, about 12 s; the default order is tested above
def test_a_configured_order_column_orders_ties(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "steps.jsonl"
    lines = [
        line("a", "purchase", step=3),
        line("b", "view", step=1),
        line("c", "cart", step="2"),
        line("d", "view", second=30),  # no step
    ]
    path.write_text("\n".join(lines) + "\n")

    in_file_order = run(spark, config_for(tmp_path / "file", path))
    assert session_types(in_file_order) == ["purchase", "view", "add_to_cart", "view"]

    by_step = run(spark, config_for(tmp_path / "step", path, order_by="step"))
    assert session_types(by_step) == ["view", "add_to_cart", "purchase"]
    orders = {r["event_id"]: r["source_order"] for r in by_step.read(EVENTS).collect()}
    assert orders == {"a": 3, "b": 1, "c": 2}
    (missing,) = by_step.read(EVENTS_QUARANTINE).collect()
    assert (missing["reason"], missing["raw"]) == ("missing order_by value", lines[3])


@pytest.fixture
def split_size(spark: SparkSession) -> Iterator[Callable[[int], None]]:
    """Sets the bytes per file split (``spark.sql.files.maxPartitionBytes``) for the test."""
    key = "spark.sql.files.maxPartitionBytes"
    before = spark.conf.get(key)
    yield lambda size: spark.conf.set(key, str(size))
    spark.conf.set(key, before)


def positions(spark: SparkSession, paths: list[Path]) -> dict[tuple[str, int], int]:
    """(file name, line number from 0) -> ``__position`` of that record."""
    spec = dataclasses.replace(
        AppConfig().ingest.source.inputs[0], paths=tuple(str(p) for p in paths)
    )
    raw = read_raw(spark, spec).persist()
    try:
        resolved = resolve_positions(raw).select(
            F.regexp_extract("__source_file", r"([^/]+)$", 1).alias("file"),
            F.get_json_object("__raw", "$.n").cast("int").alias("n"),
            POSITION,
        )
        return {(r["file"], r["n"]): r[POSITION] for r in resolved.collect()}
    finally:
        raw.unpersist()


def test_positions_are_line_numbers_however_files_are_split(
    spark: SparkSession, tmp_path: Path, split_size: Callable[[int], None]
) -> None:
    lines = [json.dumps({"n": n, "pad": "x" * (n % 7) * 10}) for n in range(400)]
    plain, packed = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    plain.write_text("\n".join(lines) + "\n")  # about 26 kB
    packed.write_bytes(gzip.compress(("\n".join(lines[:50]) + "\n").encode()))
    expected = {("a.jsonl", n): n for n in range(400)} | {("b.jsonl.gz", n): n for n in range(50)}
    split_size(1024)  # many splits per file, several packed into each partition
    assert spark.read.text(str(plain)).rdd.getNumPartitions() > 2
    assert positions(spark, [plain, packed]) == expected
    # Cut differently, and read alone (as an incremental run reads one new file): the same.
    split_size(3000)
    assert positions(spark, [plain]) == {k: v for k, v in expected.items() if k[0] == "a.jsonl"}
