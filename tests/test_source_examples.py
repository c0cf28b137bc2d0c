"""The example mappings in conf/sources/examples/ ingest their log shapes by configuration alone:
each is proven on a small inline fixture in that shape, with exact counts and values."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

from pyspark.sql import SparkSession

from jobs import ingest
from jobs.core.config import AppConfig, LakeConfig, load_config
from jobs.core.lake import Lake
from jobs.core.tables import EVENTS, EVENTS_QUARANTINE, SESSIONS

from .conftest import REPO

EXAMPLES = REPO / "conf" / "sources" / "examples"


def _config(example: str, tmp_path: Path, inputs: list[str], lookups: list[str] = ()) -> AppConfig:
    """The example mapping with its input (and lookup) paths pointed at the fixture files."""
    config = load_config([EXAMPLES / example])
    source = config.ingest.source
    source = dataclasses.replace(
        source,
        inputs=tuple(
            dataclasses.replace(spec, paths=(path,))
            for spec, path in zip(source.inputs, inputs, strict=True)
        ),
        lookups=tuple(
            dataclasses.replace(spec, path=path)
            for spec, path in zip(source.lookups, lookups, strict=True)
        ),
    )
    return dataclasses.replace(
        config,
        ingest=dataclasses.replace(config.ingest, source=source),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
    )


def _events(lake: Lake) -> list[dict]:
    rows = lake.read(EVENTS).orderBy("user_id", "event_ts", "item_id").collect()
    return [r.asDict() for r in rows]


def test_session_keyed_tsv_with_float_epoch_seconds(spark: SparkSession, tmp_path: Path) -> None:
    raw = tmp_path / "sessions.tsv"
    raw.write_text(
        "session_id\titem_id\tcategory\ttimestamp\n"
        "1\t214536502\t0\t1396321232.138\n"
        "1\t214536500\t0\t1396321240.5\n"
        "1\t214536500\t0\t1396321240.5\n"  # the same click logged twice: a duplicate
        "2\t214662742\tS\t1396321300\n"
    )
    config = _config("session_tsv.yaml", tmp_path, [str(raw)])
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.input_rows, counts.kept, counts.duplicates_removed, counts.quarantined) == (
        4,
        3,
        1,
        0,
    )
    events = _events(lake)
    assert [(e["user_id"], e["source_session_id"], e["item_id"]) for e in events] == [
        ("session-1", "1", "214536502"),
        ("session-1", "1", "214536500"),
        ("session-2", "2", "214662742"),
    ]
    assert [e["event_ts"] for e in events] == [
        datetime(2014, 4, 1, 3, 0, 32, 138000),
        datetime(2014, 4, 1, 3, 0, 40, 500000),
        datetime(2014, 4, 1, 3, 1, 40),
    ]
    assert [e["category"] for e in events] == [None, None, "S"]  # 0 means "no category"
    assert {e["event_type"] for e in events} == {"view"}


def test_headerless_user_behaviour_csv(spark: SparkSession, tmp_path: Path) -> None:
    raw = tmp_path / "UserBehavior.csv"
    raw.write_text(
        "1,2268318,2520377,pv,1511544070\n"
        "1,2333346,2520771,cart,1511561733\n"
        "1,2576651,149192,fav,1511572885\n"
        "1,3830808,4181361,buy,1511593493\n"
        "100,4365585,2520377,share,1511596146\n"
    )
    config = _config("user_behavior_csv.yaml", tmp_path, [str(raw)])
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.input_rows, counts.kept, counts.duplicates_removed, counts.quarantined) == (
        5,
        4,
        0,
        1,
    )
    events = _events(lake)
    assert [e["event_type"] for e in events] == ["view", "add_to_cart", "other", "purchase"]
    assert events[0]["event_ts"] == datetime(2017, 11, 24, 17, 21, 10)
    assert [e["category"] for e in events][:2] == ["2520377", "2520771"]
    (bad,) = lake.read(EVENTS_QUARANTINE).collect()
    assert bad["reason"] == "unknown event_type: share"


def test_action_codes_with_float_user_ids_and_an_item_table(
    spark: SparkSession, tmp_path: Path
) -> None:
    actions = tmp_path / "actions.csv"
    actions.write_text(
        "user_id,sku_id,time,model_id,type,cate,brand\n"
        # browse (1) and click (6) of one item in one second: both "view", different raw rows
        "266079.0,138778,2016-01-31 23:59:02,,1,8,403\n"
        "266079.0,138778,2016-01-31 23:59:02,0,6,8,403\n"
        "266079.0,138778,2016-01-31 23:59:02,0,6,8,403\n"  # an exact repeat: a duplicate
        "266079,138778,2016-02-01 00:03:40,,2,8,403\n"  # the same user written as an integer
        "200001.0,6002,2016-02-01 10:00:00,,4,4,9\n"
        "200001.0,6002,2016-02-01 10:00:05,,7,4,9\n"  # no type 7 in the log's codes
    )
    products = tmp_path / "products.csv"
    products.write_text("sku_id,a1,a2,a3,cate,brand\n138778,3,1,1,8,403\n6002,1,1,1,4,9\n")
    config = _config("action_codes_csv.yaml", tmp_path, [str(actions)], [str(products)])
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.input_rows, counts.kept, counts.duplicates_removed, counts.quarantined) == (
        6,
        4,
        1,
        1,
    )
    events = _events(lake)
    assert [(e["user_id"], e["event_type"]) for e in events] == [
        ("200001", "purchase"),
        ("266079", "view"),
        ("266079", "view"),
        ("266079", "add_to_cart"),
    ]
    # Wall-clock times in Asia/Shanghai (UTC+8) become UTC instants.
    assert events[0]["event_ts"] == datetime(2016, 2, 1, 2, 0, 0)
    assert events[1]["event_ts"] == datetime(2016, 1, 31, 15, 59, 2)
    assert {(e["category"], e["brand"]) for e in events} == {("4", "9"), ("8", "403")}
    (bad,) = lake.read(EVENTS_QUARANTINE).collect()
    assert bad["reason"] == "unknown event_type: 7"


def _session_items(spark: SparkSession, config: AppConfig, lake: Lake) -> dict[str, list[str]]:
    """Sessionize what was ingested; each user's session items in sequence order."""
    from jobs import sessionize

    sessionize.run(spark, lake, config, run_id="s")
    rows = lake.read(SESSIONS).select("user_id", "events").collect()
    return {r["user_id"]: [e["item_id"] for e in r["events"]] for r in rows}


