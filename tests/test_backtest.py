"""The leakage-free backtest (README, "Evaluation"): protocol splits, the methods fitted on
history only, future metrics with hand-computed values, and known answers."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from sklearn.metrics import roc_auc_score

from jobs.clustering.kmeans import FEATURES
from jobs.core.config import AppConfig, EvaluateConfig, SessionizeConfig
from jobs.evaluation.backtest import EmbeddingSource, run_backtest
from jobs.evaluation.baselines import tfidf_features, tfidf_matrix, tfidf_vocabulary
from jobs.evaluation.future import (
    FutureScores,
    _score_on_driver,
    future_metrics,
    grouped_auc,
    score_future,
)
from jobs.evaluation.methods import (
    ENCODED,
    _kmeans_segments,
    aggregate_features,
    aggregate_matrix,
    aggregate_segments,
    encoded_histories,
    known_vectors,
    tfidf_segments,
)
from jobs.evaluation.protocol import (
    choose_protocol,
    count_scored,
    future_cutoff,
    future_targets,
    history_units,
    split_events,
)
from jobs.evaluation.stability import best_jaccard, jaccard_label

EVENT = (
    "struct<ts:timestamp, event_type:string, item_id:string, category:string, "
    "brand:string, price:double>"
)
SESSION = (
    f"session_id string, user_id string, session_start timestamp, session_end timestamp, "
    f"duration_s double, n_events long, n_views long, n_add_to_cart long, n_purchases long, "
    f"revenue double, is_bot boolean, events array<{EVENT}>"
)
T0 = datetime(2024, 3, 1, 10, 0, 0)


def ev(minute: float, item: str, category: str | None = "c", kind: str = "view") -> tuple:
    return (T0 + timedelta(minutes=minute), kind, item, category, None, 10.0)


def sessions_frame(spark: SparkSession, rows: list[tuple[str, str, list[tuple]]]) -> DataFrame:
    """Sessions (session_id, user_id, events) with the other columns filled in."""
    full = []
    for session_id, user_id, events in rows:
        start, end = events[0][0], events[-1][0]
        n = len(events)
        buys = sum(e[1] == "purchase" for e in events)
        full.append(
            (
                session_id,
                user_id,
                start,
                end,
                (end - start).total_seconds(),
                n,
                n,
                0,
                buys,
                0.0,
                False,
                events,
            )
        )
    return spark.createDataFrame(full, SESSION)


# ------------------------------------------------------------------------ protocol


def test_future_split_puts_every_event_on_one_side_of_the_cutoff(spark: SparkSession) -> None:
    sessions = sessions_frame(
        spark,
        [
            ("s1", "u1", [ev(0, "a"), ev(10, "b")]),
            ("s2", "u1", [ev(100, "c"), ev(130, "d")]),  # straddles the cutoff at 120
            ("s3", "u2", [ev(200, "e")]),  # future only: u2 is not scored
        ],
    )
    config = EvaluateConfig(holdout_days=80 / 1440)  # last event (200) - 80 minutes = 120
    cutoff = future_cutoff(sessions, config)
    # An aware UTC instant (T0 is naive: Spark read it in this driver's zone, UTC in the tests)
    assert cutoff is not None and cutoff.tzinfo is timezone.utc
    assert cutoff == (T0 + timedelta(minutes=120)).replace(tzinfo=timezone.utc)
    split = split_events(sessions, protocol="future", unit="user", config=config, cutoff=cutoff)
    got = {
        r["session_id"]: ([e["item_id"] for e in r["history"]], [e["item_id"] for e in r["future"]])
        for r in split.collect()
    }
    assert got == {"s1": (["a", "b"], []), "s2": (["c"], ["d"]), "s3": ([], ["e"])}
    with pytest.raises(ValueError, match="has no time zone"):  # a naive datetime is no instant
        split_events(sessions, protocol="future", unit="user", config=config, cutoff=T0)
    history = history_units(split, unit="user", sessionize=SessionizeConfig())
    assert [(r["id"], [e["item_id"] for e in r["events"]]) for r in history.collect()] == [
        ("u1", ["a", "b", "c"])
    ]
    targets = {
        r["id"]: sorted(r["future_items"]) for r in future_targets(split, unit="user").collect()
    }
    assert targets == {"u1": ["d"], "u2": ["e"]}


def test_fraction_cutoff_leaves_that_share_of_events_after_it(spark: SparkSession) -> None:
    sessions = sessions_frame(spark, [(f"s{i}", f"u{i}", [ev(i, f"i{i}")]) for i in range(10)])
    cutoff = future_cutoff(sessions, EvaluateConfig(holdout_fraction=0.2))
    # minutes 8 and 9 (2 of 10 events) are after the 0.8 quantile (minute 7)
    assert cutoff == (T0 + timedelta(minutes=7, microseconds=1)).replace(tzinfo=timezone.utc)


def test_session_suffix_split(spark: SparkSession) -> None:
    sessions = sessions_frame(
        spark,
        [
            ("s1", "u1", [ev(i, f"i{i}") for i in range(5)]),  # 5 events: suffix floor(2.5) = 2
            ("s2", "u2", [ev(i, f"j{i}") for i in range(3)]),  # shorter than 4: history only
        ],
    )
    split = split_events(
        sessions, protocol="session_suffix", unit="session", config=EvaluateConfig()
    )
    got = {
        r["session_id"]: ([e["item_id"] for e in r["history"]], [e["item_id"] for e in r["future"]])
        for r in split.collect()
    }
    assert got == {"s1": (["i0", "i1", "i2"], ["i3", "i4"]), "s2": (["j0", "j1", "j2"], [])}


def test_session_suffix_for_users_cuts_once_before_anything_the_user_did_later(
    spark: SparkSession,
) -> None:
    sessions = sessions_frame(
        spark,
        [
            # u1: the last session long enough to split is s2; s1 before it is history whole.
            ("s1", "u1", [ev(i, f"a{i}") for i in range(4)]),
            ("s2", "u1", [ev(100 + i, f"b{i}") for i in range(4)]),
            # u2: s4 comes after the suffix of s3 (too short to split): neither side.
            ("s3", "u2", [ev(i, f"c{i}") for i in range(4)]),
            ("s4", "u2", [ev(100 + i, f"d{i}") for i in range(2)]),
            # u3: nothing to split, all history, not scored.
            ("s5", "u3", [ev(i, f"e{i}") for i in range(3)]),
        ],
    )
    config = EvaluateConfig()
    split = split_events(sessions, protocol="session_suffix", unit="user", config=config)
    got = {
        r["session_id"]: ([e["item_id"] for e in r["history"]], [e["item_id"] for e in r["future"]])
        for r in split.collect()
    }
    assert got == {
        "s1": (["a0", "a1", "a2", "a3"], []),
        "s2": (["b0", "b1"], ["b2", "b3"]),
        "s3": (["c0", "c1"], ["c2", "c3"]),
        "s4": ([], []),
        "s5": (["e0", "e1", "e2"], []),
    }
    history = history_units(split, unit="user", sessionize=SessionizeConfig())
    assert {r["id"]: [e["item_id"] for e in r["events"]] for r in history.collect()} == {
        "u1": ["a0", "a1", "a2", "a3", "b0", "b1"],
        "u2": ["c0", "c1"],
        "u3": ["e0", "e1", "e2"],
    }
    assert count_scored(split, unit="user") == 2


def test_auto_protocol_says_why_when_too_few_users(spark: SparkSession) -> None:
    # 3 users with history and future; sessions too short for session_suffix.
    rows = [
        (f"s{u}{d}", f"u{u}", [ev(d * 1440 + u, f"i{u}{d}")]) for u in range(3) for d in range(2)
    ] + [(f"t{u}", f"v{u}", [ev(u, "x")]) for u in range(10)]
    sessions = sessions_frame(spark, rows)
    choice = choose_protocol(sessions, unit="user", config=EvaluateConfig(holdout_days=0.5))
    assert choice.protocol is None
    assert choice.reason == (
        "not enough users for protocol future: 3 found, 30 needed; "
        "not enough users for protocol session_suffix: 0 found, 30 needed"
    )
    relaxed = EvaluateConfig(holdout_days=0.5, min_protocol_users=3)
    chosen = choose_protocol(sessions, unit="user", config=relaxed)
    assert (chosen.protocol, chosen.scored_units) == ("future", 3)


# ------------------------------------------------------------------------ scoring


def test_grouped_auc_matches_scikit_learn() -> None:
    table = [(0.5, 2, 1), (0.1, 1, 3), (0.9, 0, 2)]
    scores, labels = [], []
    for score, pos, neg in table:
        scores += [score] * (pos + neg)
        labels += [1] * pos + [0] * neg
    assert grouped_auc(table) == pytest.approx(roc_auc_score(labels, scores))
    assert grouped_auc([(0.3, 0, 4)]) is None


def test_best_jaccard_and_clusterboot_labels() -> None:
    table = np.array([[8.0, 2.0], [0.0, 10.0], [0.0, 0.0]])
    # row 0: 8 / (10 + 8 - 8) = 0.8; row 1: 10 / (10 + 12 - 10) = 10/12; row 2: no points
    best = best_jaccard(table)
    assert best[:2] == pytest.approx([0.8, 10 / 12]) and np.isnan(best[2])
    assert [jaccard_label(v) for v in (0.8, 0.6, 0.4, None)] == [
        "stable",
        "doubtful",
        "dissolved",
        "-",
    ]


def test_future_scores_hand_computed(spark: SparkSession) -> None:
    # Segment 0 (u1, u2) viewed A three times and B once; segment 1 (u3) viewed C five times.
    history = spark.createDataFrame(
        [
            ("u1", [ev(0, "A"), ev(1, "A"), ev(2, "B", kind="purchase")]),
            ("u2", [ev(0, "A")]),
            ("u3", [ev(0, "C")] * 5),
        ],
        f"id string, events array<{EVENT}>",
    )
    targets = spark.createDataFrame(
        [
            # A null entry is no item to predict: u1 has two future items.
            ("u1", ["B", "Z", None], ["c"], True),
            ("u2", ["C"], ["c"], False),
            ("u3", ["C"], ["c"], True),
        ],
        "id string, future_items array<string>, future_categories array<string>, "
        "future_purchase boolean",
    )
    segments = spark.createDataFrame(
        [("m", "u1", 0), ("m", "u2", 0), ("m", "u3", 1)]
        + [("global_baseline", u, 0) for u in ("u1", "u2", "u3")],
        "method string, id string, segment int",
    )
    scores = score_future(segments, history, targets, buckets=1)
    # The driver's path (small data) gives the same sums and tables.
    local = score_future(segments, history, targets, buckets=1, local_rows=10)
    _assert_same_scores(local, scores)
    n, hits, ndcg, _, _ = scores.per_bucket["m"][0]
    # top 20 of segment 0: A (3), B (1); of segment 1: C.  u1: B at rank 2 -> hit, DCG 1/log2(3),
    # ideal DCG over 2 items 1 + 1/log2(3); u2: C not in segment 0 -> miss; u3: C at rank 1.
    assert (n, hits) == (3, 2)
    assert ndcg == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)) + 0 + 1)
    # Segment conversion in history: segment 0 = 1/2 (u1 bought), segment 1 = 0.
    assert sorted(scores.auc_tables["m"]) == [(0.0, 1, 0), (0.5, 1, 1)]
    metrics, skipped = future_metrics(scores, resamples=200, seed=1)
    assert metrics["m"]["future_item_hit_rate_at_20"] == pytest.approx(2 / 3)
    # Global ranking: C (5), A (3), B (1): every user's future item is in its top 20.
    assert metrics["global_baseline"]["future_item_hit_rate_at_20"] == 1.0
    assert metrics["m"]["future_item_hit_rate_at_20_lift"] == pytest.approx(2 / 3)
    # AUC of scores (u1: 0.5 buys, u2: 0.5 does not, u3: 0.0 buys): pairs (u1,u2) tie,
    # (u3,u2) loss -> 0.5 / 2
    assert metrics["m"]["future_purchase_auc"] == pytest.approx(0.25)
    assert skipped[("m", "future_category_hit_rate_at_10")].startswith(
        "the history has 1 categories"
    )
    for values in metrics.values():
        assert all(np.isfinite(v) for v in values.values())


def _assert_same_scores(local: FutureScores, spark_side: FutureScores) -> None:
    assert local.history_categories == spark_side.history_categories
    assert sorted(local.per_bucket) == sorted(spark_side.per_bucket)
    for method, table in spark_side.per_bucket.items():
        np.testing.assert_allclose(local.per_bucket[method], table, rtol=1e-12, atol=1e-12)
    assert {m: sorted(t) for m, t in local.auc_tables.items()} == {
        m: sorted(t) for m, t in spark_side.auc_tables.items()
    }


def test_future_scores_on_the_driver_are_sparks(spark: SparkSession) -> None:
    """Random shop with more than 10 categories (the category metric applies), ties in
    popularity, units without future or without history, null categories: both paths agree."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(80):
        for day in range(int(rng.integers(1, 5))):
            events = [
                ev(
                    day * 1440 + u * 3 + i,
                    f"i{int(rng.integers(0, 30))}",
                    category=None if rng.random() < 0.05 else f"c{int(rng.integers(0, 14))}",
                    kind="purchase" if rng.random() < 0.1 else "view",
                )
                for i in range(int(rng.integers(1, 6)))
            ]
            rows.append((f"u{u:02d}-{day}", f"u{u:02d}", events))
    history, targets = _history_and_targets(sessions_frame(spark, rows), EvaluateConfig())
    history, targets = history.cache(), targets.cache()
    ids = [r["id"] for r in history.select("id").collect()]
    segments = spark.createDataFrame(
        [(m, i, int(rng.integers(0, 4))) for m in ("a", "b", "embedding") for i in ids],
        "method string, id string, segment int",
    )
    spark_side = score_future(segments, history, targets, buckets=7)
    assert spark_side.history_categories > 10  # the category branch runs
    _assert_same_scores(
        score_future(segments, history, targets, buckets=7, local_rows=1_000), spark_side
    )
    # More units than the bound: the Spark path, whatever local_rows says.
    assert _score_on_driver(segments, history, targets, buckets=7, at_most=len(ids) - 1) is None
    history.unpersist()
    targets.unpersist()


