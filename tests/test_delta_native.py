"""Native Delta (delta-spark) in a session of its own: jars from Maven, a local Hive metastore.

These tests need a SparkSession whose JVM has delta-spark's jars, and a process has one JVM, so
they run in a pytest process of their own: ``test_native_delta_group_in_its_own_jvm`` (in the
default suite) collects the result of ``pytest tests/test_delta_native.py`` run with
``SEGMENTS_DELTA_SPARK_JVM=1`` (started in the background right after collection, so that it
overlaps with the other tests), and only there are the other tests collected
(``pytest_collection_modifyitems`` in tests/conftest.py deselects them elsewhere, and the
wrapper there).
The session is built by the product's own helper, ``get_spark(..., delta=True)``, which
resolves ``io.delta:delta-spark_2.13`` (the installed delta-spark's version) from Maven Central,
with a Hive metastore (Derby) and warehouse in a temporary folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from jobs.core.config import LakeConfig, SparkConfig
from jobs.core.lake import Lake
from jobs.core.lake.delta_spark import delta_spark_available
from jobs.core.lake.maintenance import maintain
from jobs.explore import spark_views

from .conftest import TEST_JVM_OPTIONS, TEST_SPARK_SETTINGS, BackgroundRun
from .test_incremental import check_crossing_session
from .test_lake import SCHEMA, _contract, _frame, _rows, check_merge
from .test_privacy import check_hmac

IN_OWN_JVM = os.environ.get("SEGMENTS_DELTA_SPARK_JVM") == "1"
pytestmark = pytest.mark.delta_spark


#: This group's own pytest process (started by tests/conftest.py after collection).
NATIVE_RUN = BackgroundRun()


def start_native_group() -> None:
    """Start ``pytest tests/test_delta_native.py`` in its own process, in the background (once
    per session: tests/conftest.py calls this after collection)."""
    from jobs.core.session import delta_package

    env = {**os.environ, "SEGMENTS_DELTA_SPARK_JVM": "1", "PYSPARK_PYTHON": sys.executable}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    NATIVE_RUN.start(command, env=env, requires=delta_package())


def test_native_delta_group_in_its_own_jvm() -> None:
    start_native_group()  # no-op when tests/conftest.py started it
    text = NATIVE_RUN.wait()
    # Everything but this wrapper ran and passed: nothing skipped for want of the jars.
    assert "10 passed, 1 deselected" in text, text[-6000:]


#: pyspark decides between its classic and its Connect functions (``F.col`` ...) by this
#: variable, which the product's helper sets once it has built a Connect session.
CONNECT_MODE = "SPARK_CONNECT_MODE_ENABLED"


@pytest.fixture(scope="module")
def delta_sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """A Spark Connect session to a Connect server started in this process by the product's
    helper (``spark.remote: local[2]``, ``delta=True``), so the server's JVM has the Delta jars
    and the metastore.  This process also uses the server's own classic session (``delta``),
    so the Connect mode is switched on only for the tests that use ``delta_connect``."""
    root = tmp_path_factory.mktemp("metastore")
    session = _delta_session(root)
    os.environ.pop(CONNECT_MODE, None)
    yield session
    os.environ[CONNECT_MODE] = "1"  # stop() removes it
    session.stop()


@pytest.fixture
def delta_connect(delta_sessions: SparkSession, monkeypatch: pytest.MonkeyPatch) -> SparkSession:
    monkeypatch.setenv(CONNECT_MODE, "1")
    return delta_sessions


@pytest.fixture
def delta(delta_sessions: SparkSession, monkeypatch: pytest.MonkeyPatch) -> SparkSession:
    """The Connect server's own classic session: the same JVM, Delta jars and metastore.
    Compatibility shim: pyspark keeps it in ``SparkSession._instantiatedSession``."""
    monkeypatch.delenv(CONNECT_MODE, raising=False)
    classic = SparkSession._instantiatedSession
    assert classic is not None and classic is not delta_sessions
    return classic


def _delta_session(root: Path) -> SparkSession:
    from jobs.core.session import get_spark

    metastore = f"jdbc:derby:;databaseName={root / 'metastore_db'};create=true"
    return get_spark(
        SparkConfig(
            remote="local[2]",
            app_name="clickstream-segments-delta-tests",
            shuffle_partitions=2,
            driver_memory="2g",
            driver_java_options=f"-Dderby.system.home={root} {TEST_JVM_OPTIONS}",
            extra={
                "spark.sql.catalogImplementation": "hive",
                "spark.sql.warehouse.dir": str(root / "warehouse"),
                "spark.hadoop.javax.jdo.option.ConnectionURL": metastore,
                "spark.ui.showConsoleProgress": "false",
                **TEST_SPARK_SETTINGS,
            },
        ),
        delta=True,
    )


def _lake(spark: SparkSession, engine: str, **lake: object) -> Lake:
    contracts = {"t": _contract(spark, "t", SCHEMA, ("day",))}
    return Lake(spark, LakeConfig(engine=engine, **lake), contracts=contracts)  # type: ignore[arg-type]


def test_the_helper_builds_a_session_with_the_delta_jars(delta: SparkSession) -> None:
    available, reason = delta_spark_available(delta)
    assert available, reason
    assert Lake(delta, LakeConfig(engine="auto")).engine == "spark"
    assert "io.delta:delta-spark_2.13:" in delta.conf.get("spark.jars.packages", "")


def test_the_connect_session_sees_delta(delta_connect: SparkSession) -> None:
    assert type(delta_connect).__module__.startswith("pyspark.sql.connect")
    available, reason = delta_spark_available(delta_connect)
    assert available, reason
    assert Lake(delta_connect, LakeConfig(engine="auto")).engine == "spark"


def test_spark_engine_round_trip_and_cross_engine_read(delta: SparkSession, tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    spark_lake = _lake(delta, "spark", root=root)
    spark_lake.overwrite("t", _frame(delta))
    # replaceWhere: exactly the partition day=2024-03-02 is replaced.
    spark_lake.overwrite_partitions("t", _frame(delta, [_rows()[2]]), {"day": [date(2024, 3, 2)]})
    rs_lake = _lake(delta, "delta-rs", root=root)
    # The delta-rs engine reads what delta-spark wrote, identically ...
    assertDataFrameEqual(rs_lake.read("t"), spark_lake.read("t"))
    assertDataFrameEqual(spark_lake.read("t"), _frame(delta))
    # ... and delta-spark reads what delta-rs wrote.
    rs_lake.overwrite_partitions("t", _frame(delta, [_rows()[0]]), {"day": [date(2024, 3, 1)]})
    assertDataFrameEqual(spark_lake.read("t"), _frame(delta, [_rows()[0], *_rows()[2:]]))
    assert spark_lake.version("t") == rs_lake.version("t") == 2


def test_catalog_schema_names_tables_in_the_metastore(delta: SparkSession, tmp_path: Path) -> None:
    delta.sql("CREATE SCHEMA IF NOT EXISTS clickstream_test")
    lake = _lake(delta, "spark", root=None, catalog_schema="clickstream_test")
    assert lake.location("t").name == "clickstream_test.t" and lake.location("t").path is None
    assert not lake.exists("t")
    lake.overwrite("t", _frame(delta))
    lake.overwrite_partitions("t", _frame(delta, [_rows()[3]]), {"day": [date(2024, 3, 3)]})
    assert delta.catalog.tableExists("clickstream_test.t")
    assertDataFrameEqual(delta.table("clickstream_test.t"), _frame(delta))
    assert lake.version("t") == 1 and lake.describe("t").rows == 4
    detail = delta.sql("DESCRIBE DETAIL clickstream_test.t").first()
    assert detail is not None and detail["format"] == "delta"
    # With a root as well, the metastore table is external, at <root>/<table>, and delta-rs
    # reads it by path.
    delta.sql("CREATE SCHEMA IF NOT EXISTS clickstream_ext")
    both = _lake(delta, "spark", root=str(tmp_path / "ext"), catalog_schema="clickstream_ext")
    both.overwrite("t", _frame(delta))
    assert Path(str(tmp_path / "ext" / "t" / "_delta_log")).is_dir()
    assertDataFrameEqual(
        _lake(delta, "delta-rs", root=str(tmp_path / "ext")).read("t"), _frame(delta)
    )


def test_optimize_and_vacuum_keep_the_contents(delta: SparkSession, tmp_path: Path) -> None:
    lake = _lake(delta, "spark", root=str(tmp_path / "lake"))
    lake.overwrite("t", _frame(delta).repartition(4))
    lake.append("t", _frame(delta, [_rows()[0]]))
    before = lake.read("t").collect()
    result = maintain(lake, "t", retention_hours=0)
    assert result.files_compacted > 0 and result.version_after > result.version_before
    # VACUUM deletes exactly the compacted files, which no version references any more.
    assert result.files_vacuumed == result.files_compacted
    assertDataFrameEqual(lake.read("t"), before)
    files = {p.name for p in (tmp_path / "lake" / "t").rglob("*.parquet")}
    table = lake.storage.table(lake.storage.native(lake.location("t")))
    assert files == {Path(f).name for f in table.file_uris()}


def test_optimize_and_vacuum_on_the_delta_rs_engine(delta: SparkSession, tmp_path: Path) -> None:
    lake = _lake(delta, "delta-rs", root=str(tmp_path / "lake"))
    lake.overwrite("t", _frame(delta).repartition(4))
    lake.append("t", _frame(delta, [_rows()[0]]))
    before = lake.read("t").collect()
    result = maintain(lake, "t", retention_hours=0)
    assert result.files_compacted > 0 and result.files_vacuumed == result.files_compacted
    assertDataFrameEqual(lake.read("t"), before)


def test_merge_under_spark_connect_and_read_by_delta_rs(
    delta_connect: SparkSession, tmp_path: Path
) -> None:
    """The Lake's MERGE through Delta's own ``MERGE INTO`` from a Connect session (the source
    travels as a temporary view; the clauses and counts of the delta-rs engine's test), and
    the merged table as delta-rs reads it."""
    root = str(tmp_path / "lake")
    spark_lake = _lake(delta_connect, "spark", root=root)
    check_merge(delta_connect, spark_lake)
    history = delta_connect.sql(f"DESCRIBE HISTORY delta.`{root}/t`").collect()
    assert [h["operation"] for h in history][:2] == ["MERGE", "MERGE"]
    assertDataFrameEqual(
        _lake(delta_connect, "delta-rs", root=root).read("t"), spark_lake.read("t")
    )


def test_incremental_sessionize_under_spark_connect_on_the_spark_engine(
    delta_connect: SparkSession, tmp_path: Path
) -> None:
    check_crossing_session(delta_connect, tmp_path, engine="spark")
    # The notebooks' Spark helper on those tables, under Connect: one temp view per table.
    lake = Lake(delta_connect, LakeConfig(engine="spark", root=str(tmp_path / "inc")))
    assert spark_views(lake) == ["events", "sessions", "user_sequences", "sessionize_log"]
    counts = delta_connect.sql(
        "SELECT (SELECT count(*) FROM sessions) AS s, (SELECT count(*) FROM user_sequences) AS u"
    ).first()
    assert counts is not None and (counts["s"], counts["u"]) == (2, 2)


def test_pseudonymisation_under_spark_connect(delta_connect: SparkSession) -> None:
    check_hmac(delta_connect)


def test_incremental_embed_under_spark_connect_merges_the_changed_vector(
    delta_connect: SparkSession, tmp_path: Path
) -> None:
    """``embed.mode: incremental`` on the spark engine under Connect: after one user's sequence
    changes, the encoder (the pandas UDF) runs on that row only and one Delta MERGE replaces its
    vector."""
    import dataclasses

    from pyspark.sql import functions as F

    from jobs import embed
    from jobs.core.config import AppConfig, EncoderConfig

    from .test_mlflow import N_USERS, write_tiny_lake

    config = dataclasses.replace(
        AppConfig(),
        lake=LakeConfig(engine="spark", root=str(tmp_path / "lake")),
        encoder=EncoderConfig(max_length=64, batch_size=32, precision="fp32"),
    )
    config = dataclasses.replace(
        config, embed=dataclasses.replace(config.embed, mode="incremental")
    )
    lake = Lake(delta_connect, config.lake)
    write_tiny_lake(delta_connect, lake)
    first = embed.run(delta_connect, lake, config, run_id="first")
    assert (first.rows, first.embedded) == (N_USERS, N_USERS)
    one_less = F.slice("events", 1, F.size("events") - 1)
    changed = lake.read("user_sequences").withColumn(
        "events", F.when(F.col("user_id") == "u005", one_less).otherwise(F.col("events"))
    )
    lake.overwrite("user_sequences", changed)
    counts = embed.run(delta_connect, lake, config, run_id="second")
    assert (counts.rows, counts.embedded) == (N_USERS, 1)
    rows = lake.read("embeddings").where("run_id = 'second'").select("id").collect()
    assert [r["id"] for r in rows] == ["u005"]
    last = delta_connect.sql(f"DESCRIBE HISTORY delta.`{tmp_path / 'lake' / 'embeddings'}`").first()
    assert last is not None and last["operation"] == "MERGE"
    metrics = last["operationMetrics"]
    assert (metrics["numTargetRowsUpdated"], metrics["numTargetRowsDeleted"]) == ("1", "0")
