"""The cluster job on well-separated blobs of unit vectors (CPU path; GPU path where cuML is)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession
from sklearn.metrics import adjusted_rand_score

from jobs import cluster, evaluate
from jobs.clustering.kmeans import pick_k, sklearn_tol
from jobs.core.config import (
    AppConfig,
    ClusterConfig,
    ConfigError,
    LakeConfig,
    MlflowConfig,
    load_config,
)
from jobs.core.errors import DataError
from jobs.core.lake import Lake
from jobs.core.tables import EMBEDDINGS, contract_of

K_TRUE = 5
N = 500


def blobs(seed: int = 0, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around K_TRUE random directions (tight, well separated)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K_TRUE, dim))
    labels = np.arange(N) % K_TRUE
    points = centres[labels] + rng.normal(scale=0.08, size=(N, dim))
    return points / np.linalg.norm(points, axis=1, keepdims=True), labels


@pytest.fixture
def blob_lake(spark: SparkSession, tmp_path: Path) -> tuple[AppConfig, np.ndarray, np.ndarray]:
    points, labels = blobs()
    config = dataclasses.replace(
        AppConfig(),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
        cluster=ClusterConfig(k=K_TRUE, model_root=str(tmp_path / "models"), backend="cpu"),
        mlflow=MlflowConfig(enabled=False),  # tracking: tests/test_mlflow.py
    )
    rows = [
        (
            "user",
            f"u{i:04d}",
            f"u{i:04d}",
            [float(x) for x in p],
            f"h{i:04d}",
            "blobs",
            "v-blobs",
            "r0",
            datetime(2024, 3, 1),
        )
        for i, p in enumerate(points)
    ]
    frame = spark.createDataFrame(rows, contract_of(EMBEDDINGS).schema)
    partition = {"unit": ["user"], "model_version": ["v-blobs"]}
    Lake(spark, config.lake).overwrite_partitions(EMBEDDINGS, frame, partition)
    return config, points, labels


def assignments(lake: Lake, run_id: str) -> dict[str, int]:
    table = lake.read("cluster_assignments").where(f"run_id = '{run_id}'")
    return {r["id"]: r["cluster_id"] for r in table.collect()}


def test_cpu_kmeans_recovers_the_blobs_and_assigns_again_with_the_saved_model(
    spark: SparkSession, blob_lake: tuple[AppConfig, np.ndarray, np.ndarray]
) -> None:
    config, points, labels = blob_lake
    lake = Lake(spark, config.lake)
    result = cluster.run(spark, lake, config, run_id="a")
    got = assignments(lake, "a")
    predicted = [got[f"u{i:04d}"] for i in range(N)]
    assert adjusted_rand_score(labels, predicted) >= 0.95
    assert (result.k, result.backend, result.rows) == (K_TRUE, "cpu", N)
    assert sum(result.sizes) == N
    centroids = lake.read("cluster_centroids").where("run_id = 'a'").collect()
    assert sum(r["size"] for r in centroids) == N and len(centroids) == K_TRUE

    # A rerun of the run replaces its rows: same seed, same assignments, nothing doubled.
    cluster.run(spark, lake, config, run_id="a")
    assert assignments(lake, "a") == got
    assert lake.read("cluster_assignments").count() == N
    assert lake.read("cluster_centroids").count() == K_TRUE
    assert sorted((m["metric"], m["k"]) for m in lake.read("cluster_metrics").collect()) == [
        (name, K_TRUE)
        for name in ("restart_cost", "restart_cost_spread", "silhouette_sqeuclidean", "sse")
    ]

    # distance is the Euclidean distance to the row's own centroid
    centre = {r["cluster_id"]: np.array(r["centroid"]) for r in centroids}
    table = lake.read("cluster_assignments").where("run_id = 'a'").collect()
    index = {f"u{i:04d}": i for i in range(N)}
    for row in table[:50]:
        expected = np.linalg.norm(points[index[row["id"]]] - centre[row["cluster_id"]])
        assert row["distance"] == pytest.approx(expected, abs=1e-5)

    # assign-only: the saved model assigns every row as the fit did, with no sweep.
    assert result.model_path and Path(result.model_path).exists()
    reuse = dataclasses.replace(
        config, cluster=dataclasses.replace(config.cluster, assign_with_model=result.model_path)
    )
    again = cluster.run(spark, lake, reuse, run_id="assign")
    assert again.sweep == () and again.k == K_TRUE
    assert assignments(lake, "assign") == got
    # It records its own sse and silhouette, so evaluate's default run is this latest one.
    recorded = lake.read("cluster_metrics").where("run_id = 'assign'").collect()
    assert sorted((m["metric"], m["k"], m["model_version"]) for m in recorded) == [
        ("silhouette_sqeuclidean", K_TRUE, "v-blobs"),
        ("sse", K_TRUE, "v-blobs"),
    ]
    fitted_sse = lake.read("cluster_metrics").where("run_id = 'a' AND metric = 'sse'").first()
    assert {m["metric"]: m["value"] for m in recorded}["sse"] == pytest.approx(
        fitted_sse["value"], rel=1e-6
    )
    assert {m["backend"] for m in recorded} == {"cpu"}
    assert evaluate._latest_cluster_run(lake) == "assign"

    # A batch that falls into one cluster is assigned (no silhouette: it needs two clusters);
    # a model version without rows stops with one line.
    one = [(f"n{i}", [float(x) for x in points[5 * i]]) for i in range(4)]  # blob 0 only
    batch = spark.createDataFrame(
        [("user", i, i, e, "h", "blobs", "v-batch", "r1", datetime(2024, 3, 2)) for i, e in one],
        contract_of(EMBEDDINGS).schema,
    )
    lake.overwrite_partitions(EMBEDDINGS, batch, {"unit": ["user"], "model_version": ["v-batch"]})
    batch_config = dataclasses.replace(
        reuse, cluster=dataclasses.replace(reuse.cluster, model_version="v-batch")
    )
    assigned = cluster.run(spark, lake, batch_config, run_id="batch")
    assert assigned.sizes.count(0) == K_TRUE - 1 and sum(assigned.sizes) == 4
    batch_rows = lake.read("cluster_metrics").where("run_id = 'batch'").collect()
    assert [(m["metric"], m["model_version"]) for m in batch_rows] == [("sse", "v-batch")]
    none = dataclasses.replace(
        reuse, cluster=dataclasses.replace(reuse.cluster, model_version="v-none")
    )
    with pytest.raises(DataError, match="no user rows of model version v-none to assign"):
        cluster.run(spark, lake, none, run_id="none")


def _sweep(
    spark: SparkSession, config: AppConfig, criterion: str, ks: tuple[int, ...] = (4, 5, 6)
) -> Lake:
    """A k sweep of the blobs with candidates on both sides of the true k."""
    lake = Lake(spark, config.lake)
    sweep = dataclasses.replace(
        config, cluster=dataclasses.replace(config.cluster, k=ks, criterion=criterion)
    )
    result = cluster.run(spark, lake, sweep, run_id=f"sweep-{criterion}")
    assert result.k == K_TRUE, (criterion, result.sweep)
    return lake


@pytest.mark.slow  # the elbow rule itself is covered by test_pick_k_rules
def test_elbow_sweep_picks_the_true_k(
    spark: SparkSession, blob_lake: tuple[AppConfig, np.ndarray, np.ndarray]
) -> None:
    _sweep(spark, blob_lake[0], "elbow", ks=(3, 4, 5, 6, 7, 8))


@pytest.mark.slow  # a three-k sweep, about 12 s; the silhouette rule is test_pick_k_rules
def test_sweep_picks_the_true_k_and_records_every_candidate(
    spark: SparkSession,
    blob_lake: tuple[AppConfig, np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.clustering import kmeans as kmeans_module

    config, points, _labels = blob_lake
    fetches: list[int] = []
    fetch = kmeans_module.fetch_start_sample
    monkeypatch.setattr(
        kmeans_module, "fetch_start_sample", lambda *a, **kw: fetches.append(1) or fetch(*a, **kw)
    )
    lake = _sweep(spark, config, "silhouette")
    assert fetches == [1]  # one start sample for the three k
    metrics = lake.read("cluster_metrics").where("run_id = 'sweep-silhouette'").collect()
    assert {(m["metric"], m["k"]) for m in metrics} == {
        (name, k)
        for name in ("sse", "silhouette_sqeuclidean", "restart_cost", "restart_cost_spread")
        for k in (4, 5, 6)
    }
    assert {m["method"] for m in metrics} == {"embedding"}
    assert all(m["sample_size"] == N and m["model_version"] == "v-blobs" for m in metrics)
    # inertia matches scikit-learn's for the same assignment
    got = assignments(lake, "sweep-silhouette")
    predicted = np.array([got[f"u{i:04d}"] for i in range(N)])
    sse = sum(
        ((points[predicted == c] - points[predicted == c].mean(axis=0)) ** 2).sum()
        for c in range(K_TRUE)
    )
    recorded = next(m["value"] for m in metrics if m["metric"] == "sse" and m["k"] == K_TRUE)
    assert recorded == pytest.approx(sse, rel=1e-4)


@pytest.mark.slow  # two cluster runs, about 25 s; the K-Means stage test stays in the default run
def test_bisecting_kmeans_recovers_the_blobs_and_reloads(
    spark: SparkSession, blob_lake: tuple[AppConfig, np.ndarray, np.ndarray]
) -> None:
    config, _points, labels = blob_lake
    lake = Lake(spark, config.lake)
    # MLlib's bisecting K-Means runs all max_iter passes at every level of splits (it has no
    # tolerance): 5 separate these blobs and keep the test's fit at a quarter of the default's.
    bisecting = dataclasses.replace(
        config,
        cluster=dataclasses.replace(config.cluster, algorithm="bisecting_kmeans", max_iter=5),
    )
    result = cluster.run(spark, lake, bisecting, run_id="bis")
    got = assignments(lake, "bis")
    assert adjusted_rand_score(labels, [got[f"u{i:04d}"] for i in range(N)]) >= 0.95
    assert (result.k, result.backend) == (K_TRUE, "cpu")
    assert lake.read("cluster_centroids").where("run_id = 'bis'").count() == K_TRUE
    reuse = dataclasses.replace(
        bisecting,
        cluster=dataclasses.replace(bisecting.cluster, assign_with_model=result.model_path),
    )
    cluster.run(spark, lake, reuse, run_id="bis-again")
    assert assignments(lake, "bis-again") == got


def test_fewer_distinct_points_than_k_reduces_k_and_records_what_was_fitted(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 40 rows but only 3 distinct vectors (identical sequences): k=6 cannot be made.
    config = dataclasses.replace(
        AppConfig(),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
        cluster=ClusterConfig(k=(2, 6), model_root=str(tmp_path / "models"), backend="cpu"),
        mlflow=MlflowConfig(enabled=False),
    )
    vectors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    rows = [
        (
            "user",
            f"u{i:02d}",
            f"u{i:02d}",
            vectors[i % 3],
            "h",
            "s",
            "v",
            "r0",
            datetime(2024, 3, 1),
        )
        for i in range(40)
    ]
    frame = spark.createDataFrame(rows, contract_of(EMBEDDINGS).schema)
    lake = Lake(spark, config.lake)
    lake.overwrite_partitions(EMBEDDINGS, frame, {"unit": ["user"], "model_version": ["v"]})
    with caplog.at_level("WARNING", logger="jobs.cluster"):
        result = cluster.run(spark, lake, config, run_id="dup")
    assert "only 3 distinct embeddings" in caplog.text
    assert [k for k, _, _ in result.sweep] == [2]
    only_big = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, k=6))
    result = cluster.run(spark, lake, only_big, run_id="dup6")
    assert result.k == 3 and sorted(result.sizes) == [13, 13, 14]  # no empty cluster
    centroids = lake.read("cluster_centroids").where("run_id = 'dup6'").count()
    recorded = {r["k"] for r in lake.read("cluster_metrics").where("run_id = 'dup6'").collect()}
    assert centroids == 3 and recorded == {3}
    same = dataclasses.replace(
        config, cluster=dataclasses.replace(config.cluster, model_version=None, k=2)
    )
    one = spark.createDataFrame(
        [
            ("user", f"w{i}", f"w{i}", [1.0, 0.0, 0.0], "h", "s", "v1", "r0", datetime(2024, 3, 2))
            for i in range(5)
        ],
        contract_of(EMBEDDINGS).schema,
    )
    lake.overwrite_partitions(EMBEDDINGS, one, {"unit": ["user"], "model_version": ["v1"]})
    with pytest.raises(ValueError, match="every embedding is identical"):
        cluster.run(spark, lake, same, run_id="one")


def test_pick_k_rules() -> None:
    sweep = [(2, 100.0, 0.3), (3, 40.0, 0.6), (4, 35.0, 0.5), (5, 33.0, 0.4)]
    assert pick_k(sweep, "silhouette") == 3
    assert pick_k(sweep, "elbow") == 3
    assert pick_k([(4, 1.0, 0.1)], "elbow") == 4


def test_invalid_settings_are_refused_when_the_config_loads() -> None:
    for bad, message in [
        ("cluster.k=1", "cluster.k must be at least 2"),
        (f"cluster.seed={2**32}", "32 bits"),
        ("cluster.criterion=gap", "key 'cluster.criterion' must be one of silhouette, elbow"),
        ("cluster.algorithm=dbscan", "key 'cluster.algorithm' must be one of kmeans"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config([], [bad])
    with pytest.raises(ConfigError, match="bisecting_kmeans runs on Spark MLlib only"):
        load_config([], ["cluster.algorithm=bisecting_kmeans", "cluster.backend=gpu"])


@pytest.mark.gpu
def test_gpu_centres_match_cpu(
    spark: SparkSession, blob_lake: tuple[AppConfig, np.ndarray, np.ndarray]
) -> None:
    pytest.importorskip("spark_rapids_ml", reason="spark-rapids-ml / cuML not installed")
    config, _, _ = blob_lake
    lake = Lake(spark, config.lake)
    cpu = cluster.run(spark, lake, config, run_id="cpu")
    gpu_config = dataclasses.replace(
        config, cluster=dataclasses.replace(config.cluster, backend="gpu")
    )
    gpu = cluster.run(spark, lake, gpu_config, run_id="gpu")
    assert gpu.backend == "gpu"
    cpu_centres = sorted(
        tuple(np.round(r["centroid"], 2))
        for r in lake.read("cluster_centroids").where("run_id = 'cpu'").collect()
    )
    gpu_centres = sorted(
        tuple(np.round(r["centroid"], 2))
        for r in lake.read("cluster_centroids").where("run_id = 'gpu'").collect()
    )
    np.testing.assert_allclose(np.array(cpu_centres), np.array(gpu_centres), atol=0.02)
    assert sorted(cpu.sizes) == sorted(gpu.sizes)


def test_restarts_keep_the_lowest_cost_start() -> None:
    from sklearn.cluster import KMeans as SkKMeans
    from threadpoolctl import threadpool_info

    from jobs.clustering.kmeans import _kmeans_pp_restarts

    rng = np.random.default_rng(9)
    # Five touching blobs and a far one, k=5: k-means++ seeds settle in different optima.
    corners = ((0, 0), (6, 0), (0, 6), (6, 6), (3, 3), (20, 20))
    points = np.vstack([rng.normal(loc, 1.0, size=(60, 2)) for loc in corners])
    settings = ClusterConfig(k=5, n_init=6, seed=11)
    threads = [(i["user_api"], i["num_threads"]) for i in threadpool_info()]
    centres, costs = _kmeans_pp_restarts(points, np.ones(len(points)), k=5, config=settings)
    # The restarts ran in threads with BLAS held at one thread: the limits are as they were.
    assert [(i["user_api"], i["num_threads"]) for i in threadpool_info()] == threads
    assert len(costs) == 6 and len(set(np.round(costs, 6))) > 1
    labels = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    kept = sum(((points[labels == c] - centres[c]) ** 2).sum() for c in range(len(centres)))
    assert kept == pytest.approx(min(costs), rel=1e-6)
    tol = sklearn_tol(points, 1e-4)  # cluster.tol's meaning (test below)
    each = [
        SkKMeans(n_clusters=5, n_init=1, random_state=11 + i, max_iter=50, tol=tol)
        .fit(points)
        .inertia_
        for i in range(6)
    ]
    assert costs == pytest.approx(each)


def test_cluster_tol_is_the_largest_centre_shift_on_the_driver_as_on_spark() -> None:
    # cluster.tol = 1e-3: the fit stops once no centre moves more than 1e-3 (MLlib's meaning,
    # and the Spark passes').  Handed to scikit-learn as is, it bounded the sum of squared
    # shifts by 1e-3 x the data's mean variance instead: here the restarts stopped with
    # centres still moving by more.
    from sklearn.cluster._kmeans import _tolerance

    from jobs.clustering.kmeans import _kmeans_pp_restarts

    rng = np.random.default_rng(3)
    points = rng.normal(size=(2000, 8)) * np.linspace(1.0, 3.0, 8)  # one blob: slow to settle
    settings = ClusterConfig(k=6, n_init=1, seed=4, tol=1e-3, max_iter=300)
    centres, _ = _kmeans_pp_restarts(points, np.ones(len(points)), k=6, config=settings)
    labels = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)
    moved = np.array([points[labels == c].mean(axis=0) for c in range(6)])
    assert np.linalg.norm(moved - centres, axis=1).max() <= 1e-3
    # scikit-learn's own bound on the sum of squared shifts is then tol squared.
    assert _tolerance(points, sklearn_tol(points, 1e-3)) == pytest.approx(1e-6)


def test_sampled_start_refines_on_all_rows_to_scikit_learns_cost(spark: SparkSession) -> None:
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from sklearn.cluster import KMeans as SkKMeans

    from jobs.clustering.centres import model_with_centres
    from jobs.clustering.kmeans import FEATURES, SampledStartKMeans

    points, labels = blobs(seed=3)
    frame = spark.createDataFrame(
        [(f"u{i}", [float(x) for x in p]) for i, p in enumerate(points)],
        "id string, e array<double>",
    ).select("id", array_to_vector(F.col("e")).alias(FEATURES))
    # The start sees 100 of the 500 rows: Lloyd passes on all rows finish the job.
    estimator = SampledStartKMeans(k=K_TRUE, config=ClusterConfig(k=K_TRUE, init_sample=100))
    model = estimator.fit(frame)
    start = estimator.last_start
    assert start is not None and start.sample_rows <= 100 and start.lloyd_passes >= 1
    assert len(start.restart_costs) == 3 and start.chosen_cost == min(start.restart_costs)
    predicted = {r["id"]: r["cluster_id"] for r in model.transform(frame).collect()}
    assigned = np.array([predicted[f"u{i}"] for i in range(N)])
    assert adjusted_rand_score(labels, assigned) >= 0.95
    centres = np.array(model.clusterCenters())
    cost = ((points - centres[assigned]) ** 2).sum()
    reference = SkKMeans(n_clusters=K_TRUE, n_init=1, random_state=0).fit(points).inertia_
    assert cost <= reference * 1.01
    # The wrapper model holds exactly the centres it was given.
    again = model_with_centres(spark, centres, seed=1)
    np.testing.assert_allclose(
        np.sort(np.array(again.clusterCenters()), axis=0), np.sort(centres, axis=0)
    )


def test_a_model_built_in_the_jvm_is_the_model_mllib_fits_and_runs_no_job(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The classic-session shim builds, without a Spark job, the model the portable route
    fits: the same centres, params, predictions and saved model."""
    from pyspark.ml.clustering import KMeansModel
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from jobs.clustering import centres as centres_module
    from jobs.clustering.kmeans import FEATURES, load_model

    points, _ = blobs(seed=5)
    given = np.array([points[i] for i in (0, 100, 200, 300)], dtype=np.float64)
    frame = spark.createDataFrame(
        [(i, [float(x) for x in p]) for i, p in enumerate(points)], "id int, e array<double>"
    ).select("id", array_to_vector(F.col("e")).alias(FEATURES))
    tracker = spark.sparkContext.statusTracker()
    spark.sparkContext.setJobGroup("jvm-model", "the shim runs no job")
    try:
        built = centres_module.model_with_centres(spark, given, seed=1)
        assert list(tracker.getJobIdsForGroup("jvm-model")) == []
    finally:
        spark.sparkContext.setJobGroup(None, None)  # type: ignore[arg-type]
    assert not built.hasSummary  # the shim's model: a fitted one carries a training summary
    # The first JVM-built model of a process is read back and checked; later ones are not, and
    # their numbering (the given order) is what the JVM holds.
    monkeypatch.setattr(centres_module, "_JVM_CHECKED", [])
    model, numbered = centres_module.numbered_model(spark, given, seed=1)
    assert centres_module._JVM_CHECKED == [True]
    np.testing.assert_array_equal(numbered, np.array(model.clusterCenters()))
    # A JVM that built the model otherwise (here: the centres reversed) is not trusted again:
    # a warning, then the fitted route, numbering as given.
    shim = centres_module._built_in_jvm
    monkeypatch.setattr(centres_module, "_JVM_CHECKED", [])
    monkeypatch.setattr(centres_module, "_JVM_REFUSED", [])
    monkeypatch.setattr(centres_module, "_DRAW_ORDER", {})
    monkeypatch.setattr(centres_module, "_built_in_jvm", lambda s, g, e: shim(s, g[::-1].copy(), e))
    model, numbered = centres_module.numbered_model(spark, given, seed=1)
    assert centres_module._JVM_REFUSED == [True] and model.hasSummary
    np.testing.assert_array_equal(numbered, given)
    np.testing.assert_array_equal(np.array(model.clusterCenters()), given)
    monkeypatch.setattr(centres_module, "_built_in_jvm", lambda *args: None)
    monkeypatch.setattr(centres_module, "_DRAW_ORDER", {})
    fitted, numbered = centres_module.numbered_model(spark, given, seed=1)
    assert fitted.hasSummary
    np.testing.assert_array_equal(numbered, np.array(fitted.clusterCenters()))
    # Both routes number the centres in the order given (a classic and a Connect run of the
    # same data write the same cluster ids): the fitted one learnt MLlib's draw order once.
    np.testing.assert_array_equal(np.array(fitted.clusterCenters()), given)
    assert set(centres_module._DRAW_ORDER) == {(4, 1)}
    other = given[[2, 0, 3, 1]]
    np.testing.assert_array_equal(
        np.array(centres_module.model_with_centres(spark, other, seed=1).clusterCenters()), other
    )

    np.testing.assert_array_equal(np.array(built.clusterCenters()), given)
    for name in ("k", "featuresCol", "predictionCol", "distanceMeasure", "maxIter", "seed"):
        assert built.getOrDefault(name) == fitted.getOrDefault(name), name
    assert built.getK() == 4 and built.getPredictionCol() == "cluster_id"

    def predictions(model: KMeansModel) -> dict[int, int]:
        rows = model.transform(frame).select("id", "cluster_id").collect()
        return {r["id"]: r["cluster_id"] for r in rows}

    by_built, by_fitted = predictions(built), predictions(fitted)
    assert by_built == by_fitted
    ids = sorted(by_built)
    nearest = ((points[:, None, :] - given[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    assert [by_built[i] for i in ids] == nearest.tolist()

    built.write().overwrite().save(str(tmp_path / "model"))
    loaded = load_model(str(tmp_path / "model"))
    assert isinstance(loaded, KMeansModel) and loaded.getK() == 4
    assert loaded.getFeaturesCol() == FEATURES and loaded.getPredictionCol() == "cluster_id"
    np.testing.assert_array_equal(np.array(loaded.clusterCenters()), given)
    assert predictions(loaded) == by_built


def test_the_start_sample_arrives_through_arrow_and_dedups_in_a_fixed_order(
    spark: SparkSession,
) -> None:
    from pyspark.ml.linalg import DenseVector, SparseVector, VectorUDT
    from pyspark.sql import types as T

    from jobs.clustering.sample import distinct_points, vectors_from_arrow

    schema = T.StructType([T.StructField("features", VectorUDT())])
    dense = [
        DenseVector([1.0, 2.0, 0.0]),
        DenseVector([0.5, 0.0, 3.0]),
        DenseVector([1.0, 2.0, 0.0]),
    ]
    sparse = [
        SparseVector(3, [1], [4.0]),
        DenseVector([0.0, 0.0, 2.5]),
        SparseVector(3, [1], [4.0]),
    ]
    got_dense = vectors_from_arrow(
        spark.createDataFrame([(v,) for v in dense], schema).toArrow()[0]
    )
    got_sparse = vectors_from_arrow(
        spark.createDataFrame([(v,) for v in sparse], schema).toArrow()[0]
    )
    assert isinstance(got_dense, np.ndarray) and hasattr(got_sparse, "toarray")
    np.testing.assert_array_equal(got_dense, [v.toArray() for v in dense])
    np.testing.assert_array_equal(got_sparse.toarray(), [v.toArray() for v in sparse])
    # A sliced batch (an Arrow array with an offset) reads its own rows only.
    column = spark.createDataFrame([(v,) for v in sparse], schema).toArrow()[0].combine_chunks()
    np.testing.assert_array_equal(
        vectors_from_arrow(column.slice(1, 2)).toarray(), [v.toArray() for v in sparse[1:]]
    )

    # The distinct rows and their weights do not depend on the order the rows came in.
    rng = np.random.default_rng(0)
    rows = np.repeat(rng.normal(size=(6, 4)), [1, 2, 3, 1, 1, 4], axis=0)
    points, weights = distinct_points(rows)
    again, again_weights = distinct_points(rows[rng.permutation(len(rows))])
    np.testing.assert_array_equal(points, again)
    np.testing.assert_array_equal(weights, again_weights)
    assert points.shape == (6, 4) and weights.sum() == len(rows)
    assert sorted(weights) == [1, 1, 1, 2, 3, 4]
    sparse_points, sparse_weights = distinct_points(got_sparse)
    assert sparse_points.shape == (2, 3) and sorted(sparse_weights) == [1, 2]

    with pytest.raises(ValueError, match="different dimensions"):
        mixed = [(DenseVector([1.0, 2.0]),), (DenseVector([1.0, 2.0, 3.0]),)]
        vectors_from_arrow(spark.createDataFrame(mixed, schema).toArrow()[0])


def test_the_start_sample_read_from_the_embedding_column_is_the_vectors_sample(
    spark: SparkSession,
) -> None:
    """The cluster stage fetches its start sample from ``embedding`` (float32): the same
    rows, values, restarts, Lloyd passes and centres as from the float64 vectors."""
    import pyarrow as pa
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from jobs.clustering.kmeans import FEATURES, SampledStartKMeans
    from jobs.clustering.sample import arrays_from_arrow

    points, _ = blobs(seed=7)
    frame = spark.createDataFrame(
        [([float(x) for x in p.astype(np.float32)],) for p in points], "embedding array<float>"
    ).select("embedding", array_to_vector(F.col("embedding")).alias(FEATURES))
    config = ClusterConfig(k=K_TRUE, init_sample=100)
    fits = {}
    for column in (None, "embedding"):
        estimator = SampledStartKMeans(k=K_TRUE, config=config, sample_col=column)
        fits[column] = (estimator.fit(frame), estimator.last_start)
    (by_vectors, start), (by_array, array_start) = fits[None], fits["embedding"]
    assert start is not None and array_start == start and start.lloyd_passes >= 1
    np.testing.assert_array_equal(
        np.array(by_array.clusterCenters()), np.array(by_vectors.clusterCenters())
    )

    values = np.array([[1.5, -0.1], [0.25, 3.0], [7.0, 0.0]], dtype=np.float32)
    column = pa.array(values.tolist(), pa.list_(pa.float32()))
    got = arrays_from_arrow(column)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, values.astype(np.float64))
    np.testing.assert_array_equal(arrays_from_arrow(column.slice(1, 2)), got[1:])
    with pytest.raises(ValueError, match="different dimensions"):
        arrays_from_arrow(pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32())))
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 2)
    np.testing.assert_array_equal(arrays_from_arrow(fixed.slice(1, 2)), got[1:])
    with pytest.raises(ValueError, match="null vectors"):
        arrays_from_arrow(pa.array([[1.0, 2.0], None], pa.list_(pa.float32())))
    with pytest.raises(ValueError, match="null values"):
        arrays_from_arrow(pa.array([[1.0, 2.0], [1.0, None]], pa.list_(pa.float32())))


