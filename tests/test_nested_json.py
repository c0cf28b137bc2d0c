"""Nested JSON lines: dotted paths into objects, and a record's array of events exploded.

The session-per-line shape is the OTTO RecSys dataset's (``{"session": 12, "events": [{"aid": 5,
"ts": 1659304800025, "type": "clicks"}, ...]}``: millisecond epochs, plural type names).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import ingest
from jobs.core.config import AppConfig, InputSpec, LakeConfig
from jobs.core.lake import Lake
from jobs.core.tables import EVENTS, EVENTS_QUARANTINE
from jobs.ingest import IngestError
from jobs.sources.mapping import normalise
from jobs.sources.nested import called_names, explode_path, referenced_paths
from jobs.sources.readers import read_raw

SESSIONS = [
    {
        "session": 12,
        "events": [
            {"aid": 5, "ts": 1659304800025, "type": "clicks"},
            {"aid": 7, "ts": 1659304860000, "type": "carts"},
            {"aid": 7, "type": "orders"},  # no ts: quarantined alone
            {"aid": 9, "ts": 1659304920500, "type": "orders"},
        ],
    },
    {"session": 13, "events": [{"aid": 1, "ts": 1659305000000, "type": "clicks"}]},
    {"session": 14, "events": []},  # no event: one quarantined row
]

SESSION_MAPPING = {
    "user_id": "session",
    "source_session_id": "session",
    "event_ts": "events.ts",
    "event_type": "events.type",
    "item_id": "events.aid",
}


def config_for(
    tmp_path: Path,
    path: Path,
    columns: dict[str, str],
    explode: str | None = None,
    **source: object,
) -> AppConfig:
    base = AppConfig()
    spec = InputSpec(paths=(str(path),), format="jsonl", columns=columns, explode=explode)
    changed = dataclasses.replace(base.ingest.source, inputs=(spec,), **source)  # type: ignore[arg-type]
    return dataclasses.replace(
        base,
        ingest=dataclasses.replace(base.ingest, source=changed),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
    )


def write_lines(path: Path, records: Sequence[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_a_session_per_line_explodes_into_one_event_per_element(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "otto.jsonl", SESSIONS)
    config = config_for(
        tmp_path,
        path,
        SESSION_MAPPING,
        explode="events",
        event_type_map={"clicks": "view", "carts": "add_to_cart", "orders": "purchase"},
        timestamp_unit="ms",
    )
    counts = ingest.run(spark, lake, config, run_id="r")

    # 3 records read; 4 + 1 elements and one record without elements: 6 rows accounted for.
    assert counts.records_read == 3
    assert (counts.input_rows, counts.kept, counts.duplicates_removed) == (6, 4, 0)
    assert counts.quarantined == 2
    assert dict(counts.quarantine_reasons) == {"missing event_ts": 1, "no elements in events": 1}
    assert counts.reconciles
    assert counts.summary().endswith("; records read 3, events produced 6")

    events = (
        lake.read(EVENTS)
        .select(
            "user_id",
            "source_session_id",
            "item_id",
            "event_type",
            F.date_format("event_ts", "yyyy-MM-dd HH:mm:ss.SSS").alias("ts"),
        )
        .orderBy("ts")
        .collect()
    )
    assert [tuple(r) for r in events] == [
        ("12", "12", "5", "view", "2022-07-31 22:00:00.025"),
        ("12", "12", "7", "add_to_cart", "2022-07-31 22:01:00.000"),
        ("12", "12", "9", "purchase", "2022-07-31 22:02:00.500"),
        ("13", "13", "1", "view", "2022-07-31 22:03:20.000"),
    ]
    quarantine = {r["reason"]: r for r in lake.read(EVENTS_QUARANTINE).collect()}
    # The element alone, under its parent's key; the empty session as written.
    assert quarantine["missing event_ts"]["raw"] == (
        '{"session":"12","events":[{"aid":7,"type":"orders"}]}'
    )
    assert quarantine["no elements in events"]["raw"] == json.dumps(SESSIONS[2])
    assert all(r["source_file"].endswith("/otto.jsonl") for r in quarantine.values())


def test_dotted_paths_read_fields_inside_objects(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    def record(event_id: str, properties: object) -> dict[str, object]:
        return {
            "event_id": event_id,
            "user": "u1",
            "event_time": "2024-03-01T10:00:00Z",
            "type": "view",
            "properties": properties,
        }

    path = write_lines(
        tmp_path / "props.jsonl",
        [
            record("p-1", {"product_id": 42, "meta": {"brand": "acme"}, "price": "9.5"}),
            record("p-2", {"product_id": "sku-7"}),
            record("p-3", "n/a"),  # not an object: its fields are null, the record is kept
            {k: v for k, v in record("p-4", None).items() if k != "properties"},
        ],
    )
    columns = {
        "event_id": "event_id",
        "user_id": "user",
        "event_ts": "event_time",
        "event_type": "type",
        "item_id": "properties.product_id",
        "brand": "properties.meta.brand",
        "price": "properties.price",
    }
    counts = ingest.run(spark, lake, config_for(tmp_path, path, columns), run_id="r")

    assert (counts.input_rows, counts.kept, counts.quarantined) == (4, 4, 0)
    rows = lake.read(EVENTS).orderBy("event_id").collect()
    assert [(r["event_id"], r["item_id"], r["brand"], r["price"]) for r in rows] == [
        ("p-1", "42", "acme", 9.5),
        ("p-2", "sku-7", None, None),
        ("p-3", None, None, None),
        ("p-4", None, None, None),
    ]


def test_records_that_cannot_be_exploded_are_quarantined_with_their_reason(
    spark: SparkSession, tmp_path: Path
) -> None:
    good = {"session": 1, "payload": {"events": [{"ts": 1659304800000, "type": "clicks"}]}}
    path = write_lines(
        tmp_path / "odd.jsonl",
        [
            good,
            {"session": 2, "payload": {"events": "nope"}},
            {"session": 3, "payload": {"events": [5, {"ts": 1659304800000, "type": "x"}]}},
            {"session": 4, "payload": {}},
            {"session": 5, "payload": {"events": [{"ts": 1659304800000, "type": "clicks"}] * 50}},
            '{"session": 6, "payload": {"events": [',
            "",
            # The object holding the array twice: one record, not exploded (the parser would
            # keep only the second array).
            '{"session": 7, "payload": {"events": []}, "payload": {"events": [{"ts": 1}]}}',
        ],
    )
    columns = {
        "user_id": "session",
        "event_ts": "payload.events.ts",
        "event_type": "payload.events.type",
    }
    config = config_for(
        tmp_path,
        path,
        columns,
        explode="payload.events",
        event_type_map={"clicks": "view"},
        timestamp_unit="ms",
        max_record_bytes=len(json.dumps(good)) + 200,
    )
    source = config.ingest.source
    spec = source.inputs[0]
    rows = (
        normalise(read_raw(spark, spec), spec=spec, source=source)
        .select("user_id", "__element", "__reason", "__raw")
        .collect()
    )
    limit = source.max_record_bytes
    got = sorted((r["user_id"] or "", r["__element"], r["__reason"]) for r in rows)
    # Record-level problems are decided per record (one row each, unexploded); then the array;
    # then each element on its own.
    assert got == [
        ("", 0, "empty record"),
        ("", 0, "malformed jsonl record"),
        ("1", 0, None),
        ("2", 0, "payload.events is not an array"),
        ("3", 0, "element of payload.events is not an object"),
        ("3", 1, "unknown event_type: x"),
        ("4", 0, "no elements in payload.events"),
        ("5", 0, f"oversize record (> {limit} bytes)"),
        ("7", 0, "duplicate key in jsonl record: payload"),
    ]
    raws = {(r["user_id"], r["__element"]): r["__raw"] for r in rows}
    # Parent fields, and elements that are not objects, are shown as the text the mapping reads.
    assert raws[("3", 0)] == '{"session":"3","payload":{"events":["5"]}}'
    assert (
        raws[("3", 1)] == '{"session":"3","payload":{"events":[{"ts":1659304800000,"type":"x"}]}}'
    )


def test_explode_settings_are_checked_before_any_row_is_read(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    path = tmp_path / "x.csv"
    path.write_text("session,events\n1,x\n")
    config = config_for(tmp_path, path, SESSION_MAPPING, explode="events")
    csv = dataclasses.replace(config.ingest.source.inputs[0], format="csv")
    config = dataclasses.replace(
        config,
        ingest=dataclasses.replace(
            config.ingest, source=dataclasses.replace(config.ingest.source, inputs=(csv,))
        ),
    )
    message = r"ingest\.source\.inputs\[\]\.explode 'events': only JSON-lines inputs"
    with pytest.raises(IngestError, match=message):
        ingest.run(spark, lake, config, run_id="r")
    odd = InputSpec(paths=("x.jsonl",), explode="events[0]")
    with pytest.raises(IngestError, match=r"expected a field name or dotted path"):
        explode_path(odd)
    assert explode_path(InputSpec(explode="payload.`the events`")) == ("payload", "the events")


def test_names_only_called_are_not_fields() -> None:
    # The repeated-key check (jobs.sources.readers) looks only at fields the mapping reads.
    expressions = ["concat('s-', session)", "cast(ts AS date)", "date", "coalesce (a.b, 'x(')"]
    assert called_names(expressions) == {"concat", "cast", "coalesce"}


def test_referenced_paths_form_a_tree() -> None:
    tree = referenced_paths(
        ["properties.product_id", "coalesce(properties.meta.brand, 'a.b')", "`odd name`.x", "ts"]
    )
    assert tree == {
        "properties": {"product_id": {}, "meta": {"brand": {}}},
        "coalesce": {},
        "odd name": {"x": {}},
        "ts": {},
    }


def test_fields_beside_a_nested_array_stay_in_each_element_s_raw_record(
    spark: SparkSession, lake: Lake, tmp_path: Path
) -> None:
    # Two users' records whose single events are equal: the user sits beside the array, inside
    # the same object.  Each element's raw record (and so its event id) keeps that user.
    event = {"ts": 1709287200000, "type": "clicks", "aid": 5}
    records = [{"payload": {"user": user, "events": [event]}} for user in ("u1", "u2")]
    path = write_lines(tmp_path / "nested.jsonl", records)
    columns = {
        "user_id": "payload.user",
        "event_ts": "payload.events.ts",
        "event_type": "payload.events.type",
        "item_id": "payload.events.aid",
    }
    config = config_for(
        tmp_path,
        path,
        columns,
        explode="payload.events",
        event_type_map={"clicks": "view"},
        timestamp_unit="ms",
    )
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.input_rows, counts.kept, counts.quarantined) == (2, 2, 0), counts.summary()
    kept = lake.read(EVENTS).select("user_id", "event_id").collect()
    assert sorted(r["user_id"] for r in kept) == ["u1", "u2"]
    assert len({r["event_id"] for r in kept}) == 2
    spec, source = config.ingest.source.inputs[0], config.ingest.source
    rows = normalise(read_raw(spark, spec), spec=spec, source=source, keep_raw=True).collect()
    texts = sorted(r["__raw"] for r in rows)
    # (the fields the mapping reads, in name order)
    assert texts == [
        '{"payload":{"events":[{"ts":1709287200000,"type":"clicks","aid":5}],"user":"u1"}}',
        '{"payload":{"events":[{"ts":1709287200000,"type":"clicks","aid":5}],"user":"u2"}}',
    ]


def test_an_element_beyond_the_source_order_range_is_quarantined(
    spark: SparkSession, lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # source_order is position x 65,536 + element: a 65,537th element would take the order of
    # the next record's first.  Shown with the range cut to 2 elements per record.
    from jobs.sources import dedup, nested

    monkeypatch.setattr(nested, "ELEMENTS_PER_RECORD", 2)
    monkeypatch.setattr(dedup, "ELEMENTS_PER_RECORD", 2)
    events = [{"aid": i, "ts": 1659304800000 + i, "type": "clicks"} for i in range(3)]
    path = write_lines(tmp_path / "long.jsonl", [{"session": 12, "events": events}])
    config = config_for(
        tmp_path,
        path,
        SESSION_MAPPING,
        explode="events",
        event_type_map={"clicks": "view"},
        timestamp_unit="ms",
    )
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.input_rows, counts.kept, counts.quarantined) == (3, 2, 1)
    assert dict(counts.quarantine_reasons) == {"element beyond the first 2 of events": 1}
    kept = lake.read(EVENTS).select("item_id", "source_order").orderBy("source_order").collect()
    assert [(r["item_id"], r["source_order"]) for r in kept] == [("0", 0), ("1", 1)]
