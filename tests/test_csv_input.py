"""CSV input as RFC 4180 writes it: quoted fields may hold line breaks and doubled quotes.

A record is what the CSV grammar says, not a line: accounting counts records, a quoted line
break stays in its value, and an unclosed quote still costs only its own line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import ingest
from jobs.core.config import AppConfig, InputSpec, LakeConfig
from jobs.core.lake import Lake
from jobs.core.tables import EVENTS, EVENTS_QUARANTINE
from jobs.ingest import IngestError
from jobs.sources.readers import read_raw

from .conftest import REPO

HEADER = "event_id,user,event_time,type,product_id,category_code,brand,price,search_query\n"


def config_for(tmp_path: Path, paths: list[Path], **options: str) -> AppConfig:
    base = AppConfig()
    spec = dataclasses.replace(
        base.ingest.source.inputs[0],
        paths=tuple(str(p) for p in paths),
        format="csv",
        options=options,
    )
    source = dataclasses.replace(base.ingest.source, inputs=(spec,))
    return dataclasses.replace(
        base,
        ingest=dataclasses.replace(base.ingest, source=source),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
    )


def events_by_id(lake: Lake) -> dict[str, dict]:
    events = lake.read(EVENTS).withColumn("ts", F.date_format("event_ts", "yyyy-MM-dd HH:mm:ss"))
    return {r["event_id"]: r.asDict() for r in events.collect()}


def test_quoted_line_breaks_stay_inside_their_record(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    path = tmp_path / "nl.csv"
    path.write_text(
        HEADER
        # A line break in the last column, one in a middle column, and a doubled quote.
        + 'nl-1,u1,2024-03-01T10:00:00Z,search,,,,,"red\nshoes"\n'
        + 'nl-2,u1,2024-03-01T10:01:00Z,view,p2,"home\ngarden",acme,12.5,\n'
        + 'nl-3,u1,2024-03-01T10:02:00Z,search,,,,,"say ""hi"""\n'
    )
    config = config_for(tmp_path, [path])
    counts = ingest.run(spark, lake, config, run_id="r")

    assert (counts.input_rows, counts.kept, counts.quarantined) == (3, 3, 0)
    assert counts.reconciles
    events = events_by_id(lake)
    assert sorted(events) == ["nl-1", "nl-2", "nl-3"]
    assert events["nl-1"]["query"] == "red\nshoes"
    assert (events["nl-1"]["event_type"], events["nl-1"]["ts"]) == ("search", "2024-03-01 10:00:00")
    assert events["nl-2"]["category"] == "home\ngarden"
    assert (events["nl-2"]["item_id"], events["nl-2"]["brand"]) == ("p2", "acme")
    assert events["nl-2"]["price"] == 12.5
    assert events["nl-2"]["ts"] == "2024-03-01 10:01:00"
    assert events["nl-3"]["query"] == 'say "hi"'  # RFC 4180: a doubled quote is one quote
    assert lake.read(EVENTS_QUARANTINE).count() == 0


