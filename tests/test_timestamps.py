"""Event times: text that names its zone is absolute, wall-clock text is read in
``ingest.source.timezone``, and daylight-saving gaps and repeats are quarantined or counted
(README: "Bring your own log")."""

from __future__ import annotations

import dataclasses
import json
import logging
from functools import reduce
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import ingest
from jobs.core.config import AppConfig, ConfigError, LakeConfig, load_config
from jobs.core.lake import Lake
from jobs.sources.columns import AMBIGUOUS_TIME, REASON
from jobs.sources.mapping import normalise
from jobs.sources.readers import read_raw
from jobs.sources.timestamps import (
    AMBIGUOUS_RULE,
    PATTERN_GUIDE,
    _pattern_problem,
    check_timestamp_format,
)

from .conftest import REPO

GAP = "nonexistent local time in Europe/Berlin (DST gap)"


def config_for(tmp_path: Path, path: Path, **source: object) -> AppConfig:
    base = AppConfig()
    spec = dataclasses.replace(base.ingest.source.inputs[0], paths=(str(path),), format="jsonl")
    src = dataclasses.replace(base.ingest.source, inputs=(spec,), **source)  # type: ignore[arg-type]
    return dataclasses.replace(
        base,
        ingest=dataclasses.replace(base.ingest, source=src),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
    )


