"""What is a duplicate (README: "Bring your own log"): an identical raw record, or the same source
event id with the same content.  Records that differ in any raw field are distinct events, even
when every mapped column coincides; the same id with other content is quarantined as a conflict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from jobs import ingest
from jobs.core.config import AppConfig, InputSpec, LakeConfig, PrivacyConfig, SourceConfig
from jobs.core.lake import Lake
from jobs.core.tables import EVENTS, EVENTS_QUARANTINE, INGEST_LOG

#: A JD-style action log: numeric type codes (1 browse and 6 click both mean a view) and a
#: ``model_id`` the mapping does not read.
JD_FIELDS = ("user_id", "sku_id", "time", "model_id", "type", "cate", "brand")
JD_ROWS = [
    ("u1", "s1", "2016-04-01 10:00:00", "217", "6", "8", "214"),
    ("u1", "s1", "2016-04-01 10:00:00", "218", "6", "8", "214"),  # only model_id differs
    ("u1", "s1", "2016-04-01 10:00:00", "217", "6", "8", "214"),  # the first record again
]


def jd_source(path: Path, fmt: str, *, collapse: bool = False) -> SourceConfig:
    spec = InputSpec(
        paths=(str(path),),
        format=fmt,  # type: ignore[arg-type]
        columns={
            "user_id": "user_id",
            "event_ts": "time",
            "event_type": "type",
            "item_id": "sku_id",
            "category": "cate",
            "brand": "brand",
        },
    )
    return SourceConfig(
        name="jd",
        inputs=(spec,),
        event_type_map={"1": "view", "6": "view", "2": "add_to_cart", "4": "purchase"},
        collapse_mapped_duplicates=collapse,
    )


def config_for(tmp_path: Path, source: SourceConfig, *, mode: str = "full") -> AppConfig:
    base = AppConfig()
    return dataclasses.replace(
        base,
        ingest=dataclasses.replace(base.ingest, source=source, mode=mode),  # type: ignore[arg-type]
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
    )


def write_jd(tmp_path: Path, fmt: str) -> Path:
    records = [dict(zip(JD_FIELDS, row, strict=True)) for row in JD_ROWS]
    if fmt == "csv":
        path = tmp_path / "jd.csv"
        path.write_text("\n".join([",".join(JD_FIELDS), *(",".join(r) for r in JD_ROWS)]) + "\n")
    elif fmt == "jsonl":
        path = tmp_path / "jd.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path = tmp_path / "jd.parquet"
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_records_differing_in_an_unmapped_field_are_distinct_events(
    spark: SparkSession, tmp_path: Path, fmt: str
) -> None:
    config = config_for(tmp_path, jd_source(write_jd(tmp_path, fmt), fmt))
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")

    assert (counts.input_rows, counts.kept, counts.duplicates_removed, counts.quarantined) == (
        3,
        2,
        1,
        0,
    )
    assert counts.summary() == (
        "reconciliation OK: input 3 = kept 2 + duplicates 1 + quarantined 0"
    )
    events = lake.read(EVENTS).orderBy("source_order").collect()
    # Both are views of s1 at the same second, told apart by their raw records' hashes; the
    # first of each in file order is kept (rows 0 and 1).
    assert [(r["event_type"], r["item_id"], r["source_order"]) for r in events] == [
        ("view", "s1", 0),
        ("view", "s1", 65536),
    ]
    ids = [r["event_id"] for r in events]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)


def test_collapsing_mapped_duplicates_is_an_explicit_option_reported_apart(
    spark: SparkSession, tmp_path: Path
) -> None:
    config = config_for(tmp_path, jd_source(write_jd(tmp_path, "csv"), "csv", collapse=True))
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")

    assert (counts.kept, counts.duplicates_removed, counts.collapsed, counts.quarantined) == (
        1,
        1,
        1,
        0,
    )
    assert counts.reconciles
    assert counts.summary() == (
        "reconciliation OK: input 3 = kept 1 + duplicates 1 + quarantined 0 + collapsed 1"
    )
    (event,) = lake.read(EVENTS).collect()
    assert event["source_order"] == 0  # the first in source order stays


def purchase(event_id: str, price: float, minute: int = 0, kind: str = "purchase") -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "user": "u1",
            "event_time": f"2024-03-01T10:{minute:02d}:00Z",
            "type": kind,
            "product_id": "p1",
            "price": price,
        }
    )


def synthetic_config(tmp_path: Path, folder: Path, *, mode: str = "full") -> AppConfig:
    base = AppConfig()
    spec = dataclasses.replace(base.ingest.source.inputs[0], paths=(str(folder),))
    source = dataclasses.replace(base.ingest.source, inputs=(spec,))
    return config_for(tmp_path, source, mode=mode)


def test_a_second_event_under_the_same_id_is_quarantined_as_a_conflict(
    spark: SparkSession, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    second = purchase("o-1", 80.0)
    (folder / "day1.jsonl").write_text(purchase("o-1", 120.0) + "\n" + second + "\n")
    config = synthetic_config(tmp_path, folder)
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")

    assert (counts.kept, counts.duplicates_removed, counts.quarantined) == (1, 0, 1)
    assert counts.quarantine_reasons == {"conflicting event_id": 1}
    assert counts.reconciles
    (event,) = lake.read(EVENTS).collect()
    assert (event["event_id"], event["price"]) == ("o-1", 120.0)  # the first in source order
    (bad,) = lake.read(EVENTS_QUARANTINE).collect()
    assert (bad["reason"], bad["raw"]) == ("conflicting event_id", second)
    assert bad["source_file"].endswith("/day1.jsonl")
    log = {r["source_file"].rsplit("/", 1)[-1]: r for r in lake.read(INGEST_LOG).collect()}
    assert (log["day1.jsonl"]["input_rows"], log["day1.jsonl"]["quarantined_rows"]) == (2, 1)


def test_conflicts_and_repeats_against_events_already_ingested(
    spark: SparkSession, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    config = synthetic_config(tmp_path, folder, mode="incremental")
    lake = Lake(spark, config.lake)
    (folder / "day1.jsonl").write_text(purchase("o-1", 120.0) + "\n")
    first = ingest.run(spark, lake, config, run_id="day1")
    assert (first.kept, first.duplicates_removed, first.quarantined) == (1, 0, 0)

    # A day later: the same id with another price (and another time, so another date could
    # hold it), the first purchase re-sent, and a new view.
    conflicting = purchase("o-1", 80.0, minute=30)
    lines = [conflicting, purchase("o-1", 120.0), purchase("v-1", 5.0, minute=5, kind="view")]
    (folder / "day2.jsonl").write_text("\n".join(lines) + "\n")
    second = ingest.run(spark, lake, config, run_id="day2")

    assert (second.input_rows, second.kept, second.duplicates_removed, second.quarantined) == (
        3,
        1,
        1,
        1,
    )
    assert second.quarantine_reasons == {"conflicting event_id": 1}
    assert second.reconciles
    events = {r["event_id"]: r["price"] for r in lake.read(EVENTS).collect()}
    assert events == {"o-1": 120.0, "v-1": 5.0}  # the existing event stays as it was
    (bad,) = lake.read(EVENTS_QUARANTINE).collect()
    assert (bad["reason"], bad["raw"], bad["ingest_run_id"]) == (
        "conflicting event_id",
        conflicting,
        "day2",
    )

    # The same two files in one full run: the same events, the same conflict.
    full = dataclasses.replace(
        config,
        ingest=dataclasses.replace(config.ingest, mode="full"),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "full")),
    )
    full_lake = Lake(spark, full.lake)
    counts = ingest.run(spark, full_lake, full, run_id="full")
    assert (counts.kept, counts.duplicates_removed, counts.quarantined) == (2, 1, 1)
    assert {r["event_id"]: r["price"] for r in full_lake.read(EVENTS).collect()} == events
    assert [r["raw"] for r in full_lake.read(EVENTS_QUARANTINE).collect()] == [conflicting]


def test_without_a_source_id_the_id_hashes_the_pseudonymised_record(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGMENTS_HMAC_KEY", "test-only-hmac-key-9f2c4e1a7b3d5f60-not-a-secret")
    path = write_jd(tmp_path, "jsonl")
    config = dataclasses.replace(
        config_for(tmp_path, jd_source(path, "jsonl")),
        privacy=PrivacyConfig(pseudonymize_user_id=True),
    )
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.kept, counts.duplicates_removed) == (2, 1)
    first = lake.read(EVENTS).orderBy("source_order").first()
    assert first is not None
    # The id is not the hash of the record as written, which anyone could recompute from a
    # guessed raw line with the real user id: it hashes the record with the id replaced.
    line = path.read_text().splitlines()[0]
    assert first["event_id"] != hashlib.sha256(line.encode()).hexdigest()[:32]
    pseudonymised = line.replace('"u1"', f'"{first["user_id"]}"')
    assert first["event_id"] == hashlib.sha256(pseudonymised.encode()).hexdigest()[:32]


def test_content_comparison_treats_missing_values_as_equal_only_to_missing(
    spark: SparkSession,
) -> None:
    # Records under one id in source order: equal content with null fields (NaN prices, or
    # 0.0 and -0.0) repeats the first; a null where the first has a value, or a value where it
    # has none, is other content.
    from datetime import datetime

    from jobs.sources.columns import (
        CONTENT_COLUMNS,
        ELEMENT,
        LABEL,
        ORDER_VALUE,
        POSITION,
        RAW,
        REASON,
        SOURCE_FILE,
    )
    from jobs.sources.dedup import label_duplicates

    ts = datetime(2024, 3, 1, 10, 0)
    nan = float("nan")
    contents = [
        ("a", ("u", ts, "view", "i1", None, None, nan, None, None)),
        ("a", ("u", ts, "view", "i1", None, None, nan, None, None)),  # the same, nulls too
        ("a", ("u", ts, "view", "i1", "c", None, nan, None, None)),  # category given
        ("b", ("u", ts, "view", "i1", "c", "x", 1.0, None, None)),
        ("b", ("u", ts, "view", "i1", "c", None, 1.0, None, None)),  # brand missing
        ("b", ("u", ts, "view", "i1", "c", "x", 1.0, None, None)),  # the same again
        ("c", ("u", ts, "view", "i1", "c", "x", 0.0, None, None)),
        ("c", ("u", ts, "view", "i1", "c", "x", -0.0, None, None)),  # -0.0 equals 0.0
    ]
    schema = (
        f"{RAW} string, {SOURCE_FILE} string, {POSITION} long, {ELEMENT} int, "
        f"{ORDER_VALUE} long, event_id string, user_id string, event_ts timestamp, "
        "event_type string, item_id string, category string, brand string, price double, "
        f"query string, source_session_id string, {REASON} string"
    )
    assert CONTENT_COLUMNS == (
        "user_id", "event_ts", "event_type", "item_id", "category", "brand", "price", "query",
        "source_session_id",
    )  # fmt: skip
    rows = [
        (None, "file:/in.jsonl", i, 0, None, event_id, *content, None)
        for i, (event_id, content) in enumerate(contents)
    ]
    labelled = label_duplicates(spark.createDataFrame(rows, schema))
    got = [r[LABEL] for r in labelled.orderBy(POSITION).collect()]
    assert got == [
        "kept", "duplicate", "quarantined", "kept", "quarantined", "duplicate", "kept", "duplicate"
    ]  # fmt: skip