def test_an_unclosed_quote_costs_one_record_not_the_rest_of_the_file(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    path = tmp_path / "unclosed.csv"
    path.write_text(
        HEADER
        + 'q-1,u1,2024-03-01T10:00:00Z,search,,,,,"red\nshoes"\n'
        + 'q-2,u1,2024-03-01T10:01:00Z,search,,,,-1,"blue\nhat"\n'
        # The quote opened here is never closed: it would swallow every line after it.
        + 'q-3,"u1,2024-03-01T10:02:00Z,view,p1,c,b,1.0,\n'
        + "q-4,u1,2024-03-01T10:03:00Z,view,p1,c,b,1.0,\n"
        + "\n"
        + "q-5,u1,2024-03-01T10:04:00Z,view,p1,c,b,-3,\n"
    )
    config = config_for(tmp_path, [path])
    counts = ingest.run(spark, lake, config, run_id="r")

    # Five records (the blank line is none): q-1 and q-4 kept, three quarantined.
    assert (counts.input_rows, counts.kept, counts.quarantined) == (5, 2, 3)
    assert counts.reconciles
    assert dict(counts.quarantine_reasons) == {"negative price": 2, "malformed csv record": 1}
    assert sorted(events_by_id(lake)) == ["q-1", "q-4"]
    raws = {r["raw"] for r in lake.read(EVENTS_QUARANTINE).collect()}
    assert raws == {
        'q-2,u1,2024-03-01T10:01:00Z,search,,,,-1,"blue\nhat"',
        'q-3,"u1,2024-03-01T10:02:00Z,view,p1,c,b,1.0,',
        "q-5,u1,2024-03-01T10:04:00Z,view,p1,c,b,-3,",
    }


@pytest.mark.parametrize(
    "first",
    [
        'q-1,u1,2024-03-01T10:00:00Z,search,,,,,"red\nshoes"',
        # An inch mark makes the file's number of quotes even: no test of an unclosed one.
        'q-1,u1,2024-03-01T10:00:00Z,view,27" monitor,,,1,',
    ],
    ids=["after-a-closed-multi-line-record", "an-inch-mark-evens-out-the-quotes"],
)
def test_an_unclosed_quote_in_the_last_field_costs_one_record_not_the_rest_of_the_file(
    spark: SparkSession, lake: Lake, tmp_path: Path, first: str
) -> None:
    path = tmp_path / "unclosed_last.csv"
    path.write_text(
        HEADER
        + first
        + "\n"
        # Opened in the last field and never closed: the record still has every field, with
        # the lines below inside its search query, and so parsed without an error.
        + 'q-2,u1,2024-03-01T10:01:00Z,search,,,,,"blue\n'
        + "q-3,u1,2024-03-01T10:02:00Z,view,p1,c,b,1.0,\n"
        + "\n"
        + "q-4,u1,2024-03-01T10:03:00Z,view,p1,c,b,2.0,\n"
    )
    counts = ingest.run(spark, lake, config_for(tmp_path, [path]), run_id="r")

    assert (counts.input_rows, counts.kept, counts.quarantined) == (4, 3, 1), counts.summary()
    assert counts.reconciles
    assert dict(counts.quarantine_reasons) == {"malformed csv record": 1}
    assert sorted(events_by_id(lake)) == ["q-1", "q-3", "q-4"]
    assert [r["raw"] for r in lake.read(EVENTS_QUARANTINE).collect()] == [
        'q-2,u1,2024-03-01T10:01:00Z,search,,,,,"blue'
    ]


def test_a_closed_multi_line_last_record_is_kept_whatever_follows_or_precedes_it(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    """Files whose last record closes a multi-line field, where line counts or quote parity
    would mislead: a blank line after it, a line break just before its closing quote, an inch
    mark in the same record, CRLF line endings.  Every record is kept as written."""
    first = 'c-{n}1,u1,2024-03-01T10:00:00Z,view,27" monitor,,,1,\n'
    last = "c-{n}2,u1,2024-03-01T10:01:00Z,search,{product},,,,{query}\n"
    tails = [
        last.format(n=1, product="", query='"red\nshoes"') + "\n",
        last.format(n=2, product="", query='"a\nb\n"'),
        last.format(n=3, product='32" tv', query='"red\nshoes"'),
        last.format(n=4, product="", query='"red\nshoes"') + "\n",
    ]
    paths = []
    for n, tail in enumerate(tails, start=1):
        text = HEADER + first.format(n=n) + tail
        paths.append(tmp_path / f"closed_{n}.csv")
        paths[-1].write_bytes((text.replace("\n", "\r\n") if n == 4 else text).encode())
    counts = ingest.run(spark, lake, config_for(tmp_path, paths), run_id="r")

    assert (counts.input_rows, counts.kept, counts.quarantined) == (8, 8, 0), counts.summary()
    events = events_by_id(lake)
    queries = {n: events[f"c-{n}2"]["query"] for n in range(1, 5)}
    # (the CSV reader turns a CRLF inside a quoted field into a bare line feed)
    assert queries == {1: "red\nshoes", 2: "a\nb\n", 3: "red\nshoes", 4: "red\nshoes"}


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # An inch mark inside an unquoted field is a character (the file's quotes then do not
        # pair up); every record is read once, none twice, none quarantined.
        (
            [
                "i-1,u1,2024-03-01T10:00:00Z,view,p1,,,1,",
                'i-2,u1,2024-03-01T10:01:00Z,view,27" monitor,,,2,',
                "i-3,u1,2024-03-01T10:02:00Z,view,p3,,,3,",
                "i-4,u1,2024-03-01T10:03:00Z,view,p4,,,4,",
            ],
            (4, 4, 0),
        ),
        # ... also before a closed multi-line record, and with one as the file's last.
        (
            [
                'i-1,u1,2024-03-01T10:00:00Z,view,27" monitor,,,1,',
                'i-2,u1,2024-03-01T10:01:00Z,search,,,,,"multi\nline"',
                "i-3,u1,2024-03-01T10:02:00Z,view,p3,,,3,",
                'i-4,u1,2024-03-01T10:03:00Z,search,,,,,"last\nline"',
            ],
            (4, 4, 0),
        ),
    ],
    ids=["inch-mark", "inch-mark-then-multi-line-records"],
)
def test_a_stray_quote_inside_a_field_keeps_every_record_once(
    spark: SparkSession, lake: Lake, tmp_path: Path, rows: list[str], expected: tuple[int, ...]
) -> None:
    path = tmp_path / "stray.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    counts = ingest.run(spark, lake, config_for(tmp_path, [path]), run_id="r")
    assert (counts.input_rows, counts.kept, counts.quarantined) == expected, counts.summary()
    assert counts.duplicates_removed == 0 and counts.reconciles
    events = events_by_id(lake)
    assert sorted(events) == [f"i-{n}" for n in range(1, 5)]
    assert lake.read(EVENTS_QUARANTINE).count() == 0
    positions = sorted(r["source_order"] for r in lake.read(EVENTS).collect())
    assert positions == [n * 65_536 for n in range(4)]  # one position per record, in order