def parsed_times(
    spark: SparkSession, folder: Path, values: list[object], **source: object
) -> DataFrame:
    """Each raw ``event_time`` normalised (lazily): ``i`` (its index), ``utc`` (the UTC
    instant as text), the quarantine reason and the ambiguous flag."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "times.jsonl"
    lines = [
        json.dumps({"event_id": f"e{i}", "user": "u1", "event_time": v, "type": "view"})
        for i, v in enumerate(values)
    ]
    path.write_text("\n".join(lines) + "\n")
    config = config_for(folder, path, **source)
    spec, src = config.ingest.source.inputs[0], config.ingest.source
    return normalise(read_raw(spark, spec), spec=spec, source=src).select(
        F.substring("event_id", 2, 9).cast("int").alias("i"),
        F.date_format("event_ts", "yyyy-MM-dd HH:mm:ss").alias("utc"),
        F.col(REASON).alias("reason"),
        F.col(AMBIGUOUS_TIME).alias("ambiguous"),
    )


def outcomes(df: DataFrame) -> list[tuple[str | None, str | None, bool]]:
    """(UTC time as text, or None when quarantined; the reason; the ambiguous flag), in order."""
    rows = df.orderBy("i").collect()
    return [(None if r["reason"] else r["utc"], r["reason"], r["ambiguous"]) for r in rows]


def parse_all(
    spark: SparkSession, tmp_path: Path, values: list[object], **source: object
) -> list[tuple[str | None, str | None, bool]]:
    return outcomes(parsed_times(spark, tmp_path, values, **source))


#: (raw event_time, UTC instant) with ingest.source.timezone = Europe/Berlin (UTC+1 in March).
BERLIN_CASES: list[tuple[object, str]] = [
    # The examples: a zone or offset in the text decides the instant.
    ("2024-03-01 10:00:00 UTC", "2024-03-01 10:00:00"),
    ("2024-03-01T10:00:00+01", "2024-03-01 09:00:00"),
    ("2024-03-01 10:00:00 GMT", "2024-03-01 10:00:00"),
    ("2024-03-01T10:00:00+0100", "2024-03-01 09:00:00"),
    ("2024-03-01T10:00:00+01:00", "2024-03-01 09:00:00"),
    ("2024-03-01T10:00:00Z", "2024-03-01 10:00:00"),
    ("2024-03-01T10:00:00.250Z", "2024-03-01 10:00:00"),
    ("2024-03-01 10:00:00 +02:00", "2024-03-01 08:00:00"),
    ("2024-03-01T10:00:00-0800", "2024-03-01 18:00:00"),
    ("2024-03-01 10:00:00 UTC+01:00", "2024-03-01 09:00:00"),
    ("2024-03-01 10:00:00 America/New_York", "2024-03-01 15:00:00"),
    ("2024-03-01 10:00:00Europe/London", "2024-03-01 10:00:00"),
    # ISO-8601 forms the cast alone does not read: a zoned time without seconds, lower-case
    # designators, a decimal comma, the basic format.
    ("2024-03-01T10:00Z", "2024-03-01 10:00:00"),
    ("2024-03-01T10:00+01:00", "2024-03-01 09:00:00"),
    ("2024-03-01t10:00:00z", "2024-03-01 10:00:00"),
    ("2024-03-01T10:00:00,123Z", "2024-03-01 10:00:00"),
    ("2024-03-01 10:00:00,5", "2024-03-01 09:00:00"),
    ("20240301T100000Z", "2024-03-01 10:00:00"),
    ("20240301T100000+0200", "2024-03-01 08:00:00"),
    # Wall-clock text: Berlin time, winter (+01:00) and summer (+02:00).
    ("2024-03-01 10:00:00", "2024-03-01 09:00:00"),
    ("2024-03-01T10:00:00.5", "2024-03-01 09:00:00"),
    ("2024-07-01T10:00", "2024-07-01 08:00:00"),
    ("2024-03-01", "2024-02-29 23:00:00"),
    # Epochs are absolute, as numbers and as text.
    (1709287200000, "2024-03-01 10:00:00"),
    ("1709287200000", "2024-03-01 10:00:00"),
    # Either side of the spring gap (02:00-03:00 on 2024-03-31) and of the autumn repeat.
    ("2024-03-31 01:59:59", "2024-03-31 00:59:59"),
    ("2024-03-31 03:00:00", "2024-03-31 01:00:00"),
    ("2024-10-27 01:59:59", "2024-10-26 23:59:59"),
    ("2024-10-27 03:00:00", "2024-10-27 02:00:00"),
]


def test_a_zone_in_the_text_decides_the_instant_and_wall_clock_text_is_read_in_the_source_zone(
    spark: SparkSession, tmp_path: Path
) -> None:
    values = [v for v, _ in BERLIN_CASES]
    got = parse_all(spark, tmp_path, values, timezone="Europe/Berlin")
    assert [(v, utc) for v, (utc, _, _) in zip(values, got, strict=True)] == BERLIN_CASES
    assert not any(ambiguous for _, _, ambiguous in got)


def test_a_time_without_a_date_is_unparseable_rather_than_dated_today(
    spark: SparkSession, tmp_path: Path
) -> None:
    got = parse_all(spark, tmp_path, ["10:00:00", "T10:00:00"])
    assert got == [
        (None, "unparseable event_ts: 10:00:00", False),
        (None, "unparseable event_ts: T10:00:00", False),
    ]


def test_daylight_saving_gap_is_quarantined_and_a_repeated_hour_takes_the_earlier_instant(
    spark: SparkSession, tmp_path: Path
) -> None:
    got = parse_all(
        spark,
        tmp_path,
        ["2024-03-31 02:30:00", "2024-10-27 02:30:00", "2024-10-27 02:00:00"],
        timezone="Europe/Berlin",
    )
    assert got == [
        # 02:00-03:00 does not exist in Berlin on 2024-03-31 (clocks jump to 03:00 CEST).
        (None, GAP, False),
        # 02:00-03:00 happens twice on 2024-10-27: 00:30Z (CEST, +02:00) or 01:30Z (CET).
        # Spark's to_utc_timestamp takes the earlier offset, as java.time's ZonedDateTime.
        ("2024-10-27 00:30:00", None, True),
        ("2024-10-27 00:00:00", None, True),
    ]
    assert AMBIGUOUS_RULE == "the earlier instant (the offset in force before the clocks went back)"


def test_gaps_and_repeats_are_found_whatever_their_size(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Los Angeles moves its clocks by an hour, Lord Howe Island by half an hour."""
    los_angeles = parse_all(
        spark,
        tmp_path / "la",
        ["2024-03-10 02:30:00", "2024-11-03 01:30:00", "2024-11-03 02:30:00"],
        timezone="America/Los_Angeles",
    )
    assert los_angeles == [
        (None, "nonexistent local time in America/Los_Angeles (DST gap)", False),
        ("2024-11-03 08:30:00", None, True),  # PDT (-07:00), not PST (09:30Z)
        ("2024-11-03 10:30:00", None, False),
    ]
    lord_howe = parse_all(
        spark,
        tmp_path / "lh",
        ["2024-10-06 02:15:00", "2024-04-07 01:45:00", "2024-04-07 02:15:00"],
        timezone="Australia/Lord_Howe",
    )
    assert lord_howe == [
        (None, "nonexistent local time in Australia/Lord_Howe (DST gap)", False),
        ("2024-04-06 14:45:00", None, True),  # +11:00, not +10:30 (15:15Z)
        ("2024-04-06 15:45:00", None, False),
    ]


