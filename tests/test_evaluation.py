"""The evaluate stage's transforms on hand-computed cases: cluster profiles, usefulness (held-out
hit rates), query plans without whole-table windows, and the stage's result lines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.evaluate import EvaluateResult
from jobs.evaluation.profiles import cluster_profiles
from jobs.evaluation.usefulness import (
    assign_to_centroids,
    hit_rates,
    split_last_session,
    usefulness_metrics,
)

EVENT = (
    "struct<ts:timestamp, event_type:string, item_id:string, category:string, "
    "brand:string, price:double>"
)


def test_cluster_profiles_hand_computed(spark: SparkSession) -> None:
    ts = datetime(2024, 3, 1)
    assignments = spark.createDataFrame(
        [("u1", "u1", 0, 0.1), ("u2", "u2", 0, 0.2), ("u3", "u3", 1, 0.3)],
        "id string, user_id string, cluster_id int, distance double",
    )
    a_x = (ts, "view", "i1", "A", "x", 1.0)
    sequences = spark.createDataFrame(
        [("u1", [a_x, a_x]), ("u2", [(ts, "view", "i2", "B", None, 1.0)]), ("u3", [a_x])],
        f"id string, events array<{EVENT}>",
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
        f"session_id string, user_id string, session_start timestamp, events array<{EVENT}>",
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


def unpartitioned_windows(df: DataFrame) -> list[str]:
    """Window operators of ``df``'s physical plan with no PARTITION BY: each one moves every
    row to a single partition (Spark logs ``WindowExec - No Partition Defined``)."""
    found: list[str] = []

    def walk(node: Any) -> None:  # a py4j handle on a SparkPlan
        name = node.nodeName()
        if name in ("Window", "WindowGroupLimit") and node.partitionSpec().isEmpty():
            found.append(node.toString())
        children = node.children()
        for i in range(children.size()):
            walk(children.apply(i))

    walk(df._jdf.queryExecution().sparkPlan())
    return found


def test_the_window_check_sees_a_whole_table_window(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1, 2)], "a int, b int")
    whole = df.withColumn("t", F.sum("a").over(Window.partitionBy()))
    assert len(unpartitioned_windows(whole)) == 1
    per_b = df.withColumn("t", F.sum("a").over(Window.partitionBy("b")))
    assert unpartitioned_windows(per_b) == []


def test_evaluate_queries_never_window_over_the_whole_table(spark: SparkSession) -> None:
    assignments = spark.createDataFrame(
        [], "id string, user_id string, cluster_id int, distance double"
    )
    sequences = spark.createDataFrame([], f"id string, events array<{EVENT}>")
    sessions = spark.createDataFrame(
        [],
        f"session_id string, user_id string, session_start timestamp, events array<{EVENT}>, "
        "duration_s double, n_events long, n_purchases long, n_add_to_cart long",
    )
    clusters = spark.createDataFrame([], "user_id string, cluster_id int")
    rows = spark.createDataFrame([], "id string, embedding array<float>")
    centroids = spark.createDataFrame([], "cluster_id int, centroid array<float>")
    history, held_out = split_last_session(sessions)
    plans = {
        "profiles": cluster_profiles(assignments, sequences, sessions),
        "split_last_session": history.unionByName(held_out),
        "hit_rates": hit_rates(history, held_out, clusters),
        "assign_to_centroids": assign_to_centroids(rows, centroids),
    }
    for name, df in plans.items():
        assert unpartitioned_windows(df) == [], name


def test_evaluate_result_summary_and_closing_lines() -> None:
    metrics = {
        "embedding": {
            "ari_vs_truth": 0.9671,
            "silhouette_cosine": 0.482,
            "hit_rate_at_10": 0.8101,
            "hit_rate_at_10_global": 0.531,
            "hit_rate_lift": 1.5257,
            "hit_rate_lift_ci_low": 1.4974,
            "hit_rate_lift_ci_high": 1.5554,
        },
        "random_baseline": {"ari_vs_truth": -0.0003},
        "tfidf_baseline": {"ari_vs_truth": 0.7577},
    }
    result = EvaluateResult("r1", 6, 5000, metrics, "data/reports/r1/report.md")
    headline = (
        "embedding ARI 0.967; tfidf_baseline ARI 0.758; random_baseline ARI -0.000; "
        "silhouette 0.482 (cosine)"
    )
    assert result.headline() == headline
    assert result.summary() == (
        f"cluster run r1 (k=6, 5,000 rows): {headline}; report data/reports/r1/report.md"
    )
    assert result.closing_lines() == [
        f"\nheadline (k=6): {headline}",
        "usefulness: hit-rate@10 0.810 with cluster-popular vs 0.531 global, lift 1.53 "
        "(95% CI 1.50-1.56)",
        "report: data/reports/r1/report.md",
    ]
    plain = EvaluateResult("r2", 3, 10, {"embedding": {"silhouette_cosine": 0.1}})
    assert plain.closing_lines() == [
        "\nheadline (k=3): silhouette 0.100 (cosine)",
        "report: None",
    ]
