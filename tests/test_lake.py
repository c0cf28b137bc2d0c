"""Delta table module: both engines behind one interface, every write checked against the
table's contract."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from jobs.core.config import LakeConfig
from jobs.core.lake import Lake, LakeError
from jobs.core.lake.delta_spark import delta_spark_available
from jobs.core.tables import Column, TableContract

SCHEMA = "id long, name string, price double, ts timestamp, day date"


def _rows() -> list[tuple]:
    return [
        (1, "a", 1.5, datetime(2024, 3, 1, 10, 0, 0, 123456), date(2024, 3, 1)),
        (2, "b", None, datetime(2024, 3, 1, 23, 59, 59), date(2024, 3, 1)),
        (3, None, 7.0, datetime(2024, 3, 2, 0, 0, 1), date(2024, 3, 2)),
        (4, "d", 2.0, None, date(2024, 3, 3)),
    ]


ALL_MODES = ("overwrite", "append", "overwrite_partitions", "merge")


def _contract(
    spark: SparkSession, name: str, ddl: str, partition_by: tuple[str, ...] = ()
) -> TableContract:
    """A test table's contract: the columns of ``ddl``, every write mode allowed."""
    schema = spark.createDataFrame([], ddl).schema
    return TableContract(
        name,
        owner="ingest",
        description="test table",
        columns=tuple(Column(f.name, f.dataType) for f in schema.fields),
        key=(schema.fields[0].name,),
        partition_by=partition_by,
        write_modes=ALL_MODES,
    )


def _lake(
    spark: SparkSession,
    tmp_path: Path,
    engine: str = "delta-rs",
    *,
    flat: str = "id long",
    schema: str = SCHEMA,
) -> Lake:
    """A lake knowing table ``t`` (``schema``, partitioned by day) and ``flat`` (``flat``)."""
    contracts = {
        "t": _contract(spark, "t", schema, ("day",)),
        "flat": _contract(spark, "flat", flat),
    }
    config = LakeConfig(engine=engine, root=str(tmp_path / "lake"))  # type: ignore[arg-type]
    return Lake(spark, config, contracts=contracts)


def _frame(spark: SparkSession, rows: list[tuple] | None = None) -> DataFrame:
    return spark.createDataFrame(_rows() if rows is None else rows, SCHEMA)


def test_overwrite_then_read_back_identically(spark: SparkSession, tmp_path: Path) -> None:
    lake = _lake(spark, tmp_path)
    df = _frame(spark)
    result = lake.overwrite("t", df)
    assert result.rows_written == 4 and result.version == 0
    assertDataFrameEqual(lake.read("t"), df)
    # A fresh Lake (a new run) reads the same table.
    assertDataFrameEqual(_lake(spark, tmp_path).read("t"), df)


