"""jobs.explore: locating and opening the tables, and the run-history / profile reshaping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from pyspark.sql import Row, SparkSession

from jobs import explore
from jobs.core.config import LakeConfig, SparkConfig, TableSpec
from jobs.core.lake import Lake
from jobs.core.tables import CLUSTER_METRICS, contract_of

from .conftest import REPO

# ==================================================================== parameters and config


def test_params_from_env_defaults_and_values() -> None:
    assert explore.params_from_env({}) == explore.NotebookParams(
        conf=("conf/local.yaml",), lake_root=None, run_id=None
    )
    empty = {"SEGMENTS_CONF": "", "SEGMENTS_LAKE_ROOT": "", "SEGMENTS_RUN_ID": ""}
    assert explore.params_from_env(empty) == explore.params_from_env({})
    params = explore.params_from_env(
        {
            "SEGMENTS_CONF": "conf/local.yaml, /tmp/extra.yaml,",
            "SEGMENTS_LAKE_ROOT": "/data/lake",
            "SEGMENTS_RUN_ID": "r1",
        }
    )
    assert params.conf == ("conf/local.yaml", "/tmp/extra.yaml")
    assert (params.lake_root, params.run_id) == ("/data/lake", "r1")
    assert explore.split_conf(["a.yaml,b.yaml", " c.yaml "]) == ("a.yaml", "b.yaml", "c.yaml")


def test_project_dir_is_found_from_a_subfolder(tmp_path: Path) -> None:
    assert explore.project_dir(REPO / "notebooks") == REPO
    assert explore.project_dir(REPO) == REPO
    assert explore.project_dir(tmp_path) == tmp_path.resolve()  # no conf/base.yaml above it


def test_demo_config_resolves_to_the_checkout_from_the_notebooks_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO / "notebooks")
    config = explore.load_explore_config()
    assert config.lake.root == str(REPO / "data" / "lake")
    assert explore.table_path(config.lake, "sessions") == str(REPO / "data" / "lake" / "sessions")


def test_load_explore_config_makes_local_paths_absolute(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "one.yaml").write_text(
        "lake:\n"
        "  root: lake\n"
        "  tables:\n"
        "    events: {path: elsewhere/events}\n"
        "    sessions: {path: 's3://bucket/sessions'}\n"
        "    cluster_metrics: {name: main.clickstream.cluster_metrics}\n"
        "spark:\n  master: local[1]\n"
    )
    (conf / "two.yaml").write_text("spark:\n  driver_memory: 1g\n")

    config = explore.load_explore_config("conf/one.yaml,conf/two.yaml", base_dir=tmp_path)
    lake = config.lake
    assert lake.root == str(tmp_path / "lake")
    assert (config.spark.master, config.spark.driver_memory) == ("local[1]", "1g")  # both files
    assert explore.table_path(lake, "events") == str(tmp_path / "elsewhere" / "events")
    assert explore.table_path(lake, "sessions") == "s3://bucket/sessions"  # remote: untouched
    assert explore.table_path(lake, "cluster_metrics") == str(tmp_path / "lake" / "cluster_metrics")

    moved = explore.load_explore_config(
        [str(conf / "one.yaml")], lake_root="other", base_dir=tmp_path
    )
    assert moved.lake.root == str(tmp_path / "other")
    assert explore.table_path(moved.lake, "events") == str(tmp_path / "elsewhere" / "events")
    absolute = explore.load_explore_config(
        "conf/one.yaml", lake_root=str(tmp_path / "abs"), base_dir=tmp_path
    )
    assert absolute.lake.root == str(tmp_path / "abs")


def test_table_path_without_root_or_path_is_none() -> None:
    lake = LakeConfig(root=None, tables={"events": TableSpec(name="main.x.events")})
    assert explore.table_path(lake, "events") is None
    assert explore.existing_tables(lake) == {}


def test_require_table_says_where_it_looked(tmp_path: Path) -> None:
    lake = LakeConfig(root=str(tmp_path / "lake"))
    with pytest.raises(FileNotFoundError, match=r"no Delta table cluster_metrics at .*lake"):
        explore.require_table(lake, "cluster_metrics")
    path = str(tmp_path / "lake" / "cluster_metrics")
    write_deltalake(path, pa.table({"run_id": ["r"]}))
    assert explore.require_table(lake, "cluster_metrics") == path
    named = LakeConfig(root=None, tables={"cluster_metrics": TableSpec(name="main.x.metrics")})
    with pytest.raises(FileNotFoundError, match="Unity Catalog name"):
        explore.require_table(named, "cluster_metrics")


def test_notebook_spark_config_keeps_the_profile() -> None:
    profile = SparkConfig(master="local[2]", driver_memory="1g", extra={"spark.x": "1"})
    config = explore.notebook_spark_config(profile)
    assert (config.master, config.driver_memory) == ("local[2]", "1g")
    assert config.app_name == "clickstream-segments-notebook"
    assert config.extra == {"spark.x": "1", "spark.ui.showConsoleProgress": "false"}
    chatty = SparkConfig(extra={"spark.ui.showConsoleProgress": "true"})
    assert explore.notebook_spark_config(chatty).extra["spark.ui.showConsoleProgress"] == "true"


# ==================================================================== opening tables


def _assignments(run_id: str, clusters: list[int]) -> pa.Table:
    n = len(clusters)
    return pa.table(
        {
            "run_id": [run_id] * n,
            "unit": ["user"] * n,
            "id": [f"u{i}" for i in range(n)],
            "user_id": [f"u{i}" for i in range(n)],
            "cluster_id": pa.array(clusters, pa.int32()),
            "distance": [0.1 * i for i in range(n)],
        }
    )


def test_duckdb_views_over_delta_rs(tmp_path: Path) -> None:
    lake = LakeConfig(engine="delta-rs", root=str(tmp_path / "lake"))
    path = str(tmp_path / "lake" / "cluster_assignments")
    write_deltalake(path, _assignments("r1", [0, 0, 1]), partition_by=["run_id"])
    write_deltalake(path, _assignments("r2", [0, 1, 1, 2]), partition_by=["run_id"], mode="append")
    write_deltalake(
        str(tmp_path / "lake" / "user_sequences"), pa.table({"user_id": ["u0"], "n_sessions": [3]})
    )
    (tmp_path / "lake" / "sessions").mkdir()  # a folder without a Delta log is not a table

    found = explore.existing_tables(lake)
    assert list(found) == ["user_sequences", "cluster_assignments"]  # registry order
    assert found["cluster_assignments"] == path

    con = explore.duckdb_views(lake)
    assert sorted(r[0] for r in con.sql("SHOW TABLES").fetchall()) == [
        "cluster_assignments",
        "user_sequences",
    ]
    sizes = con.execute(
        "SELECT cluster_id, count(*) FROM cluster_assignments WHERE run_id = ? "
        "GROUP BY ALL ORDER BY 1",
        ["r2"],
    ).fetchall()
    assert sizes == [(0, 1), (1, 2), (2, 1)]
    joined = con.sql(
        "SELECT a.cluster_id, u.n_sessions FROM cluster_assignments a "
        "JOIN user_sequences u USING (user_id) WHERE a.run_id = 'r1'"
    ).fetchall()
    assert joined == [(0, 3)]

    only = explore.duckdb_views(lake, tables=["user_sequences"])
    assert [r[0] for r in only.sql("SHOW TABLES").fetchall()] == ["user_sequences"]


def test_spark_views_register_existing_tables(spark: SparkSession, lake: Lake) -> None:
    rows = [("r1", "embedding", "sse", 1.5, 4, "user", "v1", "cpu", 10, datetime(2024, 1, 1))]
    metrics = spark.createDataFrame(rows, contract_of(CLUSTER_METRICS).schema)
    lake.overwrite_partitions(CLUSTER_METRICS, metrics, {"run_id": ["r1"]})

    assert explore.spark_views(lake) == ["cluster_metrics"]  # only the table that exists
    value = spark.sql("SELECT value FROM cluster_metrics WHERE metric = 'sse'").first()
    assert value is not None and value[0] == 1.5
    assert explore.spark_views(lake, ["events", "cluster_metrics"]) == ["cluster_metrics"]


# ==================================================================== the run history

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def _rows(run: str, method: str, k: int, minutes: int, **metrics: float) -> list[dict[str, object]]:
    return [
        {
            "run_id": run,
            "method": method,
            "metric": metric,
            "value": value,
            "k": k,
            "unit": "user",
            "model_version": "v2" if run == "b" else "v1",
            "backend": "cpu",
            "sample_size": 100,
            "created_at": T0 + timedelta(minutes=minutes),
        }
        for metric, value in metrics.items()
    ]


@pytest.fixture
def history() -> pd.DataFrame:
    """Run ``zz-manual`` (recorded first despite its name): single k=3, never evaluated.
    Run ``a``: sweep k in {4, 6}, 6 kept and evaluated with two baselines.
    Run ``b``: k=5, evaluated.  Run ``c``: sweep {3, 4}, not evaluated."""
    rows = [
        *_rows("zz-manual", "embedding", 3, 0, sse=9.0, silhouette_sqeuclidean=0.1),
        *_rows("a", "embedding", 4, 10, sse=8.0, silhouette_sqeuclidean=0.3),
        *_rows("a", "embedding", 6, 10, sse=5.0, silhouette_sqeuclidean=0.4),
        *_rows("a", "embedding", 6, 11, ari_vs_truth=0.9, davies_bouldin=1.0),
        *_rows("a", "tfidf_baseline", 6, 11, ari_vs_truth=0.7, davies_bouldin=2.0),
        *_rows("a", "random_baseline", 6, 11, ari_vs_truth=0.0, davies_bouldin=50.0, foo=1.0),
        *_rows("b", "embedding", 5, 20, sse=6.0, silhouette_sqeuclidean=0.35, ari_vs_truth=0.95),
        *_rows("b", "tfidf_baseline", 5, 21, ari_vs_truth=0.75),
        *_rows("c", "embedding", 3, 30, sse=7.0, silhouette_sqeuclidean=0.2),
        *_rows("c", "embedding", 4, 30, sse=6.5, silhouette_sqeuclidean=0.25),
    ]
    return pd.DataFrame(rows)


def test_run_order_and_latest_follow_recording_time(history: pd.DataFrame) -> None:
    assert explore.run_order(history) == ["zz-manual", "a", "b", "c"]
    assert explore.latest_run(history) == "c"
    assert explore.latest_run(history, among=["a", "b", "zz-manual"]) == "b"
    with pytest.raises(ValueError, match="no matching run"):
        explore.latest_run(history, among=["nope"])
    assert explore.run_order(history.iloc[0:0]) == []


def test_run_k_is_the_evaluated_or_only_k(history: pd.DataFrame) -> None:
    ks = explore.run_k(history)
    assert list(ks.index) == ["zz-manual", "a", "b", "c"]
    assert ks["zz-manual"] == 3 and ks["a"] == 6 and ks["b"] == 5
    assert pd.isna(ks["c"])  # a sweep that was never evaluated


def test_runs_overview(history: pd.DataFrame) -> None:
    overview = explore.runs_overview(history)
    assert list(overview.index) == ["zz-manual", "a", "b", "c"]
    assert overview.loc["a", "k_candidates"] == "4, 6"
    assert overview.loc["b", "model_version"] == "v2"
    assert list(overview["evaluated"]) == [False, True, True, False]
    assert overview.loc["a", "recorded_at"] == T0 + timedelta(minutes=10)
    assert overview.loc["a", "n_metrics"] == 11
    assert list(explore.runs_overview(history.iloc[0:0]).index) == []


def test_method_comparison_and_margins(history: pd.DataFrame) -> None:
    table = explore.method_comparison(history, "a")
    assert list(table.columns) == ["embedding", "tfidf_baseline", "random_baseline", "better"]
    # The report's metrics first, then the rest alphabetically; only k=6 rows (not k=4's sse).
    assert list(table.index) == [
        "ari_vs_truth",
        "davies_bouldin",
        "foo",
        "silhouette_sqeuclidean",
        "sse",
    ]
    assert table.loc["sse", "embedding"] == 5.0
    assert table.loc["ari_vs_truth", "tfidf_baseline"] == 0.7
    assert pd.isna(table.loc["foo", "embedding"]) and table.loc["foo", "better"] == ""
    assert table.loc["davies_bouldin", "better"] == "lower"

    margins = explore.margins(table)
    assert list(margins.columns) == ["vs tfidf_baseline", "vs random_baseline"]
    assert margins.loc["ari_vs_truth", "vs tfidf_baseline"] == pytest.approx(0.2)
    # Lower is better for Davies-Bouldin: 1.0 against 2.0 is a margin of +1.0.
    assert margins.loc["davies_bouldin", "vs tfidf_baseline"] == pytest.approx(1.0)
    assert margins.loc["davies_bouldin", "vs random_baseline"] == pytest.approx(49.0)
    assert "foo" not in margins.index and "sse" not in margins.index  # no baseline value

    picked = explore.method_comparison(history, "b", metrics=["sse", "ari_vs_truth"])
    assert list(picked.index) == ["sse", "ari_vs_truth"]
    assert list(picked.columns) == ["embedding", "tfidf_baseline", "better"]
    with pytest.raises(ValueError, match="no metrics"):
        explore.method_comparison(history, "c")  # its k is unknown


def test_metric_over_runs(history: pd.DataFrame) -> None:
    ari = explore.metric_over_runs(history, "ari_vs_truth")
    assert list(ari.index) == ["a", "b"]
    assert list(ari.columns) == ["embedding", "tfidf_baseline", "random_baseline"]
    assert ari.loc["b", "embedding"] == 0.95 and pd.isna(ari.loc["b", "random_baseline"])
    sse = explore.metric_over_runs(history, "sse", methods=["embedding"])
    # At each run's kept k: a -> k=6 (5.0), not k=4; c has no kept k.
    assert sse["embedding"].to_dict() == {"zz-manual": 9.0, "a": 5.0, "b": 6.0}
    assert explore.metric_over_runs(history, "nothing").empty


def test_k_sweep(history: pd.DataFrame) -> None:
    sweeps = explore.k_sweep(history)
    assert list(sweeps.columns) == ["run_id", "k", "sse", "silhouette_sqeuclidean"]
    assert list(zip(sweeps["run_id"], sweeps["k"], strict=True)) == [
        ("a", 4),
        ("a", 6),
        ("c", 3),
        ("c", 4),
    ]
    assert sweeps.loc[1, "sse"] == 5.0 and sweeps.loc[3, "silhouette_sqeuclidean"] == 0.25
    one = explore.k_sweep(history, "b")
    assert one[["k", "sse"]].values.tolist() == [[5, 6.0]]
    assert explore.k_sweep(history, "missing").empty


# ==================================================================== profiles


def test_top_values_flattens_structs_from_any_reader() -> None:
    struct = {"rank": 2, "value": "kids.toys", "share": 0.2, "lift": 1.5}
    first = {"rank": 1, "value": "sport.bicycle", "share": 0.3, "lift": 4.0}
    profiles = pd.DataFrame(
        {
            "run_id": ["r", "r", "r"],
            "cluster_id": [1, 0, 2],
            "top_categories": [
                np.array([struct, first], dtype=object),  # delta-rs / pyarrow to_pandas
                [Row(rank=1, value="apparel.dress", share=0.5, lift=2.0)],  # Spark toPandas
                None,  # a cluster without categories
            ],
        }
    )
    long = explore.top_values(profiles)
    assert list(long.columns) == ["run_id", "cluster_id", "rank", "value", "share", "lift"]
    assert long[["cluster_id", "rank", "value"]].values.tolist() == [
        [0, 1, "apparel.dress"],
        [1, 1, "sport.bicycle"],
        [1, 2, "kids.toys"],
    ]
    assert long["lift"].tolist() == [2.0, 4.0, 1.5]
    with pytest.raises(TypeError, match="struct"):
        explore.top_values(pd.DataFrame({"cluster_id": [0], "top_brands": [["x"]]}), "top_brands")
