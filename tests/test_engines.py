"""The whole pipeline where data engineers run it: Spark Connect and native Delta (delta-spark).

Two real runs of the pipeline on one small generated log:

* the embedded default, ``e2e_run`` in tests/conftest.py: a classic local session and the
  delta-rs engine;
* ``segments pipeline`` in its own process under Spark Connect: ``spark.remote: local[2]``
  starts a real Connect server (pyspark 4.0 ships it), with ``lake.engine: spark``, so the
  server loads delta-spark's jars, resolved from Maven Central by the session helper
  (``spark.jars.packages``), and every table is written by Spark's own Delta data source.

Every table of the second run must hold what the first holds (volatile columns, the wall-clock
times of each write, left out), read through the other engine (delta-rs), DuckDB and polars.
Tables are compared in this test's own classic session.  ``-m connect`` or ``-m delta_spark``
selects them.  They skip, saying why, only where the Delta jar is neither in Spark's Ivy cache
nor downloadable from Maven Central.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from jobs import explore
from jobs.core.config import AppConfig, LakeConfig, config_to_dict
from jobs.core.lake import Lake
from jobs.core.tables import TABLES

from .conftest import E2E_RUN_ID, TEST_JVM_OPTIONS, TEST_SPARK_SETTINGS, BackgroundRun

#: Wall-clock times of the writes themselves: the only columns two identical runs differ in.
VOLATILE = {"quarantined_at", "ingested_at", "sessionized_at", "embedded_at", "created_at"}


#: The background Connect run of this session (started by ``e2e_run``, tests/conftest.py).
CONNECT_RUN = BackgroundRun()


def start_connect_run(config: AppConfig, out: Path) -> None:
    """Start ``segments pipeline --from ingest`` on ``config``'s raw data under Spark Connect
    with ``lake.engine: spark``, tables under ``out/lake``, in the background (once per
    session): tests/conftest.py calls this right after generating the raw files, so the run
    overlaps with the other tests; the ``runs`` fixture below collects it."""
    if CONNECT_RUN.started:
        return
    from jobs.core.session import delta_package

    profile = out / "profile.yaml"
    out.mkdir(parents=True, exist_ok=True)
    profile.write_text(yaml.safe_dump(config_to_dict(config)), encoding="utf-8")
    command = [sys.executable, "-m", "jobs.cli", "pipeline", "--conf", str(profile)]
    command += ["--from", "ingest", "--run-id", E2E_RUN_ID]
    for override in (
        "spark.remote=local[2]",
        # The partitioning of the classic session (tests/conftest.py), so that the encoder
        # sees the same batches: fp32 sums in another order differ in the last bits.
        "spark.shuffle_partitions=2",
        f"spark.driver_java_options={TEST_JVM_OPTIONS}",
        "spark.extra=" + json.dumps({"spark.sql.adaptive.enabled": "false", **TEST_SPARK_SETTINGS}),
        "lake.engine=spark",
        f"lake.root={out / 'lake'}",
        f"cluster.model_root={out / 'models'}",
        f"evaluate.report_dir={out / 'reports'}",
        # MLflow tracking under Connect as well (the classic run leaves it off).
        "mlflow.enabled=true",
        f"mlflow.tracking_uri={out / 'mlruns'}",
    ):
        command += ["--set", override]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    _CONNECT_OUT["out"] = out
    CONNECT_RUN.start(command, env=env, requires=delta_package())


#: Where the background Connect run writes (its lake, models, reports and MLflow store).
_CONNECT_OUT: dict[str, Path] = {}


@pytest.fixture(scope="module")
def runs(
    e2e_run: tuple[AppConfig, Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    config = e2e_run[0]
    start_connect_run(config, tmp_path_factory.mktemp("connect"))  # no-op: e2e_run started it
    logs = CONNECT_RUN.wait()
    assert "Connect session remote=local[2]" in logs
    assert "packages=io.delta:delta-spark_2.13:" in logs
    assert "(spark," in logs and "(delta-rs," not in logs
    out = _CONNECT_OUT["out"]
    return {"classic": Path(config.lake.root or ""), "connect": out / "lake", "out": out}


def _comparable(frame: DataFrame) -> DataFrame:
    return frame.drop(*[c for c in frame.columns if c in VOLATILE])


@pytest.mark.connect
@pytest.mark.delta_spark
def test_connect_run_on_delta_spark_writes_the_same_tables_as_the_classic_run(
    spark: SparkSession, runs: dict[str, Path]
) -> None:
    classic = Lake(spark, LakeConfig(engine="delta-rs", root=str(runs["classic"])))
    connect = Lake(spark, LakeConfig(engine="delta-rs", root=str(runs["connect"])))
    for table in TABLES:
        assert classic.exists(table), table
        assert connect.exists(table), table
        expected = _comparable(classic.read(table))
        actual = _comparable(connect.read(table))
        assert actual.count() == expected.count() > 0, table
        # delta-rs reads what Spark's Delta writer committed (cross-engine), row for row.
        assertDataFrameEqual(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.delta_spark
def test_duckdb_and_polars_read_both_engines_tables_alike(runs: dict[str, Path]) -> None:
    """The delta-rs-written and the delta-spark-written table hold the same rows through
    polars, and DuckDB reads each exactly as polars does.  Rows are compared as NDJSON text,
    sorted by the table's key: DuckDB labels UTC timestamps ``Etc/UTC`` where polars says
    ``UTC``, the same instants."""
    for table in ("events", "sessions", "cluster_assignments"):
        key = list(TABLES[table].key)
        frames = {}
        for name in ("classic", "connect"):
            root = runs[name]
            by_polars = pl.read_delta(str(root / table))
            by_polars = by_polars.drop([c for c in by_polars.columns if c in VOLATILE]).sort(key)
            lake = LakeConfig(engine="delta-rs", root=str(root))
            con = explore.duckdb_views(lake, tables=[table])
            by_duckdb = con.sql(f"SELECT * FROM {table}").pl()
            by_duckdb = by_duckdb.select(by_polars.columns).sort(key)
            assert by_duckdb.height == by_polars.height > 0, (table, name)
            assert by_duckdb.write_ndjson() == by_polars.write_ndjson(), (table, name)
            frames[name] = by_polars
        assert frames["classic"].write_ndjson() == frames["connect"].write_ndjson(), table


@pytest.mark.connect
@pytest.mark.mlflow
def test_cluster_and_evaluate_under_connect_log_mlflow_runs(
    spark: SparkSession, runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Connect run's cluster and evaluate runs in MLflow: tagged with the pipeline's run
    id, with the k and the metrics of the Delta table, and the segment assigner logged."""
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as jobs.core.tracking does
    client = mlflow.MlflowClient(tracking_uri=(runs["out"] / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("clickstream-segments")
    assert experiment is not None
    found = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.run_id = '{E2E_RUN_ID}'"
    )
    by_stage = {r.data.tags["stage"]: r for r in found}
    assert sorted(by_stage) == ["cluster", "evaluate"]
    assert all(r.info.status == "FINISHED" for r in found)
    metrics = Lake(spark, LakeConfig(engine="delta-rs", root=str(runs["connect"])))
    k = metrics.read("cluster_assignments").select("cluster_id").distinct().count()
    cluster = by_stage["cluster"]
    assert cluster.data.params["k"] == str(k)
    assert cluster.data.tags["assigner"].startswith("models:/")
    # The values logged are the Delta table's, for the cluster stage and for evaluate.
    recorded = {
        (r["method"], r["metric"]): r["value"]
        for r in metrics.read("cluster_metrics").where(f"k = {k}").collect()
    }
    assert cluster.data.metrics["embedding/sse"] == pytest.approx(recorded["embedding", "sse"])
    evaluated = by_stage["evaluate"].data.metrics
    for key in ("embedding/silhouette_cosine", "tfidf_baseline/ari_vs_truth"):
        assert evaluated[key] == pytest.approx(recorded[tuple(key.split("/"))]), key