def test_bootstrap_intervals_cover_the_estimate_and_pair_methods() -> None:
    rng = np.random.default_rng(0)
    buckets = 200
    global_hits = rng.binomial(5, 0.3, buckets).astype(float)
    better = np.minimum(global_hits + rng.binomial(5, 0.3, buckets), 5.0)
    table = lambda hits: np.column_stack(  # noqa: E731
        [np.full(buckets, 5.0), hits, hits / 2, np.zeros(buckets), np.zeros(buckets)]
    )
    scores = FutureScores(
        {"embedding": table(better), "global_baseline": table(global_hits)}, {}, 50
    )
    metrics, _ = future_metrics(scores, resamples=500, seed=3)
    emb = metrics["embedding"]
    assert emb["future_item_hit_rate_at_20_ci_low"] < emb["future_item_hit_rate_at_20"]
    assert emb["future_item_hit_rate_at_20"] < emb["future_item_hit_rate_at_20_ci_high"]
    assert emb["future_item_hit_rate_at_20_lift_ci_low"] > 1.0
    assert emb["future_item_hit_rate_at_20_diff_best_baseline_ci_low"] > 0.0
    assert emb["future_users"] == 1000.0


# ------------------------------------------------------------------------ no leakage


def _history_and_targets(
    sessions: DataFrame, config: EvaluateConfig
) -> tuple[DataFrame, DataFrame]:
    cutoff = future_cutoff(sessions, config)
    split = split_events(sessions, protocol="future", unit="user", config=config, cutoff=cutoff)
    return history_units(split, unit="user", sessionize=SessionizeConfig()), future_targets(
        split, unit="user"
    )


