"""The evaluate stage's transforms on hand-computed cases: cluster profiles, query plans without
whole-table windows, and the stage's result lines (the backtest: tests/test_backtest.py)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.core.config import EvaluateConfig, SessionizeConfig
from jobs.evaluate import EvaluateResult
from jobs.evaluation.future import _ranked_hits
from jobs.evaluation.profiles import cluster_profiles
from jobs.evaluation.protocol import future_targets, history_units, split_events

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
        f"session_id string, user_id string, session_start timestamp, "
        f"session_end timestamp, events array<{EVENT}>, duration_s double, n_events long, "
        "n_views long, n_purchases long, n_add_to_cart long, revenue double, is_bot boolean",
    )
    split = split_events(sessions, protocol="session_suffix", unit="user", config=EvaluateConfig())
    segments = spark.createDataFrame([], "method string, id string, segment int")
    values = spark.createDataFrame([], "id string, value string, events long")
    plans = {
        "profiles": cluster_profiles(assignments, sequences, sessions),
        "history_units": history_units(split, unit="user", sessionize=SessionizeConfig()),
        "future_targets": future_targets(split, unit="user"),
        "ranked_hits": _ranked_hits(segments, values, values, top=20),
    }
    for name, df in plans.items():
        assert unpartitioned_windows(df) == [], name


def test_evaluate_result_summary_and_closing_lines() -> None:
    metrics = {
        "embedding": {
            "ari_vs_truth": 0.9671,
            "silhouette_cosine": 0.482,
            "future_item_hit_rate_at_20": 0.4101,
            "future_item_hit_rate_at_20_lift": 1.5257,
            "future_item_hit_rate_at_20_lift_ci_low": 1.4974,
            "future_item_hit_rate_at_20_lift_ci_high": 1.5554,
            "future_users": 4200.0,
        },
        "random_baseline": {"ari_vs_truth": -0.0003},
        "tfidf_baseline": {"ari_vs_truth": 0.7577},
    }
    result = EvaluateResult(
        "r1", 6, 5000, metrics, "data/reports/r1/report.md", verdict="Use the embedding."
    )
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
        "future: item hit-rate@20 0.410, lift over popularity 1.53 (95% CI 1.50-1.56, 4,200 users)",
        "Use the embedding.",
        "report: data/reports/r1/report.md",
    ]
    plain = EvaluateResult("r2", 3, 10, {"embedding": {"silhouette_cosine": 0.1}})
    assert plain.closing_lines() == [
        "\nheadline (k=3): silhouette 0.100 (cosine)",
        "report: None",
    ]


def test_session_profiles_rate_each_session_not_its_user(spark: SparkSession) -> None:
    # u1 bought in session s1 only: its other session s2 is not a converting member.
    ts = datetime(2024, 3, 1)
    assignments = spark.createDataFrame(
        [("s1", "u1", 0, 0.1), ("s2", "u1", 1, 0.2), ("s3", "u2", 1, 0.3)],
        "id string, user_id string, cluster_id int, distance double",
    )
    sequences = spark.createDataFrame(
        [(s, [(ts, "view", "i1", "A", "x", 1.0)]) for s in ("s1", "s2", "s3")],
        f"id string, events array<{EVENT}>",
    )
    sessions = spark.createDataFrame(
        [("s1", "u1", 60.0, 4, 1, 1), ("s2", "u1", 0.0, 1, 0, 0), ("s3", "u2", 20.0, 2, 0, 1)],
        "session_id string, user_id string, duration_s double, n_events long, "
        "n_purchases long, n_add_to_cart long",
    )
    rows = {
        r["cluster_id"]: r
        for r in cluster_profiles(assignments, sequences, sessions, unit="session").collect()
    }
    assert (rows[0]["conversion_rate"], rows[1]["conversion_rate"]) == (1.0, 0.0)
    assert rows[1]["cart_rate"] == 0.5
    assert rows[1]["mean_events_per_session"] == 1.5
    assert rows[1]["mean_session_duration_s"] == 10.0


@pytest.mark.parametrize("init_sample", [20000, 100], ids=["on-the-driver", "on-spark"])
def test_refits_on_the_driver_are_the_cluster_stages_fit(
    spark: SparkSession, init_sample: int
) -> None:
    """Rows that fit the start sample are refitted on the driver (evaluate's baselines and
    stability); the partition is the one the cluster stage's K-Means makes on Spark."""
    from pyspark.ml.functions import array_to_vector
    from sklearn.metrics import adjusted_rand_score

    from jobs.clustering.kmeans import FEATURES, SampledStartKMeans, fit_on_driver
    from jobs.core.config import ClusterConfig
    from jobs.evaluation.stability import segment_jaccard, stability_metrics

    rng = np.random.default_rng(4)
    truth = np.arange(400) % 4
    points = rng.normal(size=(4, 12))[truth] + rng.normal(scale=0.3, size=(400, 12))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    frame = spark.createDataFrame(
        [(f"u{i}", [float(x) for x in p]) for i, p in enumerate(points)],
        "id string, embedding array<double>",
    )
    config = ClusterConfig(k=4, init_sample=init_sample)
    model = SampledStartKMeans(k=4, config=ClusterConfig(k=4)).fit(
        frame.withColumn(FEATURES, array_to_vector("embedding"))
    )
    run = model.transform(frame.withColumn(FEATURES, array_to_vector("embedding")))
    by_id = {r["id"]: r["cluster_id"] for r in run.select("id", "cluster_id").collect()}
    on_spark = np.array([by_id[f"u{i}"] for i in range(400)])
    assert adjusted_rand_score(truth, on_spark) == 1.0
    if init_sample >= 400:
        labels, costs = fit_on_driver(points, k=4, config=config)
        assert adjusted_rand_score(on_spark, labels) == 1.0 and len(costs) == config.n_init
        # Blobs this far apart come out the same from any fit.  Overlapping ones, where
        # another seed settles elsewhere, tell the stage's fit from any other.
        blurred = rng.normal(size=(4, 12))[truth] + rng.normal(scale=1.5, size=(400, 12))
        blurred /= np.linalg.norm(blurred, axis=1, keepdims=True)
        features = spark.createDataFrame(
            [(f"u{i}", [float(x) for x in p]) for i, p in enumerate(blurred)],
            "id string, embedding array<double>",
        ).withColumn(FEATURES, array_to_vector("embedding"))
        stage = SampledStartKMeans(k=4, config=config)
        assigned = stage.fit(features).transform(features).select("id", "cluster_id").collect()
        by_id = {r["id"]: r["cluster_id"] for r in assigned}
        stage_labels = np.array([by_id[f"u{i}"] for i in range(400)])
        labels, costs = fit_on_driver(blurred, k=4, config=config)
        assert stage.last_start is not None
        assert costs == pytest.approx(list(stage.last_start.restart_costs), rel=1e-9)
        assert adjusted_rand_score(stage_labels, labels) == 1.0
        other = dataclasses.replace(config, seed=config.seed + 999)
        other_labels, _ = fit_on_driver(blurred, k=4, config=other)
        assert adjusted_rand_score(stage_labels, other_labels) < 0.99  # the data can tell
    else:
        with pytest.raises(ValueError, match=r"cluster\.init_sample=100"):
            fit_on_driver(points, k=4, config=config)
    rows = run.select("id", "embedding", "cluster_id")
    stable = stability_metrics(rows, k=4, cluster=config, seeds=[config.seed, config.seed + 1])
    assert stable == {"stability_ari_mean": 1.0, "stability_ari_sd": 0.0, "stability_nmi_mean": 1.0}
    jaccard = segment_jaccard(rows, k=4, cluster=config, bootstraps=2, seed=5)
    assert sorted(jaccard) == [0, 1, 2, 3] and min(jaccard.values()) == 1.0