@pytest.mark.slow
def test_a_timestamp_format_with_a_zone_decides_the_instant(
    spark: SparkSession, tmp_path: Path
) -> None:
    cases = [
        # (pattern, text, timezone, UTC instant)
        (
            "yyyy-MM-dd HH:mm:ss z",
            "2024-03-01 10:00:00 UTC",
            "Europe/Berlin",
            "2024-03-01 10:00:00",
        ),
        ("yyyy-MM-dd HH:mm:ss z", "2024-03-01 10:00:00 CET", "UTC", "2024-03-01 09:00:00"),
        (
            "yyyy-MM-dd'T'HH:mm:ssXXX",
            "2024-03-01T10:00:00+01:00",
            "Asia/Tokyo",
            "2024-03-01 09:00:00",
        ),
        ("yyyy-MM-dd HH:mm:ssx", "2024-03-01 10:00:00+0100", "Asia/Tokyo", "2024-03-01 09:00:00"),
        ("yyyy-MM-dd HH:mm:ss O", "2024-03-01 10:00:00 GMT+1", "Asia/Tokyo", "2024-03-01 09:00:00"),
        (
            "yyyy-MM-dd'T'HH:mm:ss'['VV']'",
            "2024-03-01T10:00:00[America/New_York]",
            "Europe/Berlin",
            "2024-03-01 15:00:00",
        ),
        # A quoted 'Z' matches only the letter, but the text it matches names UTC.
        (
            "yyyy-MM-dd'T'HH:mm:ss'Z'",
            "2024-03-01T10:00:00Z",
            "Europe/Berlin",
            "2024-03-01 10:00:00",
        ),
        # No zone in the pattern: wall-clock time in the source zone.
        ("dd/MM/yyyy HH:mm", "01/03/2024 10:00", "Europe/Berlin", "2024-03-01 09:00:00"),
        # Digits only are the pattern's, not an epoch.
        ("yyyyMMddHHmmss", "20240301100000", "Europe/Berlin", "2024-03-01 09:00:00"),
        # An optional zone: each value as it is written.
        (
            "yyyy-MM-dd HH:mm:ss[ XXX]",
            "2024-03-01 10:00:00 +02:00",
            "Europe/Berlin",
            "2024-03-01 08:00:00",
        ),
        (
            "yyyy-MM-dd HH:mm:ss[ XXX]",
            "2024-03-01 10:00:00",
            "Europe/Berlin",
            "2024-03-01 09:00:00",
        ),
    ]
    # One Spark job for all cases: each case is its own input, told apart by ``i``.
    frames = [
        parsed_times(
            spark, tmp_path / str(n), [text], timestamp_format=pattern, timezone=zone
        ).withColumn("i", F.lit(n))
        for n, (pattern, text, zone, _) in enumerate(cases)
    ]
    got = outcomes(reduce(DataFrame.unionByName, frames))
    assert got == [(expected, None, False) for *_, expected in cases]


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("yyyy-MM-dd HH:mm:ss bbb", "Unknown pattern letter: b"),
        (
            "YYYY-ww-e",
            "All week-based patterns are unsupported since Spark 3.0, detected week-based "
            "character: Y.",
        ),
        ("yyyy-MM-dd 'T", "Pattern ends with an incomplete string literal"),
        ("EEEEEE", "Fail to recognize 'EEEEEE' pattern in the DateTimeFormatter."),
    ],
)
def test_a_timestamp_format_spark_cannot_parse_exits_2_before_any_input_is_read(
    spark: SparkSession,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pattern: str,
    problem: str,
) -> None:
    """Spark checks a pattern only on the first value it parses: ingest asks its parser first,
    so the run stops with one line naming the setting (exit 2), before reading a file."""
    from jobs.runner import run_stage

    missing = tmp_path / "not-read.jsonl"  # never listed: the check comes first
    code = run_stage(
        "ingest",
        [
            "--conf",
            "conf/local.yaml",
            "--set",
            f"ingest.source.inputs=[{{paths: ['{missing}'], format: jsonl}}]",
            "--set",
            f"ingest.source.timestamp_format={pattern}",
            "--set",
            f"lake.root={tmp_path / 'lake'}",
            "--set",
            "mlflow.enabled=false",
        ],
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "py4j" not in err
    # The stage's log lines (INFO, in this process) aside, one line says what is wrong.
    lines = [line for line in err.splitlines() if line.startswith("segments ingest")]
    assert lines == [
        f"segments ingest: config error: ingest.source.timestamp_format={pattern!r} is not a "
        f"pattern Spark can parse: {lines[0].split('can parse: ', 1)[1]}"
    ]
    assert problem in lines[0] and lines[0].endswith(f"(pattern letters: {PATTERN_GUIDE})")
    assert "SQLSTATE" not in lines[0] and "LEGACY" not in lines[0]
    assert not (tmp_path / "lake").exists()


def test_spark_connects_stack_trace_is_left_out_of_the_pattern_problem() -> None:
    message = (
        "[INCONSISTENT_BEHAVIOR_CROSS_VERSION.DATETIME_PATTERN_RECOGNITION] You may get a "
        "different result due to the upgrading to Spark >= 3.0:\nFail to recognize 'EEEEEE' "
        'pattern in the DateTimeFormatter.\n1) You can set "spark.sql.legacy.timeParserPolicy'
        '" to "LEGACY" to restore the behavior before Spark 3.0.\n2) You can form a valid '
        "datetime pattern with the guide from 'https://spark.apache.org/docs/latest/sql-ref-"
        "datetime-pattern.html'. SQLSTATE: 42K0B\n\nJVM stacktrace:\n"
        "org.apache.spark.SparkUpgradeException: [INCONSISTENT_BEHAVIOR_CROSS_VERSION]\n"
        "\tat org.apache.spark.sql.errors.ExecutionErrors.failToRecognizePatternError(...)"
    )
    assert _pattern_problem(message) == (
        "Fail to recognize 'EEEEEE' pattern in the DateTimeFormatter."
    )


def test_a_valid_timestamp_format_passes_the_check_and_an_empty_one_is_refused_at_load(
    spark: SparkSession,
) -> None:
    source = load_config([], ["ingest.source.timestamp_format=dd/MM/yyyy HH:mm"]).ingest.source
    check_timestamp_format(spark, source)  # no error
    # Spark 3's parser policy (kept by some platform sessions) fails values the probe text
    # does not match, with a pattern that is valid: still no error.
    policy = "spark.sql.legacy.timeParserPolicy"
    before = spark.conf.get(policy)
    spark.conf.set(policy, "EXCEPTION")
    try:
        short = dataclasses.replace(source, timestamp_format="yyyy-MM-dd")
        check_timestamp_format(spark, short)
    finally:
        spark.conf.set(policy, before)
    with pytest.raises(ConfigError, match=r"ingest\.source\.timestamp_format is empty"):
        load_config([], ["ingest.source.timestamp_format= "])


@pytest.mark.slow
def test_rees46_mapping_in_moscow_keeps_utc_times_on_their_utc_date(
    spark: SparkSession, tmp_path: Path
) -> None:
    """REES46 writes ``2019-10-01 00:00:04 UTC``; with ``timezone: Europe/Moscow`` the event
    stays at 00:00:04Z on 2019-10-01 (it used to move to 2019-09-30 21:00:04)."""
    path = tmp_path / "rees46.csv"
    path.write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,"
        "user_session\n"
        "2019-10-01 00:00:04 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,"
        "72d76fde-8bb3-4e00-8c23-a032dfed738c\n"
    )
    config = load_config(
        [REPO / "conf" / "sources" / "rees46.yaml"],
        [
            f"lake.root={tmp_path / 'lake'}",
            "lake.engine=delta-rs",
            "ingest.source.timezone=Europe/Moscow",
        ],
    )
    spec = dataclasses.replace(config.ingest.source.inputs[0], paths=(str(path),))
    config = dataclasses.replace(
        config,
        ingest=dataclasses.replace(
            config.ingest, source=dataclasses.replace(config.ingest.source, inputs=(spec,))
        ),
    )
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.input_rows, counts.kept, counts.quarantined) == (1, 1, 0)
    row = lake.read("events").select(
        F.date_format("event_ts", "yyyy-MM-dd HH:mm:ss").alias("ts"),
        F.col("event_date").cast("string").alias("d"),
    )
    assert [tuple(r) for r in row.collect()] == [("2019-10-01 00:00:04", "2019-10-01")]


