"""Evaluation guards: nothing non-finite is stored, the Delta log stays valid JSON, report cells
are escaped, the latest run is the most recently created, a rerun replaces its own rows, and
ground truth is used only when it applies."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import evaluate
from jobs.core.config import AppConfig, LakeConfig
from jobs.core.lake import Lake
from jobs.core.metrics import Metric, record_metrics
from jobs.core.tables import CLUSTER_ASSIGNMENTS, CLUSTER_METRICS
from jobs.evaluation.backtest import Backtest
from jobs.evaluation.measure import external_metrics, internal_metrics
from jobs.evaluation.report import cell, write_report


def _refuse(token: str) -> None:
    raise AssertionError(f"invalid JSON constant {token}")


def test_duplicate_points_give_no_infinite_metric(spark: SparkSession) -> None:
    # Every cluster collapses onto one point: within-cluster dispersion 0, CH would be infinite.
    rows = [([1.0, 0.0], 0)] * 5 + [([0.0, 1.0], 1)] * 5 + [([0.6, 0.8], 2)] * 5
    df = spark.createDataFrame(rows, "embedding array<double>, cluster_id int")
    values, skipped = internal_metrics(df, sample=100, seed=1)
    assert all(math.isfinite(v) for v in values.values())
    assert "calinski_harabasz" not in values
    assert skipped["calinski_harabasz"].startswith("every point sits on its centroid")
    assert values["sse"] == pytest.approx(0.0, abs=1e-12)


def test_one_cluster_and_zero_vectors_are_not_applicable(spark: SparkSession) -> None:
    one = spark.createDataFrame(
        [([1.0, 0.0], 0), ([0.0, 1.0], 0)], "embedding array<double>, cluster_id int"
    )
    values, skipped = internal_metrics(one, sample=10, seed=1)
    assert set(values) == {"sse", "size_min_share", "size_max_share", "size_entropy"}
    assert skipped["silhouette_cosine"] == "a single cluster"
    zeros = spark.createDataFrame(
        [([0.0, 0.0], 0), ([1.0, 0.0], 0), ([0.0, 1.0], 1), ([0.0, 2.0], 1)],
        "embedding array<double>, cluster_id int",
    )
    values, skipped = internal_metrics(zeros, sample=10, seed=1)
    assert "silhouette_cosine" not in values
    assert skipped["silhouette_cosine"] == "1 all-zero vectors have no direction"
    assert all(math.isfinite(v) for v in values.values())


def test_cosine_silhouette_of_unit_vectors_is_the_squared_euclidean_one(
    spark: SparkSession,
) -> None:
    # Measured once for unit vectors; it must equal what Spark's evaluator says for cosine.
    from jobs.evaluation.internal import silhouette

    rng = np.random.default_rng(3)
    points = rng.normal(size=(60, 4)) + np.repeat(np.eye(4)[:3] * 3, 20, axis=0)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    rows = [([float(x) for x in p], i // 20) for i, p in enumerate(unit)]
    df = spark.createDataFrame(rows, "embedding array<double>, cluster_id int")
    values, _ = internal_metrics(df, sample=100, seed=1)
    assert values["silhouette_cosine"] == pytest.approx(silhouette(df, distance="cosine"), abs=1e-9)
    # Not unit vectors: both are measured, and they differ.
    scaled = spark.createDataFrame(
        [([float(x) * (1 + i % 3) for x in p], i // 20) for i, p in enumerate(points)],
        "embedding array<double>, cluster_id int",
    )
    values, _ = internal_metrics(scaled, sample=100, seed=1)
    assert values["silhouette_cosine"] == pytest.approx(silhouette(scaled, distance="cosine"))
    assert values["silhouette_cosine"] != pytest.approx(values["silhouette_sqeuclidean"])


def test_metrics_table_refuses_non_finite_values(spark: SparkSession, lake: Lake) -> None:
    bad = Metric("embedding", "calinski_harabasz", float("inf"), 3, "user", "v1", "cpu", 10)
    with pytest.raises(ValueError, match="calinski_harabasz is inf: not recorded"):
        record_metrics(spark, lake, "r1", [bad])
    assert not lake.exists(CLUSTER_METRICS)


def test_delta_log_stays_valid_json_with_non_finite_data(spark: SparkSession, lake: Lake) -> None:
    # A table holding infinities and NaN (user data can): the file statistics must stay JSON.
    df = spark.createDataFrame(
        [
            ("r1", "embedding", metric, value, 3, "user", "v", "cpu", 1)
            for metric, value in (("m", float("inf")), ("n", float("nan")), ("o", float("-inf")))
        ],
        "run_id string, method string, metric string, value double, k int, unit string, "
        "model_version string, backend string, sample_size long",
    ).withColumn("created_at", F.current_timestamp())
    lake.overwrite_partitions(CLUSTER_METRICS, df, {"run_id": ["r1"]})
    log_dir = Path(lake.location(CLUSTER_METRICS).describe()) / "_delta_log"
    entries = [line for f in sorted(log_dir.glob("*.json")) for line in f.read_text().splitlines()]
    stats = []
    for line in entries:
        action = json.loads(line, parse_constant=_refuse)
        if "add" in action and action["add"].get("stats"):
            stats.append(json.loads(action["add"]["stats"], parse_constant=_refuse))
    assert stats and all("value" not in s["minValues"] for s in stats)
    # No statistic hides the file from a filter on the column: +inf and NaN (Spark orders NaN
    # above every number) are both found.
    assert lake.read(CLUSTER_METRICS).where(F.col("value") > 1e300).count() == 2


def test_report_cells_keep_their_columns(tmp_path: Path) -> None:
    assert cell("home|garden") == "home&#124;garden"
    assert cell("sports\nrunning") == "sports<br>running"
    profiles = pd.DataFrame(
        [
            {
                "cluster_id": 0,
                "size": 3,
                "share": 1.0,
                "conversion_rate": float("nan"),
                "cart_rate": 0.0,
                "mean_events_per_session": 2.0,
                "top_categories": [
                    {"rank": 1, "value": "home|garden", "share": 0.5, "lift": 1.0},
                    {"rank": 2, "value": "sports\nrunning", "share": 0.5, "lift": 1.0},
                ],
                "stability_jaccard": 0.8,
            }
        ]
    )
    path = write_report(
        tmp_path,
        run_id="r|1",
        k=1,
        rows=3,
        unit="user",
        model_version="v",
        metrics={"embedding": {"sse": 1.0}},
        not_applicable={("embedding", "future_*"): "a | b\nc"},
        backtest=Backtest(None, "not enough users for protocol future: 3 found, 30 needed"),
        sweep=pd.DataFrame({"k": [1], "sse": [1.0], "silhouette_sqeuclidean": [0.0]}),
        profiles=profiles,
        sample_points=np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
        sample_labels=np.array([0, 0, 0]),
    )
    lines = path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| cluster |"))
    row = lines[header + 2]
    assert row.count("|") == lines[header].count("|")
    assert "home&#124;garden" in row and "sports<br>running" in row
    assert "No recommendation: not enough users for protocol future: 3 found, 30 needed." in (
        path.read_text()
    )
    assert "dendrogram.png" not in path.read_text()  # one segment: nothing to draw
    # The columns are explained above the table, per member of the unit evaluated.
    assert lines[header - 2].startswith(
        "Per user of the segment: conversion is the share of users with a purchase, cart rate"
    )
    assert "(>= 0.75 stable, < 0.5 dissolved)" in lines[header - 2]


def test_report_draws_the_centroid_dendrogram(tmp_path: Path) -> None:
    from jobs.evaluation.plots import centroid_linkage, nearest_segments

    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 1.0], [10.0, 2.0]])
    ids = [3, 5, 7, 9]
    assert nearest_segments(centroids, ids) == (3, 7, pytest.approx(1.0))
    merges = centroid_linkage(centroids)
    assert merges.shape == (3, 4) and merges[0, 2] == pytest.approx(1.0)
    profiles = pd.DataFrame(
        [
            {
                "cluster_id": c,
                "size": 1,
                "share": 0.25,
                "conversion_rate": 0.0,
                "cart_rate": 0.0,
                "mean_events_per_session": 1.0,
                "stability_jaccard": None,
                "top_categories": [{"rank": 1, "value": f"c{c}", "share": 1.0, "lift": 4.0}],
            }
            for c in ids
        ]
    )

    def report(profiles: pd.DataFrame) -> str:
        return _small_report(
            tmp_path,
            k=4,
            sweep=pd.DataFrame({"k": [4], "sse": [1.0], "silhouette_sqeuclidean": [0.5]}),
            profiles=profiles,
            sample_points=centroids,
            sample_labels=np.array(ids),
            centroids=centroids,
            centroid_ids=ids,
        )

    text = report(profiles)
    assert (tmp_path / "dendrogram.png").stat().st_size > 0
    assert "Nearest segments: 3 and 7 (centroid distance 1.000)" in text
    assert "![top categories](top_categories.png)" in text
    assert (tmp_path / "top_categories.png").stat().st_size > 0
    # An item-only log: no category to chart.  No empty chart (matplotlib warned about its
    # axis limits), the report says why, and the earlier run's chart is not left behind.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = report(profiles.assign(top_categories=[[] for _ in ids]))
    assert "No top-categories chart: no event of these segments names a category." in text
    assert "top_categories.png" not in text and not (tmp_path / "top_categories.png").exists()


def _metric_row(run: str, metric: str, backend: str) -> Metric:
    return Metric("embedding", metric, 1.0, 3, "user", "v1", backend, 10)


def test_latest_run_is_the_most_recently_created(spark: SparkSession, lake: Lake) -> None:
    assignments = spark.createDataFrame(
        [(run, "user", "u1", "u1", 0, 0.0) for run in ("zz-old", "aa-new")],
        "run_id string, unit string, id string, user_id string, cluster_id int, distance double",
    )
    lake.overwrite_partitions(CLUSTER_ASSIGNMENTS, assignments, {"run_id": ["zz-old", "aa-new"]})
    record_metrics(spark, lake, "zz-old", [_metric_row("zz-old", "sse", "cpu")])
    time.sleep(1.1)  # created_at has its own, later, timestamp
    record_metrics(spark, lake, "aa-new", [_metric_row("aa-new", "sse", "cpu")])
    assert evaluate._latest_cluster_run(lake) == "aa-new"  # not the largest id string
    # A cluster stage killed after its metrics, before its assignments: not a run to evaluate.
    time.sleep(1.1)
    record_metrics(spark, lake, "mm-killed", [_metric_row("mm-killed", "sse", "cpu")])
    assert evaluate._latest_cluster_run(lake) == "aa-new"


def test_rerun_replaces_the_runs_rows_whatever_their_backend(
    spark: SparkSession, lake: Lake
) -> None:
    record_metrics(spark, lake, "r1", [_metric_row("r1", "sse", "gpu")])  # the cluster stage's
    record_metrics(spark, lake, "r1", [_metric_row("r1", "davies_bouldin", "cpu")])
    replace = ~(F.col("metric") == "sse")
    record_metrics(spark, lake, "r1", [_metric_row("r1", "davies_bouldin", "gpu")], replace=replace)
    rows = {(r["metric"], r["backend"]) for r in lake.read(CLUSTER_METRICS).collect()}
    assert rows == {("sse", "gpu"), ("davies_bouldin", "gpu")}


def test_ground_truth_only_when_configured_or_generated(
    spark: SparkSession, tmp_path: Path
) -> None:
    truth = tmp_path / "personas.csv"
    truth.write_text("user_id,persona\nu1,a\n")
    base = AppConfig()
    generated = dataclasses.replace(
        base, generate=dataclasses.replace(base.generate, ground_truth_path=str(truth))
    )
    assert evaluate._ground_truth(spark, generated) is not None  # the generator's own source
    other = dataclasses.replace(
        generated,
        ingest=dataclasses.replace(
            base.ingest, source=dataclasses.replace(base.ingest.source, name="rees46")
        ),
    )
    assert evaluate._ground_truth(spark, other) is None  # the demo's personas are not its truth
    explicit = dataclasses.replace(
        other, evaluate=dataclasses.replace(base.evaluate, ground_truth_path=str(truth))
    )
    labels = evaluate._ground_truth(spark, explicit)
    assert labels is not None
    clustered = spark.createDataFrame([("u9", 0)], "user_id string, cluster_id int")
    assert external_metrics(clustered, labels) == {}  # matches no user: skipped, no crash


def test_float32_clusters_of_identical_points_have_no_calinski_harabasz(
    spark: SparkSession,
) -> None:
    # array<float>, as embeddings holds: squared in float32, the norms left each collapsed
    # cluster ~1e-7 of dispersion, and CH came out as ~1e11 (stored as the best value).
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(3, 16)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = [([float(x) for x in centres[i % 3]], i % 3) for i in range(120)]
    df = spark.createDataFrame(rows, "embedding array<float>, cluster_id int")
    values, skipped = internal_metrics(df, sample=200, seed=1)
    assert "calinski_harabasz" not in values
    assert skipped["calinski_harabasz"].startswith("every point sits on its centroid")
    assert values["sse"] == pytest.approx(0.0, abs=1e-9)


def test_segments_that_came_out_empty_count_in_the_size_metrics() -> None:
    from jobs.evaluation.internal import ClusterAggregates, size_balance

    two = ClusterAggregates(
        cluster_ids=np.array([0, 3]),
        counts=np.array([50.0, 50.0]),
        sums=np.zeros((2, 4)),
        squared_norms=np.array([50.0, 50.0]),
    )
    assert size_balance(two) == {"size_min_share": 0.5, "size_max_share": 0.5, "size_entropy": 1.0}
    asked_six = size_balance(two, k=6)
    assert asked_six["size_min_share"] == 0.0 and asked_six["size_max_share"] == 0.5
    assert asked_six["size_entropy"] == pytest.approx(math.log(2) / math.log(6))


def test_exact_sample_silhouette_cross_checks_the_squared_euclidean_one(
    spark: SparkSession,
) -> None:
    # The sample holds every row: scikit-learn's value must equal Spark's, up to rounding.
    rng = np.random.default_rng(8)
    points = rng.normal(size=(45, 3)) + np.repeat(np.eye(3) * 4, 15, axis=0)
    rows = [([float(x) for x in p], i // 15) for i, p in enumerate(points)]
    df = spark.createDataFrame(rows, "embedding array<double>, cluster_id int")
    values, _ = internal_metrics(df, sample=100, seed=1)
    assert values["silhouette_exact_sample"] == pytest.approx(
        values["silhouette_sqeuclidean"], abs=1e-9
    )


def test_ari_of_a_single_matched_user_is_scikit_learns() -> None:
    from sklearn.metrics import adjusted_rand_score

    from jobs.evaluation.external import adjusted_rand_index

    assert adjusted_rand_index(np.array([[1.0]])) == adjusted_rand_score([0], [1]) == 1.0
    assert adjusted_rand_index(np.zeros((1, 1))) == 1.0


@pytest.mark.parametrize("init_sample", [20000, 4], ids=["on-the-driver", "on-spark"])
def test_stability_refits_that_cannot_split_the_rows_are_left_out(
    spark: SparkSession, init_sample: int
) -> None:
    # Every row identical: no refit can make two clusters; an error here failed the stage.
    from jobs.evaluation.stability import segment_jaccard, stability_metrics

    rows = spark.createDataFrame(
        [(f"u{i}", [1.0, 0.0], i % 2) for i in range(12)],
        "id string, embedding array<double>, cluster_id int",
    )
    cluster = dataclasses.replace(AppConfig().cluster, init_sample=init_sample)
    assert stability_metrics(rows, k=2, cluster=cluster, seeds=[1, 2]) == {}
    assert segment_jaccard(rows, k=2, cluster=cluster, bootstraps=2, seed=3) == {}


def test_a_segment_a_resample_missed_scores_zero_there_as_in_clusterboot(
    spark: SparkSession,
) -> None:
    # Three tight blobs of 50 users and one far-away user as a segment of its own.  A resample
    # that did not draw that user scores the segment 0 (fpc::clusterboot: the Jaccard of an
    # empty set is 0); averaging only the resamples that drew it said 1.0, "stable".  On the
    # driver, whose resamples can be replayed here; the Spark path records its resamples with
    # the same function (tests/test_evaluation.py runs it).
    from jobs.evaluation.stability import segment_jaccard

    rng = np.random.default_rng(0)
    centres = np.eye(4)[:3]
    labels = np.repeat([0, 1, 2], 50)
    points = centres[labels] + rng.normal(scale=0.02, size=(150, 4))
    points = np.vstack([points, [[0.0, 0.0, 0.0, 1.0]]])
    labels = np.append(labels, 3)
    rows = spark.createDataFrame(
        [
            (f"u{i}", [float(x) for x in p], int(c))
            for i, (p, c) in enumerate(zip(points, labels, strict=True))
        ],
        "id string, embedding array<double>, cluster_id int",
    )
    cluster = AppConfig().cluster
    bootstraps, seed = 4, 3
    jaccard = segment_jaccard(rows, k=4, cluster=cluster, bootstraps=bootstraps, seed=seed)
    assert sorted(jaccard) == [0, 1, 2, 3]
    # (a resample without the lone user has a cluster to spare, which may split a blob)
    assert min(jaccard[s] for s in (0, 1, 2)) >= 0.75, jaccard
    # The driver's resamples (documented: n of n rows, seed + 7919 b): the lone user is in
    # some of them, and where drawn it is a refit cluster of its own (Jaccard 1).
    drawn = [
        150 in np.random.default_rng(seed + 7919 * b).integers(0, 151, 151)
        for b in range(bootstraps)
    ]
    assert 0 < sum(drawn) < bootstraps
    assert jaccard[3] == sum(drawn) / bootstraps


def test_a_stage_without_data_to_work_on_fails_in_one_line(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.cluster import main

    lake = Lake(spark, LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")))
    lake.overwrite_partitions(
        "embeddings",
        spark.createDataFrame(
            [("session", "s1", "u1", [1.0, 0.0], "h", "t", "v", "r0", None)],
            lake.contract("embeddings").schema,
        ).withColumn("embedded_at", F.current_timestamp()),
        {"unit": ["session"], "model_version": ["v"]},
    )
    code = main(["--set", f"lake.root={lake.config.root}", "--set", "mlflow.enabled=false"])
    err = capsys.readouterr().err
    # No traceback of the error (earlier tests' closed log streams may add logging's own).
    assert code == 1 and "errors.DataError" not in err
    assert err.strip().splitlines()[-1] == (
        "segments cluster: error: embeddings has no rows for unit 'user': run embed first"
    )


def test_a_k_sweep_without_a_silhouette_still_plots(tmp_path: Path) -> None:
    # An assign-only batch in one cluster records its SSE alone.
    from jobs.evaluation.plots import plot_k_sweep
    from jobs.evaluation.sweep import sweep_frame

    sweep = sweep_frame([{"k": 5, "metric": "sse", "value": 12.5}])
    assert list(sweep.columns) == ["k", "sse", "silhouette_sqeuclidean"]
    assert sweep["sse"].tolist() == [12.5] and sweep["silhouette_sqeuclidean"].isna().all()
    plot_k_sweep(sweep, tmp_path / "k_sweep.png")
    assert (tmp_path / "k_sweep.png").stat().st_size > 0


def test_each_metric_row_reads_in_one_format_and_ties_at_the_shown_precision_are_all_bold() -> None:
    from jobs.evaluation.report import comparison_table

    methods = ("embedding", "tfidf_tokens_baseline", "tfidf_baseline", "aggregate_baseline")
    calinski = (1126.7531, 1098.8495, 1117.999, 490.0912)
    entropy = (0.99994, 0.99992, 0.99998, 0.9306)
    davies = (1.40231, 1.43451, 1.40249, None)  # lower is better; a method without the metric
    ari = (-0.0004, 0.0003, -0.2, 0.0001)  # rounds to zero on both sides of it
    metrics = {
        m: {"calinski_harabasz": c, "size_entropy": e, "ari_vs_truth": a}
        | ({} if d is None else {"davies_bouldin": d})
        for m, c, e, d, a in zip(methods, calinski, entropy, davies, ari, strict=True)
    }
    lines = comparison_table(metrics).splitlines()
    assert "| calinski_harabasz | higher | **1,126.8** | 1,098.8 | 1,118.0 | 490.1 |" in lines
    # 0.99998 is the largest, but three methods show 1.000: bolding one would rank on digits
    # the reader cannot see.
    assert "| size_entropy | higher | **1.000** | **1.000** | **1.000** | 0.931 |" in lines
    assert "| davies_bouldin | lower | **1.402** | 1.435 | **1.402** | - |" in lines
    assert "| ari_vs_truth | higher | **0.000** | **0.000** | -0.200 | **0.000** |" in lines
    # A row with one value has nothing to beat: not bold.
    alone = comparison_table({"embedding": {"stability_ari_mean": 0.923}, "random_baseline": {}})
    assert "| stability_ari_mean | higher | 0.923 | - |" in alone.splitlines()


def test_a_single_k_gets_its_figures_in_words_and_a_sweep_gets_the_curve(tmp_path: Path) -> None:
    from jobs.evaluation.sweep import K_SWEEP_PLOT, k_sweep_lines, sweep_frame

    one = sweep_frame(
        [
            {"k": 6, "metric": "sse", "value": 1261.17},
            {"k": 6, "metric": "silhouette_sqeuclidean", "value": 0.4817},
        ]
    )
    how = (
        "so there is no curve to plot. A cluster run given a list of k (`cluster.k`, e.g. "
        "`--set 'cluster.k=[4, 6, 8]'`) fits each and keeps the best by `cluster.criterion` "
        "(silhouette by default); its report plots the sweep and lists each k's figures."
    )
    assert k_sweep_lines(one) == (
        f"This run has figures for one k (k = 6: SSE 1,261.2, silhouette 0.482), {how}",
    )
    # An assign-only batch in one cluster records its SSE alone; a run may record neither.
    sse_only = sweep_frame([{"k": 5, "metric": "sse", "value": 12.5}])
    assert k_sweep_lines(sse_only) == (f"This run has figures for one k (k = 5: SSE 12.5), {how}",)
    silhouette_only = sweep_frame([{"k": 5, "metric": "silhouette_sqeuclidean", "value": 0.2}])
    assert k_sweep_lines(silhouette_only) == (
        f"This run has figures for one k (k = 5: silhouette 0.200), {how}",
    )
    assert k_sweep_lines(sweep_frame([])) == ("No k sweep was recorded for this run.",)
    several = sweep_frame(
        [{"k": k, "metric": "sse", "value": 100.0 / k} for k in (4, 6)]
        + [{"k": k, "metric": "silhouette_sqeuclidean", "value": 0.1 * k} for k in (4, 6)]
    )
    assert k_sweep_lines(several, 6) == (
        *K_SWEEP_PLOT,
        "",
        "Fitted: k = 4: SSE 25.0, silhouette 0.400; k = 6: SSE 16.7, silhouette 0.600. The run "
        "kept k = 6, by `cluster.criterion` (silhouette by default).",
    )

    def report(sweep: pd.DataFrame) -> str:
        one_segment = {
            "cluster_id": 0,
            "size": 3,
            "share": 1.0,
            "conversion_rate": 0.0,
            "cart_rate": 0.0,
            "mean_events_per_session": 1.0,
            "stability_jaccard": None,
            "top_categories": [],
        }
        return _small_report(
            tmp_path,
            k=6,
            sweep=sweep,
            profiles=pd.DataFrame([one_segment]),
            sample_points=np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
            sample_labels=np.array([0, 0, 0]),
        )

    text = report(several)
    assert "![k sweep](k_sweep.png)" in text and "The run kept k = 6" in text
    assert (tmp_path / "k_sweep.png").stat().st_size > 5_000
    # A later single-k report into the same folder leaves no stale curve behind.
    text = report(one)
    assert "This run has figures for one k (k = 6: SSE 1,261.2, silhouette 0.482)" in text
    assert "k_sweep.png" not in text and not (tmp_path / "k_sweep.png").exists()


def _small_report(
    out: Path,
    *,
    k: int,
    sweep: pd.DataFrame,
    profiles: pd.DataFrame,
    sample_points: np.ndarray,
    sample_labels: np.ndarray,
    **more: object,
) -> str:
    """The text of a report of one embedding-only run without a backtest, written to ``out``."""
    return write_report(
        out,
        run_id="r",
        k=k,
        rows=len(sample_points),
        unit="user",
        model_version="v",
        metrics={"embedding": {"sse": 1.0}},
        not_applicable={},
        backtest=Backtest(None, "too few users"),
        sweep=sweep,
        profiles=profiles,
        sample_points=sample_points,
        sample_labels=sample_labels,
        **more,  # type: ignore[arg-type]
    ).read_text()