def test_day_and_click_order_with_spaces_and_parentheses_in_names(
    spark: SparkSession, tmp_path: Path
) -> None:
    raw = tmp_path / "clicks.csv"
    raw.write_text(
        "year;month;day;order;session ID;page 1 (main category);page 2 (clothing model);price\n"
        # session 1's clicks are written out of their click order
        "2008;4;1;2;1;1;A16;28\n"
        "2008;4;1;1;1;1;A13;28\n"
        "2008;4;1;3;1;2;B4;43\n"
        "2008;4;2;1;2;3;C17;57\n"
        # A month that does not exist and an order that is not a number: one row each, under
        # Spark 4's ANSI mode too (a cast() in the mapping failed the whole run).
        "2008;13;1;4;1;1;A20;28\n"
        "2008;4;1;x;1;1;A21;28\n"
    )
    config = _config("click_order_csv.yaml", tmp_path, [str(raw)])
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.input_rows, counts.kept, counts.quarantined) == (6, 4, 2)
    assert dict(counts.quarantine_reasons) == {
        "unparseable event_ts: 2008-13-1": 1,
        "invalid order_by value: x": 1,
    }
    events = _events(lake)
    assert {e["event_ts"] for e in events} == {datetime(2008, 4, 1), datetime(2008, 4, 2)}
    assert events[0]["category"] == "main-category-1" and events[0]["price"] == 28.0
    # Equal times: the click order decides, not the file order or the item name.
    assert _session_items(spark, config, lake) == {
        "session-1": ["A13", "A16", "B4"],
        "session-2": ["C17"],
    }


def test_parquet_with_steps_and_list_columns(spark: SparkSession, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = 1541037460
    table = pa.table(
        {
            "user_id": ["u1"] * 4 + ["u2"],
            "session_id": ["s1"] * 4 + ["s2"],
            "timestamp": pa.array([t, t, t, t + 30, t], pa.int64()),
            # written out of step order; three interactions in one second
            "step": pa.array([2, 1, 3, 4, 1], pa.int64()),
            "action_type": [
                "interaction item image",
                "search for destination",
                "clickout item",
                "filter selection",
                "interaction item info",
            ],
            "reference": ["h7", "Berlin, Germany", "h9", "Sort by Price", "h1"],
            "city": ["Berlin, Germany"] * 4 + ["Rome, Italy"],
            "impressions": [None, None, ["h7", "h9"], None, None],
            "prices": pa.array([None, None, [80, 120], None, None], pa.list_(pa.int64())),
        }
    )
    folder = tmp_path / "steps"
    folder.mkdir()
    pq.write_table(table, folder / "part-0.parquet")
    config = _config("steps_parquet.yaml", tmp_path, [str(folder)])
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.input_rows, counts.kept, counts.quarantined) == (5, 5, 0)
    rows = {
        (r["user_id"], r["event_type"], r["item_id"], r["query"], r["price"])
        for r in lake.read(EVENTS).collect()
    }
    assert rows == {
        ("u1", "view", "h7", None, None),
        ("u1", "search", None, "Berlin, Germany", None),
        ("u1", "add_to_cart", "h9", None, 120.0),
        ("u1", "other", None, None, None),
        ("u2", "view", "h1", None, None),
    }
    # Ties in time follow the step column: search (1), image (2), clickout (3).
    from jobs import sessionize

    sessionize.run(spark, lake, config, run_id="s")
    rows = lake.read(SESSIONS).select("user_id", "events").collect()
    types = {r["user_id"]: [e["event_type"] for e in r["events"]] for r in rows}
    assert types["u1"][:3] == ["search", "view", "add_to_cart"]


def test_one_json_line_per_session_is_exploded(spark: SparkSession, tmp_path: Path) -> None:
    raw = tmp_path / "sessions.jsonl"
    raw.write_text(
        '{"session": 12, "events": [{"aid": 5, "ts": 1659304800025, "type": "clicks"}, '
        '{"aid": 7, "ts": 1659304860000, "type": "carts"}, '
        '{"aid": 7, "ts": 1659304920500, "type": "orders"}]}\n'
        '{"session": 13, "events": [{"aid": 1, "ts": 1659305000000, "type": "clicks"}, '
        '{"aid": 2, "type": "clicks"}]}\n'
    )
    config = _config("nested_sessions_jsonl.yaml", tmp_path, [str(raw)])
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.records_read, counts.input_rows, counts.kept, counts.quarantined) == (
        2,
        5,
        4,
        1,
    )
    events = _events(lake)
    assert [(e["user_id"], e["item_id"], e["event_type"]) for e in events] == [
        ("session-12", "5", "view"),
        ("session-12", "7", "add_to_cart"),
        ("session-12", "7", "purchase"),
        ("session-13", "1", "view"),
    ]
    assert events[0]["event_ts"] == datetime(2022, 7, 31, 22, 0, 0, 25000)
    (bad,) = lake.read(EVENTS_QUARANTINE).collect()
    assert bad["reason"] == "missing event_ts"