def test_ingest_quarantines_gap_times_and_logs_how_many_repeated_times_it_resolved(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dst.jsonl"
    times = ["2024-03-31 02:30:00", "2024-10-27 02:30:00", "2024-10-27 02:45:00", "2024-03-01"]
    path.write_text(
        "\n".join(
            json.dumps({"event_id": f"e{i}", "user": "u1", "event_time": t, "type": "view"})
            for i, t in enumerate(times)
        )
        + "\n"
    )
    config = config_for(tmp_path, path, timezone="Europe/Berlin")
    caplog.set_level(logging.INFO, logger="jobs.ingest")
    counts = ingest.run(spark, Lake(spark, config.lake), config, run_id="r")
    assert (counts.input_rows, counts.kept, counts.quarantined) == (4, 3, 1)
    assert counts.quarantine_reasons == {GAP: 1}
    assert f"2 ambiguous local times resolved as {AMBIGUOUS_RULE}" in caplog.messages


@pytest.mark.parametrize(
    ("unit", "values", "expected"),
    [
        # A fraction of the unit is kept to the microsecond, as text or as a JSON number.
        (
            "ms",
            [1709287200123.456, "1709287200123.9", "1.7092872001234567E12", 1709287200123],
            ["10:00:00.123456", "10:00:00.123900", "10:00:00.123456", "10:00:00.123000"],
        ),
        (
            "s",
            ["1709287200.999999", 1709287200.5, "1709287200"],
            ["10:00:00.999999", "10:00:00.500000", "10:00:00.000000"],
        ),
        ("us", ["1709287200123456.9", 1709287200123456], ["10:00:00.123456", "10:00:00.123456"]),
    ],
)
def test_fractional_epochs_keep_their_microseconds(
    spark: SparkSession, tmp_path: Path, unit: str, values: list[object], expected: list[str]
) -> None:
    # Before: milliseconds went through a whole number first (.123456 ms -> .123000).
    path = tmp_path / "times.jsonl"
    lines = [
        json.dumps({"event_id": f"e{i}", "user": "u1", "event_time": v, "type": "view"})
        for i, v in enumerate(values)
    ]
    path.write_text("\n".join(lines) + "\n")
    config = config_for(tmp_path, path, timestamp_unit=unit)
    spec, source = config.ingest.source.inputs[0], config.ingest.source
    rows = (
        normalise(read_raw(spark, spec), spec=spec, source=source)
        .select("event_id", F.date_format("event_ts", "HH:mm:ss.SSSSSS").alias("t"), REASON)
        .orderBy("event_id")
        .collect()
    )
    assert [(r["t"], r[REASON]) for r in rows] == [(t, None) for t in expected]