def _shop(spark: SparkSession, *, future_category: str | None = None) -> DataFrame:
    """Three groups of 20 users; each user has 4 history days and one future day."""
    rows = []
    groups = (("electronics.phone", "p"), ("apparel.shoes", "s"), ("kids.toys", "t"))
    for g, (category, prefix) in enumerate(groups):
        for u in range(20):
            user = f"{prefix}{u:02d}"
            for day in range(5):
                item = f"{prefix}-{(u + day * 3) % 20}"
                kind = "purchase" if (u + day) % 4 == 0 else "view"
                cat = future_category if (day == 4 and future_category) else category
                start = day * 1440 + g * 10 + u
                rows.append(
                    (
                        f"{user}-{day}",
                        user,
                        [
                            ev(start, item, cat, kind),
                            ev(start + 1, f"{prefix}-{(u + day) % 20}", cat),
                        ],
                    )
                )
    return sessions_frame(spark, rows)


def test_no_future_event_reaches_a_fitted_artefact(spark: SparkSession) -> None:
    config = EvaluateConfig(holdout_days=1.0)
    original = _shop(spark)
    perturbed = _shop(spark, future_category="garden.tools").withColumn(
        "events",
        F.transform(
            "events",
            lambda e: e.withField(
                "item_id",
                F.when(e["ts"] >= F.lit(T0 + timedelta(days=4)), F.lit("zz")).otherwise(
                    e["item_id"]
                ),
            ),
        ),
    )
    history_a, targets_a = _history_and_targets(original, config)
    history_b, targets_b = _history_and_targets(perturbed, config)
    # Computed once each (every fit below reads them several times); caching changes no row.
    history_a, history_b = history_a.cache(), history_b.cache()
    assert targets_a.exceptAll(targets_b).count() > 0  # the future did change
    assertDataFrameEqual(history_a, history_b)
    # Every method's fit reads history units only (jobs.evaluation.backtest); its artefacts are
    # then the same: the K-Means segments of both TF-IDF baselines (vocabulary, IDF and weights
    # on the driver here; test_the_driver_tfidf_is_mllibs_and_clusters_the_same holds the Spark
    # path to it) and the hand-built one.
    edges = (20.0, 60.0, 200.0, 600.0)
    cluster = AppConfig().cluster
    for fit in (
        lambda h: tfidf_segments(
            h, method="tfidf_baseline", k=3, config=config, cluster=cluster, edges=edges
        ),
        lambda h: tfidf_segments(
            h, method="tfidf_tokens_baseline", k=3, config=config, cluster=cluster, edges=edges
        ),
        lambda h: aggregate_segments(h, k=3, config=config, cluster=cluster),
    ):
        assertDataFrameEqual(fit(history_a), fit(history_b))
    history_a.unpersist()
    history_b.unpersist()


