"""Distributed cluster-quality metrics against scikit-learn on small data."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from sklearn import metrics as sk

from jobs import quality


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
    agg = quality.cluster_aggregates(df)
    expected_sse = sum(
        ((points[labels == c] - points[labels == c].mean(axis=0)) ** 2).sum()
        for c in np.unique(labels)
    )
    assert quality.sse(agg) == pytest.approx(expected_sse, rel=1e-9)
    assert quality.calinski_harabasz(agg) == pytest.approx(
        sk.calinski_harabasz_score(points, labels), rel=1e-9
    )
    assert agg.counts.sum() == len(points)


def test_davies_bouldin(data: tuple[DataFrame, np.ndarray, np.ndarray]) -> None:
    df, points, labels = data
    agg = quality.cluster_aggregates(df)
    assert quality.davies_bouldin(df, agg) == pytest.approx(
        sk.davies_bouldin_score(points, labels), rel=1e-9
    )


@pytest.mark.parametrize(
    ("distance", "metric"), [("squaredEuclidean", "sqeuclidean"), ("cosine", "cosine")]
)
def test_silhouettes_are_exact(
    data: tuple[DataFrame, np.ndarray, np.ndarray], distance: str, metric: str
) -> None:
    df, points, labels = data
    assert quality.silhouette(df, distance=distance) == pytest.approx(
        sk.silhouette_score(points, labels, metric=metric), abs=1e-6
    )


def test_size_balance_hand_computed(spark: SparkSession) -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    df = frame(spark, np.ones((10, 2)), labels)
    balance = quality.size_balance(quality.cluster_aggregates(df))
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
    table = quality.contingency(df, "truth", "c")
    assert table.shape == (5, 6) and table.sum() == 400
    assert quality.adjusted_rand_index(table) == pytest.approx(
        sk.adjusted_rand_score(truth, noisy), abs=1e-12
    )
    assert quality.normalized_mutual_info(table) == pytest.approx(
        sk.normalized_mutual_info_score(truth, noisy), abs=1e-12
    )
    majority = sum(np.bincount(truth[noisy == c]).max() for c in np.unique(noisy))
    assert quality.purity(table) == pytest.approx(majority / 400)
    identical = quality.contingency(df, "truth", "truth")
    assert quality.adjusted_rand_index(identical) == pytest.approx(1.0)
    assert quality.normalized_mutual_info(identical) == pytest.approx(1.0)


def test_cluster_profiles_hand_computed(spark: SparkSession) -> None:
    from datetime import datetime

    from jobs.evaluate import cluster_profiles

    ts = datetime(2024, 3, 1)
    event = (
        "struct<ts:timestamp, event_type:string, item_id:string, category:string, "
        "brand:string, price:double>"
    )
    assignments = spark.createDataFrame(
        [("u1", "u1", 0, 0.1), ("u2", "u2", 0, 0.2), ("u3", "u3", 1, 0.3)],
        "id string, user_id string, cluster_id int, distance double",
    )
    a_x = (ts, "view", "i1", "A", "x", 1.0)
    sequences = spark.createDataFrame(
        [("u1", [a_x, a_x]), ("u2", [(ts, "view", "i2", "B", None, 1.0)]), ("u3", [a_x])],
        f"id string, events array<{event}>",
    )
    sessions = spark.createDataFrame(
        [("u1", 10.0, 2, 1, 1), ("u2", 30.0, 1, 0, 0), ("u3", 0.0, 1, 0, 0)],
        "user_id string, duration_s double, n_events long, n_purchases long, n_add_to_cart long",
    )
    rows = {
        r["cluster_id"]: r for r in cluster_profiles(assignments, sequences, sessions).collect()
    }
    first = rows[0]
    assert (first["size"], first["share"]) == (2, pytest.approx(2 / 3))
    assert (first["conversion_rate"], first["cart_rate"]) == (0.5, 0.5)
    assert first["mean_events_per_session"] == 1.5 and first["mean_session_duration_s"] == 20.0
    top = [(t["value"], t["share"], t["lift"]) for t in first["top_categories"]]
    assert top == [
        ("A", pytest.approx(2 / 3), pytest.approx((2 / 3) / (3 / 4))),
        ("B", pytest.approx(1 / 3), pytest.approx((1 / 3) / (1 / 4))),
    ]
    assert [t["value"] for t in first["top_brands"]] == ["x"]  # missing brands are skipped
    assert first["representative_ids"] == ["u1", "u2"]
    second = rows[1]
    assert second["top_categories"][0]["lift"] == pytest.approx(1 / (3 / 4))
    assert second["representative_ids"] == ["u3"]


def test_hit_rates_and_usefulness_hand_computed(spark: SparkSession) -> None:
    from datetime import datetime

    from jobs.evaluate import hit_rates, split_last_session, usefulness_metrics

    event = (
        "struct<ts:timestamp, event_type:string, item_id:string, category:string, "
        "brand:string, price:double>"
    )

    def ev(category: str) -> tuple:
        return (datetime(2024, 3, 1), "view", "i", category, None, 1.0)

    # History: cluster 0 (u1, u2) likes A then B; everyone together likes C most.
    sessions = spark.createDataFrame(
        [
            ("s1", "u1", datetime(2024, 3, 1, 1), [ev("A"), ev("A"), ev("B")]),
            ("s2", "u1", datetime(2024, 3, 2, 1), [ev("A"), ev("Z")]),  # held out: A hit, Z miss
            ("s3", "u2", datetime(2024, 3, 1, 1), [ev("B")]),
            ("s4", "u2", datetime(2024, 3, 2, 1), [ev("B")]),  # held out: B hit
            ("s5", "u3", datetime(2024, 3, 1, 1), [ev("C")] * 5),
            ("s6", "u3", datetime(2024, 3, 2, 1), [ev("A")]),  # held out: cluster 1 top is C
            ("s7", "u4", datetime(2024, 3, 1, 1), [ev("A")]),  # one session: not scored
        ],
        f"session_id string, user_id string, session_start timestamp, events array<{event}>",
    )
    history, held_out = split_last_session(sessions)
    assert sorted(r["session_id"] for r in held_out.collect()) == ["s2", "s4", "s6"]
    clusters = spark.createDataFrame(
        [("u1", 0), ("u2", 0), ("u3", 1)], "user_id string, cluster_id int"
    )
    buckets = hit_rates(history, held_out, clusters, top_n=1, buckets=1).collect()
    # top-1: cluster 0 -> A (3 of its 4 past events), cluster 1 -> C; global -> C (5 of 9).
    # held-out pairs: (u1,A) (u1,Z) (u2,B) (u3,A): cluster hits = u1/A only; global hits = none
    assert [(r["pairs"], r["cluster_hits"], r["global_hits"]) for r in buckets] == [(4, 1, 0)]

    metrics = usefulness_metrics([(10, 6, 3), (10, 5, 4), (10, 7, 3)], resamples=2000, seed=1)
    assert metrics["hit_rate_at_10"] == pytest.approx(18 / 30)
    assert metrics["hit_rate_at_10_global"] == pytest.approx(10 / 30)
    assert metrics["hit_rate_lift"] == pytest.approx(1.8)
    assert metrics["hit_rate_lift_ci_low"] <= 1.8 <= metrics["hit_rate_lift_ci_high"]
    assert metrics["hit_rate_lift_ci_low"] >= 5 / 4 and metrics["hit_rate_lift_ci_high"] <= 7 / 3
    assert usefulness_metrics([]) == {}
