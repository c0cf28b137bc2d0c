"""Sessionization rules on inline rows (jobs.sequences: sessions, bot flags, user sequences)."""

from __future__ import annotations

import dataclasses
import random
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from jobs.core.config import BotConfig, SessionizeConfig
from jobs.core.tables import EVENTS, contract_of
from jobs.sequences.bots import apply_bot_flags, user_bot_flags
from jobs.sequences.sessionization import (
    assign_sessions,
    rule_version,
    session_keys,
    sessionize,
    summarise_sessions,
    summarise_unflagged,
)
from jobs.sequences.user_sequences import build_user_sequences, ordered_sum
from jobs.sessionize import SessionizeCounts
from jobs.sources.columns import (
    ELEMENT,
    ORDER_VALUE,
    POSITION,
    RAW,
    REASON,
    SOURCE_FILE,
    SOURCE_ORDER,
)
from jobs.sources.dedup import kept_events, label_duplicates, source_order
from jobs.sources.outputs import to_events

T0 = datetime(2024, 3, 1, 10, 0, 0)
DEFAULT = SessionizeConfig()


def events(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    """Rows of (user, timestamp, event_type[, item, category, brand, price]) -> ``events``,
    in the order of the list in one source file."""
    full = []
    for i, row in enumerate(rows):
        user, ts, kind, *rest = row
        item, category, brand, price = (list(rest) + [None] * 4)[:4]
        full.append(
            (
                f"e{i:05d}",
                user,
                ts,
                kind,
                item,
                category,
                brand,
                price,
                None,
                None,
                "file:/raw/events.jsonl",
                i * 65536,
                ts.date() if ts else None,
                "test-run",
            )
        )
    return spark.createDataFrame(full, contract_of(EVENTS).schema)


def spans(sessions: DataFrame) -> DataFrame:
    return sessions.select("user_id", "session_start", "session_end", "n_events")


def expected_spans(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(
        rows, "user_id string, session_start timestamp, session_end timestamp, n_events long"
    )


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def test_gap_exactly_at_threshold_continues_and_one_second_over_splits(
    spark: SparkSession,
) -> None:
    rows = [
        ("u1", at(0), "view"),
        ("u1", at(30), "view"),  # gap == 30 min: same session
        ("u1", at(60, 1), "view"),  # gap 30 min 1 s: new session
    ]
    got = spans(events(spark, rows).transform(sessionize, config=DEFAULT))
    assertDataFrameEqual(
        got, expected_spans(spark, [("u1", at(0), at(30), 1 + 1), ("u1", at(60, 1), at(60, 1), 1)])
    )


def test_midnight_split_off_and_on_across_a_time_zone(spark: SparkSession) -> None:
    # 04:50 and 05:10 UTC on 2024-03-02 are 23:50 and 00:10 in New York (EST, UTC-5).
    late, early = datetime(2024, 3, 2, 4, 50), datetime(2024, 3, 2, 5, 10)
    df = events(spark, [("u1", late, "view"), ("u1", early, "view")])

    off = df.transform(sessionize, config=DEFAULT)
    assertDataFrameEqual(spans(off), expected_spans(spark, [("u1", late, early, 2)]))

    utc_midnight = dataclasses.replace(DEFAULT, split_at_midnight=True, timezone="UTC")
    no_utc_crossing = df.transform(sessionize, config=utc_midnight)
    assertDataFrameEqual(spans(no_utc_crossing), expected_spans(spark, [("u1", late, early, 2)]))

    new_york = dataclasses.replace(DEFAULT, split_at_midnight=True, timezone="America/New_York")
    split = df.transform(sessionize, config=new_york)
    assertDataFrameEqual(
        spans(split), expected_spans(spark, [("u1", late, late, 1), ("u1", early, early, 1)])
    )
    # session_date is the local date of the session start.
    dates = sorted(r["session_date"].isoformat() for r in split.collect())
    assert dates == ["2024-03-01", "2024-03-02"]


def test_long_session_is_split_into_max_duration_windows(spark: SparkSession) -> None:
    rows = [("u1", at(10 * i), "view") for i in range(16)]  # every 10 min for 150 min
    config = dataclasses.replace(DEFAULT, max_session_duration_s=3600)
    got = spans(events(spark, rows).transform(sessionize, config=config))
    assertDataFrameEqual(
        got,
        expected_spans(
            spark,
            [("u1", at(0), at(50), 6), ("u1", at(60), at(110), 6), ("u1", at(120), at(150), 4)],
        ),
    )


def _as_normalised(df: DataFrame) -> DataFrame:
    """``events`` rows as valid normalised rows (what deduplication labels)."""
    return df.select(
        F.lit(None).cast("string").alias(RAW),
        F.col("source_file").alias(SOURCE_FILE),
        F.col("source_order").alias(POSITION),
        F.lit(0).alias(ELEMENT),
        F.lit(None).cast("long").alias(ORDER_VALUE),
        *[c for c in df.columns if c not in ("source_file", "source_order", "event_date")],
        F.lit(None).cast("string").alias(REASON),
    ).drop("ingest_run_id")


def test_duplicates_are_removed_before_sessionizing(spark: SparkSession) -> None:
    base = events(
        spark, [("u1", at(0), "view", "i1"), ("u1", at(1), "purchase", "i1", "c", "b", 9.5)]
    )
    later = F.col("source_order") + 10
    same_id_twice = base.union(base.limit(1).withColumn("source_order", later))
    # The same content under another source id is another event (README: a field differs).
    same_content_new_id = base.union(
        base.limit(1).withColumn("event_id", F.lit("other-id")).withColumn("source_order", later)
    )
    for noisy, n_events in ((same_id_twice, 2), (same_content_new_id, 3)):
        cleaned = kept_events(label_duplicates(_as_normalised(noisy)))
        cleaned = cleaned.withColumn(SOURCE_ORDER, source_order())
        sessions = cleaned.transform(to_events, run_id="r").transform(sessionize, config=DEFAULT)
        row = sessions.collect()
        assert len(row) == 1
        assert (row[0]["n_events"], row[0]["n_purchases"], row[0]["revenue"]) == (n_events, 1, 9.5)
    collapsed = kept_events(label_duplicates(_as_normalised(same_content_new_id), collapse=True))
    assert collapsed.count() == 2


def test_out_of_order_input_gives_the_same_sessions(spark: SparkSession) -> None:
    rows = [("u1", at(m), "view", f"i{m}") for m in (0, 5, 50, 55, 120)] + [
        ("u2", at(m), "view", f"j{m}") for m in (1, 2, 3)
    ]
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    # Event ids follow list position, so shuffling also changes which id each event has;
    # the sessions must not depend on either.
    ordered = events(spark, rows).transform(sessionize, config=DEFAULT)
    scrambled = events(spark, shuffled).transform(sessionize, config=DEFAULT).repartition(3)
    assertDataFrameEqual(scrambled, ordered)
    first = ordered.where("user_id = 'u1'").orderBy("session_start").first()
    assert first is not None
    assert [e["item_id"] for e in first["events"]] == ["i0", "i5"]


def test_user_with_a_single_event(spark: SparkSession) -> None:
    sessions = events(spark, [("solo", at(3), "view", "i1", "c1", "b1", 5.0)]).transform(
        sessionize, config=DEFAULT
    )
    row = sessions.collect()[0]
    assert (row["n_events"], row["duration_s"], row["is_bot"]) == (1, 0.0, False)
    assert row["session_start"] == row["session_end"] == at(3)
    assert [tuple(e) for e in row["events"]] == [(at(3), "view", "i1", "c1", "b1", 5.0)]


def test_bot_users_are_flagged_on_every_row(spark: SparkSession) -> None:
    bot = [("bot", at(seconds=s), "view") for s in range(0, 100)]  # 100 events in 99 s
    bot += [("bot", at(300), "view")]  # a later, slow session of the same user
    human = [("human", at(m), "view") for m in range(0, 25)]  # one event a minute
    sessions = events(spark, bot + human).transform(sessionize, config=DEFAULT)
    flags = {(r["user_id"], r["n_events"]): r["is_bot"] for r in sessions.collect()}
    assert flags == {("bot", 100): True, ("bot", 1): True, ("human", 25): False}

    daily_cap = dataclasses.replace(
        DEFAULT, bot=BotConfig(max_events_per_minute=1000.0, max_events_per_day=20)
    )
    by_day = events(spark, human).transform(sessionize, config=daily_cap).collect()
    assert by_day[0]["is_bot"] is True

    disabled = dataclasses.replace(DEFAULT, bot=BotConfig(enabled=False))
    assert not any(
        r["is_bot"] for r in events(spark, bot).transform(sessionize, config=disabled).collect()
    )

    users = build_user_sequences(sessions, config=DEFAULT)
    assert {r["user_id"]: r["is_bot"] for r in users.collect()} == {"bot": True, "human": False}


def test_session_id_is_stable_across_runs_and_tied_to_the_rules(spark: SparkSession) -> None:
    rows = [("u1", at(m), "view") for m in (0, 10, 100)] + [("u2", at(5), "view")]
    first = events(spark, rows).transform(sessionize, config=DEFAULT).select("session_id")
    second = (
        events(spark, list(reversed(rows)))
        .transform(sessionize, config=DEFAULT)
        .select("session_id")
    )
    assertDataFrameEqual(first, second)
    assert first.distinct().count() == 3
    other_rules = dataclasses.replace(DEFAULT, inactivity_gap_s=900)
    assert rule_version(other_rules) != rule_version(DEFAULT)
    changed = events(spark, rows).transform(sessionize, config=other_rules).select("session_id")
    assert not {r[0] for r in changed.collect()} & {r[0] for r in first.collect()}


def test_events_are_ordered_and_truncated_but_counts_keep_full_length(spark: SparkSession) -> None:
    rows = [("u1", at(seconds=10 * i), "view", f"i{i:02d}") for i in range(12)]
    rows.append(("u1", at(seconds=125), "purchase", "i99", "c", "b", 20.0))
    config = dataclasses.replace(DEFAULT, max_events=5)
    session = events(spark, rows).transform(sessionize, config=config).collect()[0]
    assert session["n_events"] == 13 and session["n_views"] == 12 and session["n_purchases"] == 1
    assert session["revenue"] == 20.0
    # The last five events by time, oldest first.
    assert [e["item_id"] for e in session["events"]] == ["i08", "i09", "i10", "i11", "i99"]
    assert session["session_start"] == at(0) and session["session_end"] == at(seconds=125)


def test_user_sequences_keep_session_boundaries_and_the_last_events(spark: SparkSession) -> None:
    rows = [("u1", at(m), "view", f"a{m}") for m in (0, 1, 2)]  # session 1
    rows += [("u1", at(m), "add_to_cart", f"b{m}") for m in (100, 101)]  # session 2
    rows += [("u1", at(200), "purchase", "c", "cat", "br", 3.0)]  # session 3
    config = dataclasses.replace(DEFAULT, max_events=4)
    sessions = events(spark, rows).transform(sessionize, config=config)
    users = build_user_sequences(sessions, config=config).collect()
    assert len(users) == 1
    user = users[0]
    assert (user["n_sessions"], user["n_events"], user["n_add_to_cart"], user["revenue"]) == (
        3,
        6,
        2,
        3.0,
    )
    assert (user["first_seen"], user["last_seen"]) == (at(0), at(200))
    tail = user["events"]
    assert [e["item_id"] for e in tail] == ["a2", "b100", "b101", "c"]
    session_of = {r["session_start"]: r["session_id"] for r in sessions.collect()}
    assert [e["session_id"] for e in tail] == [
        session_of[at(0)],
        session_of[at(100)],
        session_of[at(100)],
        session_of[at(200)],
    ]


def test_assign_sessions_keeps_one_row_per_event(spark: SparkSession) -> None:
    # Every 7 minutes for 200 minutes, a 45-minute pause, then every 7 minutes again: two
    # sessions, each row stamped with its own session's first event.
    minutes = [*range(0, 200, 7), *range(241, 300, 7)]
    rows = [("u1", at(m), "view") for m in minutes]
    assigned = events(spark, rows).transform(assign_sessions, config=DEFAULT)
    assert assigned.count() == len(rows)
    per_session = assigned.groupBy("session_id").agg(
        F.min("event_ts").alias("start"),
        F.count(F.lit(1)).alias("n"),
        F.collect_set("session_start").alias("s"),
    )
    got = sorted((r["start"], r["n"], r["s"]) for r in per_session.collect())
    assert got == [(at(0), 29, [at(0)]), (at(241), 9, [at(241)])]


@pytest.mark.parametrize("bad", [{"inactivity_gap_s": 0}, {"max_session_duration_s": -1}])
def test_invalid_rules_are_rejected(spark: SparkSession, bad: dict) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        events(spark, [("u", at(0), "view")]).transform(
            assign_sessions, config=dataclasses.replace(DEFAULT, **bad)
        )


def test_counts_summary_reads_as_one_line_per_mode() -> None:
    full = SessionizeCounts(events_in=12_345, sessions=1_234, users=100, bot_users=2)
    assert (
        full.summary()
        == "12,345 events -> 1,234 sessions, 100 user sequences (2 bot users flagged)"
    )
    idle = SessionizeCounts(0, 0, 0, 0, mode="incremental")
    assert idle.summary() == "incremental: no new ingest runs, nothing to do"
    daily = SessionizeCounts(
        2_000, 300, 40, 1, mode="incremental", window_start=date(2024, 3, 2), partitions_rewritten=3
    )
    assert daily.summary() == (
        "incremental from 2024-03-02: 2,000 events -> 300 sessions in 3 session_date "
        "partitions, 40 user sequences rebuilt"
    )


def test_user_bot_flags_agree_with_the_row_flags(spark: SparkSession) -> None:
    bot = [("bot", at(seconds=s), "view") for s in range(0, 100)]
    bot += [("bot", at(300), "view")]
    human = [("human", at(m), "view") for m in range(0, 25)]
    keyed = events(spark, bot + human).transform(session_keys, config=DEFAULT)
    flagged = keyed.transform(summarise_sessions, config=DEFAULT)
    unflagged = keyed.transform(summarise_unflagged, config=DEFAULT)
    assert "is_bot" not in unflagged.columns
    flags = user_bot_flags(unflagged, config=DEFAULT)
    assert {r["user_id"]: r["is_bot"] for r in flags.collect()} == {"bot": True, "human": False}
    reapplied = apply_bot_flags(unflagged, flags=flags)
    assert reapplied.columns == flagged.columns
    assertDataFrameEqual(reapplied, flagged)


def _reference_starts(stamps: list[datetime], gap_s: int, max_s: int, zone: str) -> list[datetime]:
    """Each event's session start by the rules, in plain Python (midnight splits on, in
    ``zone``): a gap over ``gap_s`` or a new local date opens a run; a run is split every
    ``max_s`` seconds from its first event; a session starts at its first event.  ``stamps``
    are naive UTC."""
    starts: list[datetime] = []
    run_start = window = None

    def local(ts: datetime) -> date:
        return ts.replace(tzinfo=timezone.utc).astimezone(ZoneInfo(zone)).date()

    for i, ts in enumerate(stamps):
        prev = stamps[i - 1] if i else None
        if prev is None or (ts - prev).total_seconds() > gap_s or local(ts) != local(prev):
            run_start, window, start = ts, 0, ts
        else:
            assert run_start is not None
            now = int((ts - run_start).total_seconds() // max_s)
            start = ts if now != window else starts[-1]
            window = now
        starts.append(start)
    return starts


@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_per_event_and_per_session_paths_agree_with_the_rules(
    spark: SparkSession, zone: str
) -> None:
    # Random steps (ties, also at a user's first events; short gaps, gaps over the threshold,
    # runs longer than the maximum duration, midnight crossings): assign_sessions (one row per
    # event) and sessionize (one row per session) must give the sessions a plain reading of the
    # rules gives.
    config = dataclasses.replace(
        DEFAULT,
        inactivity_gap_s=1800,
        max_session_duration_s=3600,
        split_at_midnight=True,
        timezone=zone,
    )
    rng = random.Random(11)
    rows, expected = [], {}
    for user in ("u1", "u2", "u3"):
        ts = datetime(2024, 3, 1, 21, 0)
        stamps = [ts, ts]  # the first two events tie
        for _ in range(120):
            ts += timedelta(seconds=rng.choice([0, 0, 30, 300, 900, 1800, 1801, 5000]))
            stamps.append(ts)
        rows += [(user, s, "view") for s in stamps]
        for start in _reference_starts(stamps, 1800, 3600, zone):
            expected[(user, start)] = expected.get((user, start), 0) + 1
    df = events(spark, rows)

    sessions = df.transform(sessionize, config=config)
    got = {(r["user_id"], r["session_start"]): r["n_events"] for r in sessions.collect()}
    assert got == expected
    assigned = df.transform(assign_sessions, config=config)
    per_event = assigned.groupBy("user_id", "session_id", "session_start").agg(
        F.count(F.lit(1)).alias("n_events")
    )
    assertDataFrameEqual(
        per_event, sessions.select("user_id", "session_id", "session_start", "n_events")
    )
    assert len(expected) > 60  # the data really holds many sessions of every kind


def test_ordered_sum_adds_from_the_first_element_to_the_last(spark: SparkSession) -> None:
    big = 1e16  # doubles near 1e16 are 2 apart: 1 + 1 + 1e16 != 1e16 + 1 + 1
    row = (
        spark.range(1)
        .select(
            ordered_sum(F.array(*[F.lit(v) for v in (1.0, 1.0, big)])).alias("up"),
            ordered_sum(F.array(*[F.lit(v) for v in (big, 1.0, 1.0)])).alias("down"),
            ordered_sum(F.array(F.lit(None).cast("double"), F.lit(2.5))).alias("nulls"),
            ordered_sum(F.array().cast("array<double>")).alias("empty"),
        )
        .first()
    )
    assert row is not None
    assert (row["up"], row["down"], row["nulls"], row["empty"]) == (big + 2, big, 2.5, 0.0)


def test_revenue_adds_prices_in_event_order_whatever_the_partitioning(
    spark: SparkSession,
) -> None:
    # Doubles near 1e16 are 2 apart: 1 + 1 + 1e16 is 1e16 + 2 in that order but 1e16 in the
    # other.  The stored revenue must not depend on the order a plan delivers rows or sessions.
    big = 1e16
    one_session = [
        ("u1", at(0), "purchase", "i", None, None, 1.0),
        ("u1", at(1), "purchase", "i", None, None, 1.0),
        ("u1", at(2), "purchase", "i", None, None, big),
        ("u1", at(3), "view", "i", None, None, 5.0),  # a view's price is not revenue
    ]
    # 20 sessions buying for 1.0 each, then one for 1e16, all on one day.
    many_sessions = [("u2", at(35 * i), "purchase", "i", None, None, 1.0) for i in range(20)]
    many_sessions.append(("u2", at(35 * 20), "purchase", "i", None, None, big))
    rows = one_session + many_sessions
    for layout in (lambda df: df.repartition(1), lambda df: df.repartition(5, "event_id")):
        for order in (list(rows), list(reversed(rows))):
            sessions = layout(events(spark, order)).transform(sessionize, config=DEFAULT)
            revenue = {r["user_id"]: r["revenue"] for r in sessions.where("n_events > 1").collect()}
            assert revenue == {"u1": big + 2}
            # Sessions handed over newest first, in one partition: still added oldest first.
            newest_first = sessions.orderBy(F.desc("session_start")).coalesce(1)
            for given in (sessions, newest_first):
                users = build_user_sequences(given, config=DEFAULT)
                assert {r["user_id"]: r["revenue"] for r in users.collect()} == {
                    "u1": big + 2,
                    "u2": big + 20,
                }
    assert big + 2 != (big + 1) + 1  # the order really matters for these prices