def test_the_tfidf_vocabulary_is_mllibs_in_a_fixed_order(spark: SparkSession) -> None:
    from pyspark.ml.feature import CountVectorizer

    bags = spark.createDataFrame(
        [
            ("1", ["a", "a", "b", "c", "x"]),
            ("2", ["a", "b", "d", "y", "x"]),
            ("3", ["a", "e", "y"]),
            ("4", ["b", "c", "z"]),
            ("5", []),
        ],
        "id string, t array<string>",
    ).repartition(3)
    base = EvaluateConfig(tfidf_min_df=2, tfidf_max_df=0.7, tfidf_vocab_size=100)
    # df: a 3, b 3, c 2, x 2, y 2 (d, e, z 1); at most 0.7 x 5 = 3.5 documents.
    vocabulary = tfidf_vocabulary(bags, column="t", config=base)
    assert vocabulary == ["a", "b", "c", "x", "y"]  # total count (4, 3, 2, 2, 2), then token
    # tfidf_max_df is a share (config loader): 1.0 keeps every token with min_df documents,
    # where CountVectorizer's maxDF=1.0 would mean "in at most one document".
    every = dataclasses.replace(base, tfidf_max_df=1.0)
    assert tfidf_vocabulary(bags, column="t", config=every) == vocabulary
    library = CountVectorizer(inputCol="t", minDF=2.0, maxDF=0.7, vocabSize=100).fit(bags)
    assert sorted(library.vocabulary) == sorted(vocabulary)
    # Capped: the tie among c, x and y at the cut goes by token, on every run.
    capped = dataclasses.replace(base, tfidf_vocab_size=4)
    assert tfidf_vocabulary(bags, column="t", config=capped) == ["a", "b", "c", "x"]
    # The lower bound is a count of documents, the upper one a share of them (0.5 x 5 = 2.5).
    at_most_half = dataclasses.replace(base, tfidf_max_df=0.5)
    assert tfidf_vocabulary(bags, column="t", config=at_most_half) == ["c", "x", "y"]
    assert tfidf_vocabulary(bags, column="t", config=dataclasses.replace(base, tfidf_min_df=3)) == [
        "a",
        "b",
    ]