def test_multiline_setting_overrides_detection(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "nl.csv"
    path.write_text(HEADER + 'nl-1,u1,2024-03-01T10:00:00Z,search,,,,,"red\nshoes"\n')
    spec = InputSpec(paths=(str(path),), format="csv")
    assert read_raw(spark, spec).count() == 1
    # multiLine: false reads line by line (files split across tasks): the record breaks in two.
    line_by_line = dataclasses.replace(spec, options={"multiLine": "false"})
    rows = read_raw(spark, line_by_line).orderBy("__position").collect()
    assert [(r["search_query"], r["__corrupt"]) for r in rows] == [
        ("red", None),
        (None, 'shoes"'),
    ]


def test_multiline_reading_keeps_the_bom_and_header_checks(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(
        ("\ufeff" + HEADER + 'b-1,u1,2024-03-01T10:00:00Z,search,,,,,"red\nshoes"\n').encode()
    )
    counts = ingest.run(spark, lake, config_for(tmp_path, [path]), run_id="r")
    assert (counts.input_rows, counts.kept) == (1, 1)
    assert events_by_id(lake)["b-1"]["query"] == "red\nshoes"

    drift = REPO / "tests" / "hostile" / "csv_header_drift"
    config = config_for(tmp_path, [drift], multiLine="true")
    with pytest.raises(IngestError, match=r"cannot read input file \S*/csv_header_drift/b\.csv"):
        ingest.run(spark, lake, config, run_id="drift")


def test_a_mapped_field_the_header_lacks_fails_naming_the_setting(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    path = tmp_path / "in.csv"
    path.write_text(HEADER + "e1,u1,2024-03-01T10:00:00Z,view,p1,,,1,\n")
    config = config_for(tmp_path, [path])
    spec = config.ingest.source.inputs[0]
    typo = dataclasses.replace(spec, columns={**spec.columns, "item_id": "product"})
    source = dataclasses.replace(config.ingest.source, inputs=(typo,))
    config = dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, source=source))
    # Before: a Python traceback of Spark's UNRESOLVED_COLUMN and the plan in JSON.
    with pytest.raises(IngestError) as failure:
        ingest.run(spark, lake, config, run_id="r")
    message = str(failure.value)
    assert message.startswith(
        "source 'synthetic': ingest.source.inputs[].columns.item_id 'product' cannot be "
        f"evaluated over input ['{path}'] (fields: ['event_id', 'user', 'event_time', 'type', "
        "'product_id', 'category_code', 'brand', 'price', 'search_query']): "
    )
    assert "\n" not in message and len(message) < 700
    assert not lake.exists(EVENTS)
