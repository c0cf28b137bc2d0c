"""Typed Parquet columns: timestamps in ns / us / ms, with or without UTC adjustment, and dates
ingest as the right UTC instants; a file Spark still cannot read fails with an error naming it
(README: "Bring your own log")."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import ingest
from jobs.core.config import AppConfig, LakeConfig
from jobs.core.lake import Lake
from jobs.ingest import IngestError
from jobs.sources.columns import REASON
from jobs.sources.mapping import normalise
from jobs.sources.readers import read_raw

TIMES = ["2024-03-01 10:00:00.123456789", "2024-07-01 10:00:00", "2024-03-31 02:30:00"]


def config_for(
    tmp_path: Path, paths: list[Path], event_ts: str, *, timezone: str = "Europe/Berlin"
) -> AppConfig:
    base = AppConfig()
    spec = dataclasses.replace(
        base.ingest.source.inputs[0],
        paths=tuple(str(p) for p in paths),
        format="parquet",
        options={},
        columns={"event_id": "id", "user_id": "user", "event_ts": event_ts, "event_type": "type"},
    )
    source = dataclasses.replace(base.ingest.source, inputs=(spec,), timezone=timezone)
    return dataclasses.replace(
        base,
        ingest=dataclasses.replace(base.ingest, source=source),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
    )


def normalised(tmp_path: Path, spark: SparkSession, path: Path, event_ts: str) -> DataFrame:
    config = config_for(tmp_path, [path], event_ts)
    spec, source = config.ingest.source.inputs[0], config.ingest.source
    return normalise(read_raw(spark, spec), spec=spec, source=source, keep_raw=True)


def outcomes(df: DataFrame) -> dict[str, tuple[str | None, str | None]]:
    """event_id -> (UTC instant to the microsecond as text, quarantine reason)."""
    rows = df.select(
        "event_id",
        F.date_format("event_ts", "yyyy-MM-dd HH:mm:ss.SSSSSS").alias("utc"),
        F.col(REASON).alias("reason"),
    ).collect()
    return {r["event_id"]: (None if r["reason"] else r["utc"], r["reason"]) for r in rows}


def frame(times: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"e{i}" for i in range(len(times))],
            "user": "u1",
            "type": "view",
            "naive": pd.to_datetime(times, format="ISO8601"),
            "aware": pd.to_datetime(times, format="ISO8601").tz_localize("UTC"),
            "day": [pd.Timestamp(t).date() for t in times],
        }
    )


def test_pandas_default_parquet_nanosecond_timestamps_and_dates_ingest(
    spark: SparkSession, tmp_path: Path
) -> None:
    """pandas' to_parquet writes TIMESTAMP(NANOS, isAdjustedToUTC=true) for tz-aware and
    (NANOS, false) for naive datetimes; Spark alone fails with [PARQUET_TYPE_ILLEGAL]."""
    path = tmp_path / "pandas.parquet"
    frame(TIMES).to_parquet(path)
    schema = pq.ParquetFile(path).schema
    assert "timeUnit=nanoseconds" in str(schema.column(3).logical_type)  # the real thing

    # UTC-adjusted: the instant, to the microsecond (nanoseconds are truncated).
    assert outcomes(normalised(tmp_path / "a", spark, path, "aware")) == {
        "e0": ("2024-03-01 10:00:00.123456", None),
        "e1": ("2024-07-01 10:00:00.000000", None),
        "e2": ("2024-03-31 02:30:00.000000", None),
    }
    # Naive: wall-clock time in ingest.source.timezone (Berlin), a DST gap quarantined.
    assert outcomes(normalised(tmp_path / "n", spark, path, "naive")) == {
        "e0": ("2024-03-01 09:00:00.123456", None),
        "e1": ("2024-07-01 08:00:00.000000", None),
        "e2": (None, "nonexistent local time in Europe/Berlin (DST gap)"),
    }
    # date32: local midnight in the source zone.
    assert outcomes(normalised(tmp_path / "d", spark, path, "day")) == {
        "e0": ("2024-02-29 23:00:00.000000", None),
        "e1": ("2024-06-30 22:00:00.000000", None),
        "e2": ("2024-03-30 23:00:00.000000", None),
    }


@pytest.mark.parametrize("unit", ["ms", "us"])
def test_milli_and_microsecond_parquet_timestamps_ingest(
    spark: SparkSession, tmp_path: Path, unit: str
) -> None:
    path = tmp_path / f"{unit}.parquet"
    table = pa.Table.from_pandas(frame(TIMES[:2]), preserve_index=False)
    pq.write_table(table, path, coerce_timestamps=unit, allow_truncated_timestamps=True)
    fraction = "123000" if unit == "ms" else "123456"
    assert outcomes(normalised(tmp_path / "a", spark, path, "aware")) == {
        "e0": (f"2024-03-01 10:00:00.{fraction}", None),
        "e1": ("2024-07-01 10:00:00.000000", None),
    }
    assert outcomes(normalised(tmp_path / "n", spark, path, "naive")) == {
        "e0": (f"2024-03-01 09:00:00.{fraction}", None),
        "e1": ("2024-07-01 08:00:00.000000", None),
    }


def test_pandas_parquet_ingests_end_to_end_with_a_readable_raw_record(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "pandas.parquet"
    data = frame(TIMES[:2])
    data.loc[1, "type"] = "wishlist"  # quarantined, so its raw record is kept
    data.to_parquet(path)
    config = config_for(tmp_path, [path], "naive")
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.input_rows, counts.kept, counts.quarantined) == (2, 1, 1)
    events = lake.read("events").select(
        F.date_format("event_ts", "yyyy-MM-dd HH:mm:ss.SSSSSS").alias("ts"),
        F.col("event_date").cast("string").alias("d"),
    )
    assert [tuple(r) for r in events.collect()] == [("2024-03-01 09:00:00.123456", "2024-03-01")]
    (raw,) = [r["raw"] for r in lake.read("events_quarantine").collect()]
    assert json.loads(raw) == {
        "id": "e1",
        "user": "u1",
        "type": "wishlist",
        "naive": "2024-07-01T10:00:00.000000",
        "aware": "2024-07-01T10:00:00.000000Z",
        "day": "2024-07-01",
    }


def test_a_parquet_file_spark_cannot_read_fails_naming_the_file_and_the_fix(
    spark: SparkSession, tmp_path: Path
) -> None:
    nested = tmp_path / "nested.parquet"
    struct = pa.struct([("at", pa.timestamp("ns"))])
    pq.write_table(
        pa.table(
            {
                "id": ["e0"],
                "user": ["u1"],
                "type": ["view"],
                "ts": pa.array([{"at": dt.datetime(2024, 3, 1, 10)}], struct),
            }
        ),
        nested,
    )
    with pytest.raises(IngestError) as error:
        read_raw(spark, config_for(tmp_path, [nested], "ts.at").ingest.source.inputs[0])
    message = str(error.value)
    assert f"file:{nested}" in message and "'ts.at'" in message
    assert "coerce_timestamps='us'" in message

    clock = tmp_path / "clock.parquet"
    pq.write_table(pa.table({"id": ["e0"], "tm": pa.array([1], pa.time64("ns"))}), clock)
    with pytest.raises(IngestError) as error:
        read_raw(spark, config_for(tmp_path, [clock], "tm").ingest.source.inputs[0])
    assert str(error.value).startswith(
        f"cannot read Parquet input file file:{clock}: "
        "Illegal Parquet type: INT64 (TIME(NANOS,true)); rewrite the column"
    )


def test_files_that_disagree_on_a_column_type_fail_before_any_row_is_read(
    spark: SparkSession, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    # The microsecond file sorts first: its schema alone would read, and the other file would
    # fail halfway through the run.
    table = pa.Table.from_pandas(frame(TIMES[1:2]), preserve_index=False)
    pq.write_table(table, folder / "a.parquet", coerce_timestamps="us")
    frame(TIMES[:1]).to_parquet(folder / "b.parquet")  # nanoseconds
    with pytest.raises(IngestError) as error:
        read_raw(spark, config_for(tmp_path, [folder], "aware").ingest.source.inputs[0])
    message = str(error.value)
    assert message.startswith(f"cannot read Parquet input file file:{folder}/b.parquet: column ")
    assert f"in microseconds in file:{folder}/a.parquet" in message

    other = tmp_path / "types"
    other.mkdir()
    pq.write_table(pa.table({"id": ["e0"], "user": ["u1"], "price": [1]}), other / "a.parquet")
    pq.write_table(pa.table({"id": ["e1"], "user": ["u1"], "price": ["x"]}), other / "b.parquet")
    with pytest.raises(IngestError) as error:
        read_raw(spark, config_for(tmp_path, [other], "id").ingest.source.inputs[0])
    assert str(error.value) == (
        f"input ['{other}']: the Parquet files disagree on a column's type (Failed to merge "
        'incompatible data types "BIGINT" and "STRING"); rewrite them with one schema'
    )


def test_a_parquet_row_is_the_same_event_whatever_the_column_order_of_its_file(
    spark: SparkSession, tmp_path: Path
) -> None:
    # No source event id: the id is the hash of the raw record.  A producer re-sends a file
    # with its columns (and a struct's fields) in another order; an incremental run reads it
    # alone, where a full run reads it under the first file's column order.  Before the raw
    # record named its columns in name order, the re-sent row got another id and was kept a
    # second time.
    folder = tmp_path / "in"
    folder.mkdir()
    row = {"user": "u1", "type": "view", "ts": "2024-03-01 10:00:00", "price": 1.5}
    context = pa.array([{"page": "home", "ab": 2}])
    first = pa.table({**{k: [v] for k, v in row.items()}, "ctx": context})
    reordered = pa.table(
        {
            "ctx": pa.array([{"ab": 2, "page": "home"}]),
            **{k: [row[k]] for k in reversed(list(row))},
        }
    )
    pq.write_table(first, folder / "a.parquet")
    base = config_for(tmp_path, [folder], "ts")
    spec = dataclasses.replace(
        base.ingest.source.inputs[0],
        columns={"user_id": "user", "event_ts": "ts", "event_type": "type", "price": "price"},
    )
    source = dataclasses.replace(base.ingest.source, inputs=(spec,))
    config = dataclasses.replace(
        base, ingest=dataclasses.replace(base.ingest, source=source, mode="incremental")
    )
    lake = Lake(spark, config.lake)
    assert ingest.run(spark, lake, config, run_id="r1").kept == 1
    pq.write_table(reordered, folder / "b.parquet")
    again = ingest.run(spark, lake, config, run_id="r2")
    assert (again.input_rows, again.kept, again.duplicates_removed) == (1, 0, 1)


def test_a_folder_without_parquet_data_files_holds_no_records(
    spark: SparkSession, tmp_path: Path
) -> None:
    folder = tmp_path / "day"
    folder.mkdir()
    (folder / "_SUCCESS").write_text("")  # a writer's marker, and no data file (yet)
    config = config_for(tmp_path, [folder], "naive")
    lake = Lake(spark, config.lake)
    # Before: Spark's UNABLE_TO_INFER_SCHEMA as a Python traceback.
    with pytest.raises(IngestError) as failure:
        ingest.run(spark, lake, config, run_id="r")
    assert str(failure.value) == f"input ['{folder}'] holds no records (no Parquet data files)"