def test_the_driver_tfidf_is_mllibs_and_clusters_the_same(spark: SparkSession) -> None:
    """Small data is weighted on the driver (tfidf_matrix); its rows must be MLlib's path's,
    including a token in every document (IDF 0) and a row left without weight."""
    bags = {
        "u1": ["a", "a", "a", "b", "b"],
        "u2": ["a", "b", "c"],
        "u3": ["a", "c", "c", "c", "d"],
        "u4": ["a", "x"],  # "a" weighs 0 and "x" is too rare: a zero row
        "u5": ["a", "d", "d", "b"],
        "u6": ["a", "c", "b", "b", "b", "b"],
        "u7": ["a", "d", "c"],
    }
    units = spark.createDataFrame(
        [
            (uid, uid, [ev(i, f"i{i}", category=c) for i, c in enumerate(tokens)])
            for uid, tokens in bags.items()
        ],
        f"id string, user_id string, events array<{EVENT}>",
    )
    config = EvaluateConfig(tfidf_min_df=2, tfidf_max_df=1.0)
    edges = (20.0, 60.0, 200.0, 600.0)
    features = tfidf_features(units, method="tfidf_baseline", config=config, edges=edges)
    spark_rows = {r["id"]: r[FEATURES].toArray() for r in features.collect()}
    ids = sorted(bags)
    driver = tfidf_matrix([bags[i] for i in ids], config=config).toarray()
    expected = np.array([spark_rows[i] for i in ids])
    np.testing.assert_allclose(driver, expected, rtol=0, atol=1e-12)
    # By hand: vocabulary a (9 occurrences), b (8), c (6), d (4); n = 7 documents; df a 7
    # (IDF ln(8/8) = 0), b 4, d 3.  u5 (a, d, d, b): b 1 x ln(8/5), d (1 + ln 2) x ln(8/4), L2.
    b, d = np.log(8 / 5), (1 + np.log(2)) * np.log(2)
    expected_u5 = np.array([0.0, b, 0.0, d]) / np.hypot(b, d)
    np.testing.assert_allclose(driver[ids.index("u5")], expected_u5, rtol=0, atol=1e-12)
    assert not driver[ids.index("u4")].any()
    norms = np.linalg.norm(np.delete(driver, ids.index("u4"), axis=0), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-12)
    cluster = AppConfig().cluster
    assertDataFrameEqual(
        tfidf_segments(
            units, method="tfidf_baseline", k=2, config=config, cluster=cluster, edges=edges
        ),
        _kmeans_segments(features, k=2, cluster=cluster),
    )