def test_deltalake_sees_real_versions_commits_and_partitions(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = _lake(spark, tmp_path)
    lake.overwrite("t", _frame(spark))
    lake.overwrite("t", _frame(spark))
    path = lake.location("t").path
    assert path is not None
    table = DeltaTable(path)
    assert table.version() == 1
    assert [h["operation"] for h in table.history()] == ["WRITE", "CREATE TABLE"]
    assert table.metadata().partition_columns == ["day"]
    assert table.to_pyarrow_table().num_rows == 4  # the overwrite replaced, not appended
    assert (Path(path) / "_delta_log" / "00000000000000000001.json").exists()
    # Per-file statistics are written, so engines can skip files and count without scanning.
    adds = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    assert sum(a["num_records"] for a in adds) == 4
    by_day = {a["partition.day"]: a for a in adds}
    assert by_day[date(2024, 3, 1)]["min.id"] == 1 and by_day[date(2024, 3, 1)]["max.id"] == 2
    assert lake.describe("t").rows == 4
    # Time travel to the first version works.
    assert DeltaTable(path, version=0).to_pyarrow_table().num_rows == 4


def test_partition_overwrite_replaces_only_its_partitions(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = _lake(spark, tmp_path)
    lake.overwrite("t", _frame(spark))
    replacement = _frame(spark, [(30, "new", 1.0, datetime(2024, 3, 2, 5), date(2024, 3, 2))])
    result = lake.overwrite_partitions("t", replacement, {"day": [date(2024, 3, 2)]})
    assert result.rows_written == 1
    got = lake.read("t")
    expected = _frame(spark, [r for r in _rows() if r[4] != date(2024, 3, 2)]).union(replacement)
    assertDataFrameEqual(got, expected)
    # Replacing a partition with nothing deletes it and leaves the others.
    lake.overwrite_partitions("t", replacement.limit(0), {"day": ["2024-03-03"]})
    assert sorted(r["id"] for r in lake.read("t").collect()) == [1, 2, 30]


def test_partition_overwrite_refuses_rows_outside_the_partitions(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = _lake(spark, tmp_path)
    lake.overwrite("t", _frame(spark))
    with pytest.raises(LakeError, match="refusing to write outside"):
        lake.overwrite_partitions("t", _frame(spark), {"day": ["2024-03-01"]})
    assert lake.version("t") == 0  # nothing was committed
    assert lake.read("t").count() == 4
    with pytest.raises(LakeError, match="partition columns"):
        lake.overwrite_partitions("t", _frame(spark), {"name": ["a"]})


def test_append_adds_rows_in_one_commit(spark: SparkSession, tmp_path: Path) -> None:
    lake = _lake(spark, tmp_path, flat="id long, name string, price double, ts timestamp")
    flat = _frame(spark).drop("day")
    lake.append("flat", flat)
    lake.append("flat", flat)
    assert lake.read("flat").count() == 8
    assert lake.version("flat") == 1


def test_writes_off_the_contract_fail_before_the_commit(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = _lake(spark, tmp_path)
    lake.overwrite("t", _frame(spark))
    changed = _frame(spark).withColumnRenamed("name", "label")
    with pytest.raises(
        LakeError, match=r"^t: .*contract.*missing column 'name'; unexpected column 'label'$"
    ):
        lake.append("t", changed)
    retyped = _frame(spark).selectExpr("id", "name", "cast(price as string) price", "ts", "day")
    with pytest.raises(LakeError, match=r"column 'price' is string, the contract says double"):
        lake.overwrite("t", retyped)
    reordered = _frame(spark).select("name", "id", "price", "ts", "day")
    with pytest.raises(LakeError, match=r"the contract's order is \['id', 'name'"):
        lake.overwrite("t", reordered)
    assert lake.version("t") == 0
    assert not list((Path(lake.location("t").path or "") / "_staging").glob("*/*"))


def test_write_modes_come_from_the_contract(spark: SparkSession, lake: Lake) -> None:
    # The product's registry: cluster_metrics is only ever replaced run by run.
    metrics = spark.createDataFrame([], lake.contract("cluster_metrics").schema)
    with pytest.raises(LakeError, match=r"cluster_metrics: overwrite is not a write mode"):
        lake.overwrite("cluster_metrics", metrics)
    events = spark.createDataFrame([], lake.contract("events").schema).drop("ingest_run_id")
    with pytest.raises(LakeError, match=r"^events: .*missing column 'ingest_run_id'"):
        lake.append("events", events)


def test_engine_refuses_a_table_on_disk_that_differs_from_the_contract(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A contract changed between versions: Delta refuses the silent schema change."""
    _lake(spark, tmp_path).overwrite("t", _frame(spark))
    renamed = SCHEMA.replace("name string", "label string")
    newer = _lake(spark, tmp_path, schema=renamed)
    with pytest.raises(LakeError, match=r"missing \['name'\], unexpected \['label'\]"):
        newer.append("t", _frame(spark).withColumnRenamed("name", "label"))
    assert newer.version("t") == 0


def test_empty_dataframe_creates_a_readable_empty_table(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = _lake(spark, tmp_path)
    result = lake.overwrite("t", _frame(spark).limit(0))
    assert result.rows_written == 0
    empty = lake.read("t")
    assert empty.count() == 0
    assert [(f.name, f.dataType) for f in empty.schema] == [
        (f.name, f.dataType) for f in _frame(spark).schema
    ]


def test_no_staging_left_behind_and_unknown_tables_rejected(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = _lake(spark, tmp_path)
    lake.overwrite("t", _frame(spark))
    path = Path(lake.location("t").path or "")
    staging = path / "_staging"
    assert not staging.exists() or not any(staging.iterdir())
    committed = {
        json.loads(line)["add"]["path"]
        for log_file in (path / "_delta_log").glob("*.json")
        for line in log_file.read_text().splitlines()
        if '"add"' in line
    }
    on_disk = {str(p.relative_to(path)) for p in path.rglob("*.parquet")}
    assert on_disk == committed
    with pytest.raises(LakeError, match="unknown table 'nope'; the tables are t, flat"):
        lake.read("nope")


def test_auto_engine_picks_delta_rs_without_jars_and_spark_engine_refuses(
    spark: SparkSession, tmp_path: Path
) -> None:
    available, reason = delta_spark_available(spark)
    if available:
        pytest.skip("Delta jars are loaded in this session; the fallback is not exercised")
    assert "Delta" in reason
    assert _lake(spark, tmp_path, engine="auto").engine == "delta-rs"
    with pytest.raises(LakeError, match=r"lake\.engine=spark"):
        _lake(spark, tmp_path, engine="spark")


def test_filtered_reads_find_long_strings_and_columns_after_nested_ones(
    spark: SparkSession, tmp_path: Path
) -> None:
    ddl = "id long, nested struct<x:long, y:long>, long_id string, c double"
    lake = _lake(spark, tmp_path, flat=ddl)
    long_ids = [f"{i:04d}-" + "x" * 300 for i in range(3)]
    frame = spark.createDataFrame([(i, (i, i * 100), long_ids[i], float(i)) for i in range(3)], ddl)
    lake.overwrite("flat", frame)
    table = DeltaTable(lake.location("flat").path or "")
    # delta-rs prunes files by these statistics: wrong or missing ones lose rows.
    assert table.to_pyarrow_table(filters=[("long_id", "=", long_ids[1])]).num_rows == 1
    assert table.to_pyarrow_table(filters=[("c", "=", 2.0)]).num_rows == 1
    adds = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    assert max(a["max.c"] for a in adds if a.get("max.c") is not None) == 2.0


def test_partition_overwrite_of_null_and_timestamp_partitions(
    spark: SparkSession, tmp_path: Path
) -> None:
    contracts = {
        "p": _contract(spark, "p", "id long, p string", ("p",)),
        "t": _contract(spark, "t", "id long, at timestamp", ("at",)),
    }
    lake = Lake(
        spark, LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")), contracts=contracts
    )
    lake.overwrite("p", spark.createDataFrame([(1, None), (2, "k")], "id long, p string"))
    lake.overwrite_partitions(
        "p", spark.createDataFrame([(3, None)], "id long, p string"), {"p": [None]}
    )
    assert sorted(r["id"] for r in lake.read("p").collect()) == [2, 3]
    with pytest.raises(LakeError, match="null partition"):
        lake.overwrite_partitions(
            "p", spark.createDataFrame([(4, "k")], "id long, p string"), {"p": [None, "k"]}
        )
    at = datetime(2024, 3, 1, 10)
    lake.overwrite("t", spark.createDataFrame([(1, at)], "id long, at timestamp"))
    lake.overwrite_partitions(
        "t", spark.createDataFrame([(2, at)], "id long, at timestamp"), {"at": [at]}
    )
    assert [r["id"] for r in lake.read("t").collect()] == [2]


def test_decimal_columns_write(spark: SparkSession, tmp_path: Path) -> None:
    lake = _lake(spark, tmp_path, flat="id long, amount decimal(10, 2)")
    frame = spark.sql("SELECT 1L AS id, CAST(12.34 AS DECIMAL(10, 2)) AS amount")
    assert lake.overwrite("flat", frame).rows_written == 1
    assert lake.read("flat").first()["amount"] == Decimal("12.34")  # type: ignore[index]


def test_concurrent_commits_with_one_app_id_conflict(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers read the same version and commit the same transaction id: one lands, the
    other fails with ConcurrentWriteError, and the table records the txn version once."""
    import threading

    from jobs.core.lake import ConcurrentWriteError, Txn
    from jobs.core.lake import delta_rs as engine

    lake = _lake(spark, tmp_path, flat="id long")
    lake.overwrite("flat", spark.createDataFrame([(0,)], "id long"))
    assert lake.txn_version("flat", "ingest") is None
    both_read = threading.Barrier(2, timeout=120)
    stats = engine.file_stats

    def stats_after_both_read(metadata: object) -> str:
        both_read.wait()  # each writer has loaded its snapshot and staged its files
        return stats(metadata)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "file_stats", stats_after_both_read)
    outcomes: list[str] = []

    def write(value: int) -> None:
        frame = spark.createDataFrame([(value,)], "id long").coalesce(1)
        try:
            lake.append("flat", frame, txn=Txn("ingest", 1))
            outcomes.append("committed")
        except ConcurrentWriteError as exc:
            assert "concurrent writer committed" in str(exc)
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["committed", "conflict"]
    assert lake.read("flat").count() == 2  # the first row and one of the two appends
    assert lake.txn_version("flat", "ingest") == 1
    # A writer that read an older state than the table now holds is refused outright.
    monkeypatch.setattr(engine, "file_stats", stats)
    with pytest.raises(ConcurrentWriteError, match=r"expected transaction 'ingest' at version 0"):
        lake.append("flat", spark.createDataFrame([(3,)], "id long"), txn=Txn("ingest", 1))
    lake.append("flat", spark.createDataFrame([(3,)], "id long"), txn=Txn("ingest", 2))
    assert lake.txn_version("flat", "ingest") == 2


def check_merge(spark: SparkSession, lake: Lake) -> None:
    """Delta MERGE through ``lake`` (either engine) on table ``t`` (key ``id``, partitioned by
    ``day``): a missing table is created from the source; then a conditional update, an
    insert and a delete of what the source lacks in the scoped partition, in one commit whose
    counts are Delta's own; rows outside the scope are never touched."""
    created = lake.merge("t", _frame(spark))
    assert (created.version, created.rows_written) == (0, 4)
    source = _frame(
        spark,
        [
            (1, "A", 9.0, datetime(2024, 3, 1, 11, 0, 0), date(2024, 3, 1)),  # renamed: update
            (2, "b", 5.0, datetime(2024, 3, 1, 23, 59, 59), date(2024, 3, 1)),  # same name: kept
            (5, "e", 1.0, None, date(2024, 3, 1)),  # new key: insert
        ],
    )
    result = lake.merge(
        "t", source, update_if="t.name <> s.name", delete_unmatched_in={"day": [date(2024, 3, 1)]}
    )
    assert (result.version, result.rows_written, result.rows_updated, result.rows_deleted) == (
        1,
        2,
        1,
        0,
    )
    _, second, third, fourth = _rows()
    expected = [source.collect()[0], second, third, fourth, (5, "e", 1.0, None, date(2024, 3, 1))]
    assertDataFrameEqual(lake.read("t"), _frame(spark, [tuple(r) for r in expected]))
    # Row 3 (day 2024-03-02) is outside the scope: the source's lack of it deletes nothing.
    # Row 2 leaves the 2024-03-01 source: it is deleted; row 4 is updated without a condition.
    again = lake.merge(
        "t",
        _frame(spark, [tuple(expected[0]), (4, "D", 2.0, None, date(2024, 3, 3))]),
        delete_unmatched_in={"day": [date(2024, 3, 1)]},
    )
    assert (again.rows_updated, again.rows_deleted) == (2, 2)
    remaining = [tuple(expected[0]), third, (4, "D", 2.0, None, date(2024, 3, 3))]
    assertDataFrameEqual(lake.read("t"), _frame(spark, remaining))
    assert lake.version("t") == 2
    # Insert-only (``update_if="false"``, as evaluate stores history vectors): a key already
    # there keeps its row, a new key is inserted.
    inserted = (6, "f", 3.0, None, date(2024, 3, 3))
    only_new = lake.merge(
        "t",
        _frame(spark, [(1, "changed", 0.0, None, date(2024, 3, 1)), inserted]),
        update_if="false",
    )
    assert (only_new.rows_written, only_new.rows_updated, only_new.rows_deleted) == (1, 0, 0)
    assertDataFrameEqual(lake.read("t"), _frame(spark, [*remaining, inserted]))
    assert lake.version("t") == 3


def test_merge_updates_inserts_and_deletes_in_one_commit(
    spark: SparkSession, tmp_path: Path
) -> None:
    check_merge(spark, _lake(spark, tmp_path))
    history = DeltaTable(str(tmp_path / "lake" / "t")).history()
    assert [h["operation"] for h in history][:2] == ["MERGE", "MERGE"]


def test_merge_is_refused_where_the_contract_does_not_allow_it(
    spark: SparkSession, tmp_path: Path
) -> None:
    contract = dataclasses.replace(_contract(spark, "t", SCHEMA), write_modes=("overwrite",))
    config = LakeConfig(engine="delta-rs", root=str(tmp_path / "lake"))
    Lake(spark, config, contracts={"t": contract}).overwrite("t", _frame(spark))
    with pytest.raises(LakeError, match="merge is not a write mode"):
        Lake(spark, config, contracts={"t": contract}).merge("t", _frame(spark))
    with pytest.raises(LakeError, match="does not match the table contract"):
        _lake(spark, tmp_path).merge("t", spark.createDataFrame([(1,)], "id long"))
    assert DeltaTable(str(tmp_path / "lake" / "t")).version() == 0