def test_a_k_sweep_fetches_one_start_sample(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster stage hands the first fit's start sample to the next k: fetched once (it is
    seeded, so the same rows), with the same starts and models as fits fetching their own."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from jobs.clustering import kmeans as kmeans_module

    points, _ = blobs(seed=3)
    frame = spark.createDataFrame(
        [([float(x) for x in p],) for p in points], "embedding array<double>"
    ).select("embedding", array_to_vector(F.col("embedding")).alias(kmeans_module.FEATURES))
    config = ClusterConfig(k=K_TRUE, init_sample=100)  # a sample of the 500 rows: Lloyd passes
    alone = {}
    for k in (4, 5):
        estimator = kmeans_module.SampledStartKMeans(k=k, config=config, sample_col="embedding")
        alone[k] = (np.array(estimator.fit(frame).clusterCenters()), estimator.last_start)
    fetches: list[int] = []
    fetch = kmeans_module.fetch_start_sample
    monkeypatch.setattr(
        kmeans_module, "fetch_start_sample", lambda *a, **kw: fetches.append(1) or fetch(*a, **kw)
    )
    shared = None
    for k in (4, 5):
        estimator = kmeans_module.kmeans_estimator(
            "cpu", k, config, rows=N, sample_col="embedding", sample=shared
        )
        centres = np.array(estimator.fit(frame).clusterCenters())
        shared = estimator.last_sample
        np.testing.assert_array_equal(centres, alone[k][0])
        assert estimator.last_start == alone[k][1] and alone[k][1].lloyd_passes >= 1
    assert fetches == [1] and shared is not None and shared.rows <= 100


