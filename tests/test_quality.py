"""Distributed cluster-quality metrics against scikit-learn on small data."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn import metrics as sk

from jobs.evaluation import external, internal


def frame(spark: SparkSession, points: np.ndarray, labels: np.ndarray) -> DataFrame:
    rows = [([float(x) for x in p], int(c)) for p, c in zip(points, labels, strict=True)]
    return spark.createDataFrame(rows, "embedding array<double>, cluster_id int").repartition(3)


@pytest.fixture(scope="module")
def data(spark: SparkSession) -> tuple[DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    points = rng.normal(size=(4, 8))[labels] + rng.normal(scale=0.7, size=(300, 8))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return frame(spark, points, labels), points, labels


def test_sse_and_calinski_harabasz(data: tuple[DataFrame, np.ndarray, np.ndarray]) -> None:
    df, points, labels = data
    agg = internal.cluster_aggregates(df)
    expected_sse = sum(
        ((points[labels == c] - points[labels == c].mean(axis=0)) ** 2).sum()
        for c in np.unique(labels)
    )
    assert internal.sse(agg) == pytest.approx(expected_sse, rel=1e-9)
    assert internal.calinski_harabasz(agg) == pytest.approx(
        sk.calinski_harabasz_score(points, labels), rel=1e-9
    )
    assert agg.counts.sum() == len(points)


def test_shared_norms_are_read_only_for_their_own_features(
    data: tuple[DataFrame, np.ndarray, np.ndarray],
) -> None:
    df, points, _ = data
    plain = internal.cluster_aggregates(df)
    shared = internal.cluster_aggregates(internal.with_squared_norms(df))
    np.testing.assert_allclose(shared.squared_norms, plain.squared_norms, rtol=1e-12)
    np.testing.assert_allclose(shared.sums, plain.sums, rtol=1e-12)
    assert plain.squared_norms.sum() == pytest.approx((points**2).sum(), rel=1e-12)
    # The norms of another column (here twice the vectors: four times the norms) are not
    # read as those of ``embedding``.
    doubled = df.withColumn("other", F.transform("embedding", lambda x: x * 2))
    other = internal.cluster_aggregates(internal.with_squared_norms(doubled, features="other"))
    np.testing.assert_allclose(other.squared_norms, plain.squared_norms, rtol=1e-12)


def test_davies_bouldin(data: tuple[DataFrame, np.ndarray, np.ndarray]) -> None:
    df, points, labels = data
    agg = internal.cluster_aggregates(df)
    assert internal.davies_bouldin(df, agg) == pytest.approx(
        sk.davies_bouldin_score(points, labels), rel=1e-9
    )


@pytest.mark.parametrize(
    ("distance", "metric"), [("squaredEuclidean", "sqeuclidean"), ("cosine", "cosine")]
)
def test_silhouettes_are_exact(
    spark: SparkSession,
    data: tuple[DataFrame, np.ndarray, np.ndarray],
    distance: str,
    metric: str,
) -> None:
    _, unit, labels = data
    # Rows of three lengths: on unit vectors the two silhouettes coincide (cosine distance is
    # half the squared Euclidean one), and a mix-up of the two would pass unseen.
    points = unit * (1.0 + np.arange(len(unit)) % 3)[:, None]
    expected = sk.silhouette_score(points, labels, metric=metric)
    other = sk.silhouette_score(points, labels, metric=({"cosine", "sqeuclidean"} - {metric}).pop())
    assert abs(expected - other) > 0.01
    assert internal.silhouette(frame(spark, points, labels), distance=distance) == pytest.approx(
        expected, abs=1e-6
    )


def test_size_balance_hand_computed(spark: SparkSession) -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    df = frame(spark, np.ones((10, 2)), labels)
    balance = internal.size_balance(internal.cluster_aggregates(df))
    shares = np.array([0.6, 0.3, 0.1])
    assert balance["size_min_share"] == pytest.approx(0.1)
    assert balance["size_max_share"] == pytest.approx(0.6)
    assert balance["size_entropy"] == pytest.approx(-(shares * np.log(shares)).sum() / np.log(3))


def test_ari_nmi_purity_from_a_contingency_table(spark: SparkSession) -> None:
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 5, 400)
    noisy = np.where(rng.random(400) < 0.3, rng.integers(0, 6, 400), truth)
    df = spark.createDataFrame(
        [(f"t{t}", int(c)) for t, c in zip(truth, noisy, strict=True)], "truth string, c int"
    )
    table = external.contingency(df, "truth", "c")
    assert table.shape == (5, 6) and table.sum() == 400
    assert external.adjusted_rand_index(table) == pytest.approx(
        sk.adjusted_rand_score(truth, noisy), abs=1e-12
    )
    assert external.normalized_mutual_info(table) == pytest.approx(
        sk.normalized_mutual_info_score(truth, noisy), abs=1e-12
    )
    majority = sum(np.bincount(truth[noisy == c]).max() for c in np.unique(noisy))
    assert external.purity(table) == pytest.approx(majority / 400)
    identical = external.contingency(df, "truth", "truth")
    assert external.adjusted_rand_index(identical) == pytest.approx(1.0)
    assert external.normalized_mutual_info(identical) == pytest.approx(1.0)


def test_one_pass_measures_every_stacked_clustering_as_the_library_does(
    spark: SparkSession, data: tuple[DataFrame, np.ndarray, np.ndarray]
) -> None:
    from pyspark.ml.evaluation import ClusteringEvaluator
    from pyspark.ml.functions import array_to_vector

    from jobs.evaluation.measure import internal_metrics_by, sample_ids

    _, points, labels = data
    shuffled = np.random.default_rng(9).permutation(labels)
    rows = [
        (method, f"u{i}", [float(x) for x in p], int(c))
        for method, these in (("a", labels), ("b", shuffled))
        for i, (p, c) in enumerate(zip(points, these, strict=True))
    ]
    long = spark.createDataFrame(
        rows, "method string, id string, embedding array<double>, cluster_id int"
    ).repartition(3)
    everyone = sample_ids(long.where("method = 'a'"), sample=len(points), seed=1)
    values, skipped = internal_metrics_by(long, sample_ids=everyone)
    assert set(values) == {"a", "b"} and skipped == {"a": {}, "b": {}}
    for method, these in (("a", labels), ("b", shuffled)):
        one = long.where(F.col("method") == method)
        library = ClusteringEvaluator(
            featuresCol="v", predictionCol="c", distanceMeasure="squaredEuclidean"
        ).evaluate(
            one.select(
                array_to_vector("embedding").alias("v"),
                F.col("cluster_id").cast("double").alias("c"),
            )
        )
        got = values[method]
        assert got["silhouette_sqeuclidean"] == pytest.approx(library, abs=1e-9)
        assert got["silhouette_cosine"] == got["silhouette_sqeuclidean"]  # unit vectors
        assert got["davies_bouldin"] == pytest.approx(
            sk.davies_bouldin_score(points, these), rel=1e-9
        )
        assert got["calinski_harabasz"] == pytest.approx(
            sk.calinski_harabasz_score(points, these), rel=1e-9
        )
        # The sample holds every row: scikit-learn's exact value is the same silhouette.
        assert got["silhouette_exact_sample"] == pytest.approx(
            sk.silhouette_score(points, these, metric="sqeuclidean"), abs=1e-9
        )
    assert values["a"]["silhouette_sqeuclidean"] > 0.3 > values["b"]["silhouette_sqeuclidean"]


def test_a_singleton_cluster_scores_zero_as_in_spark(spark: SparkSession) -> None:
    from jobs.evaluation.internal import aggregates_by, distance_pass, silhouette

    points = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.5, 0.5]]
    df = spark.createDataFrame(
        [(p, c) for p, c in zip(points, [0, 0, 1, 1, 2], strict=True)],
        "embedding array<double>, cluster_id int",
    )
    measured = distance_pass(df, aggregates_by(df, by=None), by=None)[None]
    assert measured.silhouette_sqeuclidean == pytest.approx(
        silhouette(df, distance="squaredEuclidean"), abs=1e-12
    )
    assert measured.scatter[2] == 0.0


def test_the_driver_path_measures_what_the_spark_path_measures(
    spark: SparkSession, data: tuple[DataFrame, np.ndarray, np.ndarray]
) -> None:
    from jobs.evaluation.internal import with_squared_norms
    from jobs.evaluation.measure import (
        external_metrics_by,
        external_metrics_local,
        fetch_rows,
        internal_metrics_by,
        internal_metrics_local,
        sample_ids,
    )

    _, points, labels = data
    n = len(points)
    rows = (
        spark.createDataFrame(
            [
                (f"u{i}", f"user{i}", [float(x) for x in p], int(c))
                for i, (p, c) in enumerate(zip(points, labels, strict=True))
            ],
            "id string, user_id string, embedding array<float>, cluster_id int",
        )
        .repartition(3)
        .transform(with_squared_norms)
    )
    shuffled = np.random.default_rng(4).permutation(labels)
    lonely = labels.copy()
    lonely[0] = 9  # a cluster of one row
    stacked = spark.createDataFrame(
        [
            (method, f"u{i}", int(c))
            for method, these in (("a", labels), ("b", shuffled), ("c", lonely))
            for i, c in enumerate(these)
        ]
        + [("a", "ghost", 1)],  # not among the rows: dropped by both paths
        "method string, id string, cluster_id int",
    )
    truth = spark.createDataFrame(
        [(f"user{i}", f"p{c}") for i, c in enumerate(labels[:250])] + [("stranger", "p0")],
        "user_id string, persona string",
    )
    ids = sample_ids(rows, sample=120, seed=3)
    long = stacked.join(rows.drop("cluster_id"), "id")
    on_spark, skipped_spark = internal_metrics_by(long, sample_ids=ids, k=5)
    external_spark = external_metrics_by(long, truth)

    assert fetch_rows(rows, at_most=n - 1) is None
    local = fetch_rows(rows, at_most=n)
    assert local is not None and local.points.shape == (n, 8)
    table = stacked.toArrow()
    on_driver, skipped_driver = internal_metrics_local(
        local, table, sample_ids=ids.toArrow().column("id").to_pylist(), long=long, k=5
    )
    external_driver = external_metrics_local(local, table, truth.toArrow())

    assert skipped_driver == skipped_spark
    assert set(on_driver) == set(on_spark) == {"a", "b", "c"}
    for method, values in on_spark.items():
        assert set(on_driver[method]) == set(values), method
        for name, value in values.items():
            assert on_driver[method][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert set(external_driver) == set(external_spark) == {"a", "b", "c"}
    for method, agreement in external_spark.items():
        assert external_driver[method] == pytest.approx(agreement, rel=1e-12), method
    assert external_driver["a"]["ari_vs_truth"] == pytest.approx(1.0)
    # The exact silhouette is of the 120 sampled rows, not of all of them.
    assert on_driver["a"]["silhouette_exact_sample"] != pytest.approx(
        sk.silhouette_score(points, labels, metric="sqeuclidean"), abs=1e-9
    )


def test_sample_silhouettes_with_shared_distances_or_per_method_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.evaluation import measure

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 60)
    points = rng.normal(size=(3, 5))[labels] + rng.normal(scale=0.5, size=(60, 5))
    subset = np.arange(0, 60, 2)
    groups = {
        "a": (np.arange(60), labels),
        "b": (subset, rng.integers(0, 4, len(subset))),
        "one": (np.arange(10), np.zeros(10, dtype=int)),  # a single cluster: left out
    }
    shared = measure.sample_silhouettes(points, groups)
    monkeypatch.setattr(measure, "SHARED_DISTANCE_ROWS", 10)
    per_method = measure.sample_silhouettes(points, groups)
    assert set(shared) == set(per_method) == {"a", "b"}
    for method in ("a", "b"):
        assert shared[method] == pytest.approx(per_method[method], abs=1e-12)
        at, these = groups[method]
        assert shared[method] == pytest.approx(
            sk.silhouette_score(points[at], these, metric="sqeuclidean"), abs=1e-12
        )