def test_the_driver_aggregate_baseline_is_mllibs_scaling_and_clusters_the_same(
    spark: SparkSession,
) -> None:
    """Small data is standardised on the driver (aggregate_matrix): the same figures as
    VectorAssembler + StandardScaler (sample deviation, a constant figure scaled to 0)."""
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    history, _ = _history_and_targets(_shop(spark), EvaluateConfig(holdout_days=1.0))
    history = history.cache()
    config = EvaluateConfig()
    figures = aggregate_features(history, top_categories=config.aggregate_top_categories)
    columns = [c for c in figures.columns if c != "id"]
    assembled = VectorAssembler(inputCols=columns, outputCol="raw").transform(figures)
    scaler = StandardScaler(inputCol="raw", outputCol="scaled", withMean=True, withStd=True)
    by_spark = {
        r["id"]: r["scaled"].toArray()
        for r in scaler.fit(assembled).transform(assembled).select("id", "scaled").collect()
    }
    local = aggregate_matrix(history, config=config, at_most=1_000)
    assert local is not None
    ids, matrix = local
    expected = np.array([by_spark[i] for i in ids.to_pylist()])
    assert matrix.shape == expected.shape and matrix.shape[1] == len(columns)
    np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-9)
    # A figure every unit shares scales to 0 on both paths, also where NumPy's mean of the
    # equal values is an ulp off them (log_revenue here; no searches in this shop).
    for constant in ("log_sessions", "log_revenue", "share_search"):
        assert not matrix[:, columns.index(constant)].any()
    # Too many rows for the bound: the caller takes the Spark path.
    assert aggregate_matrix(history, config=config, at_most=len(by_spark) - 1) is None
    cluster = AppConfig().cluster
    scaled = (
        scaler.fit(assembled).transform(assembled).select("id", F.col("scaled").alias(FEATURES))
    )
    assertDataFrameEqual(
        aggregate_segments(history, k=3, config=config, cluster=cluster),
        _kmeans_segments(scaled, k=3, cluster=cluster),
    )
    history.unpersist()