@pytest.mark.parametrize("sample_col", [None, "e"], ids=["vectors", "array-column"])
def test_a_sample_that_missed_the_rare_points_is_topped_up_from_the_full_data(
    spark: SparkSession, sample_col: str | None
) -> None:
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from jobs.clustering.kmeans import FEATURES, SampledStartKMeans

    # 600 identical rows and 3 rare ones: a start sample of 30 rows holds one distinct point,
    # which made K-Means fail ("every sampled point coincides") though the data has four.
    rare = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]]
    rows = [[1.0, 0.0, 0.0]] * 600 + rare
    frame = spark.createDataFrame([(r,) for r in rows], "e array<double>").select(
        "e", array_to_vector(F.col("e")).alias(FEATURES)
    )
    config = ClusterConfig(k=3, init_sample=30)
    estimator = SampledStartKMeans(k=3, config=config, sample_col=sample_col)
    model = estimator.fit(frame)
    assert estimator.last_start is not None and estimator.last_start.sample_rows <= 30
    centres = np.array(model.clusterCenters())
    assert centres.shape == (3, 3)
    # Every centre is the mean of the rows nearest it: the majority point is one of them.
    assert np.isclose(centres, [1.0, 0.0, 0.0]).all(axis=1).any()


def test_an_explicit_zero_is_the_same_point_as_an_absent_one() -> None:
    from scipy.sparse import csr_matrix

    from jobs.clustering.sample import distinct_points

    # Row 0 stores its zero at index 0, row 1 leaves it out: one point, weight 2.
    matrix = csr_matrix(
        (np.array([0.0, 1.0, 1.0]), np.array([0, 1, 1]), np.array([0, 2, 3])), shape=(2, 3)
    )
    points, weights = distinct_points(matrix)
    assert points.shape[0] == 1 and weights.tolist() == [2.0]


def test_minus_zero_is_the_same_point_as_zero() -> None:
    from jobs.clustering.kmeans import SingleCluster, fit_on_driver
    from jobs.clustering.sample import distinct_points

    # Equal as numbers, different as bytes: one point, weight 3; ten such rows cannot be split.
    points, weights = distinct_points(np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0]]))
    assert points.shape[0] == 1 and weights.tolist() == [3.0]
    rows = np.array([[0.0, 1.0], [-0.0, 1.0]] * 5)
    with pytest.raises(SingleCluster):
        fit_on_driver(rows, k=2, config=ClusterConfig(k=2))