# ------------------------------------------------------------------------ known answers


def _known_answer(spark: SparkSession, *, informative: bool):  # type: ignore[no-untyped-def]
    """60 users in 3 groups by category; history days 0-3, the future on day 4.  Informative:
    each user's future item comes from their group's 20 items; otherwise from all 60."""
    rng = np.random.default_rng(11)
    groups = (("electronics.smartphone", "p"), ("apparel.shoes", "s"), ("kids.toys", "t"))
    rows = []
    for category, prefix in groups:
        for u in range(20):
            user = f"{prefix}{u:02d}"
            for day in range(4):
                events = [
                    ev(day * 1440 + u + i, f"{prefix}-{rng.integers(20)}", category)
                    for i in range(3)
                ]
                rows.append((f"{user}-{day}", user, events))
            if informative:
                item, cat = f"{prefix}-{rng.integers(20)}", category
            else:
                other = groups[rng.integers(3)]
                item, cat = f"{other[1]}-{rng.integers(20)}", other[0]
            rows.append((f"{user}-4", user, [ev(4 * 1440 + u, item, cat)]))
    return sessions_frame(spark, rows)


@pytest.mark.slow
@pytest.mark.parametrize("informative", [True, False])
def test_known_answers(spark: SparkSession, informative: bool) -> None:
    from udfs.encoder import packaged_minilm_path

    sessions = _known_answer(spark, informative=informative)
    base = AppConfig()
    config = dataclasses.replace(
        base,
        evaluate=dataclasses.replace(base.evaluate, holdout_days=0.5, bootstrap_resamples=1000),
        encoder=dataclasses.replace(base.encoder, batch_size=32),
    )
    known = spark.createDataFrame([], "content_hash string, embedding array<float>")
    units = sessions.select(F.col("user_id").alias("id")).distinct()
    result = run_backtest(
        sessions,
        unit="user",
        units=units,
        k=3,
        config=config,
        embedding=EmbeddingSource(str(packaged_minilm_path()), known),
    )
    assert result.protocol == "future" and result.scored_units == 60
    lifts = {
        m: (
            v["future_item_hit_rate_at_20_lift_ci_low"],
            v["future_item_hit_rate_at_20_lift_ci_high"],
        )
        for m, v in result.metrics.items()
        if m != "global_baseline"
    }
    if informative:
        assert lifts["embedding"][0] > 1.0, lifts
        assert lifts["random_baseline"][0] <= 1.0 <= lifts["random_baseline"][1], lifts
    else:
        for method, (low, high) in lifts.items():
            assert low <= 1.0 <= high, (method, low, high)
    for values in result.metrics.values():
        assert all(np.isfinite(v) for v in values.values())


VECTORS = "content_hash string, embedding array<float>"


def test_known_vectors_keep_one_per_text_earlier_sources_first_then_the_smallest_id(
    spark: SparkSession,
) -> None:
    embeddings = spark.createDataFrame(
        [("u2", "h1", [0.0, 1.0]), ("u1", "h1", [1.0, 0.0]), ("u3", "h2", [0.6, 0.8])],
        f"id string, {VECTORS}",
    )
    history = spark.createDataFrame([("h1", [0.8, 0.6]), ("h3", [0.0, -1.0])], VECTORS)
    expected = [("h1", [1.0, 0.0]), ("h2", [0.6, 0.8]), ("h3", [0.0, -1.0])]
    assertDataFrameEqual(
        known_vectors(embeddings, history), spark.createDataFrame(expected, VECTORS)
    )


@pytest.mark.slow  # encodes histories with the real model twice: about 25 s
def test_a_history_encoded_once_is_reused_by_its_text(spark: SparkSession) -> None:
    # The real packaged model: what history_embeddings stores is what a rerun reads back.
    from udfs.encoder import packaged_minilm_path

    history, _ = _history_and_targets(
        _known_answer(spark, informative=True), EvaluateConfig(holdout_days=0.5)
    )
    # Six users, one task: the model loads in one Python worker.
    history = history.orderBy("id").limit(6).coalesce(1).localCheckpoint()
    encoder = dataclasses.replace(AppConfig().encoder, batch_size=32)
    model = str(packaged_minilm_path())
    nothing = spark.createDataFrame([], VECTORS)
    first = encoded_histories(history, known=nothing, encoder=encoder, model_dir=model)
    first = first.localCheckpoint()
    units = history.count()
    assert first.count() == units and first.where(F.col(ENCODED)).count() == units
    stored = known_vectors(first).localCheckpoint()
    assert stored.count() == first.select("content_hash").distinct().count()
    # A rerun with the stored vectors encodes nothing and gives every unit its text's vector.
    again = encoded_histories(history, known=stored, encoder=encoder, model_dir=model)
    assert again.count() == units and again.where(F.col(ENCODED)).count() == 0
    assertDataFrameEqual(
        again.select("id", "embedding"),
        first.select("id", "content_hash").join(stored, "content_hash").drop("content_hash"),
    )


def test_an_encoder_trained_on_the_lake_puts_a_caveat_on_the_verdict(tmp_path: Path) -> None:
    from jobs.evaluation.backtest import Backtest, encoder_caveat
    from jobs.evaluation.report import verdict

    # The packaged MiniLM (no train_encoder metadata) never saw the lake: no caveat.
    assert encoder_caveat(None) is None and encoder_caveat(str(tmp_path)) is None
    (tmp_path / "metadata.json").write_text(
        json.dumps({"mode": "mlm", "trained_on": {"table": "sessions (delta-rs, lake/sessions)"}})
    )
    caveat = encoder_caveat(str(tmp_path))
    assert caveat is not None and "including the events held out as the future" in caveat
    metrics = {
        "embedding": {
            "future_item_hit_rate_at_20": 0.30,
            "future_item_hit_rate_at_20_diff_best_baseline_ci_low": 0.02,
            "future_item_hit_rate_at_20_diff_best_baseline_ci_high": 0.08,
            "future_users": 200.0,
        },
        "tfidf_baseline": {"future_item_hit_rate_at_20": 0.25},
    }
    plain = verdict(metrics, Backtest("future", "auto"))
    assert plain is not None and plain.startswith("Use the embedding segments")
    warned = verdict(metrics, Backtest("future", "auto", caveat=caveat))
    assert warned == f"{plain} Caveat: {caveat}."
