"""Ingest: source mappings, quarantine reasons, deduplication and row accounting."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from jobs import ingest, sessionize
from jobs.core.config import AppConfig, ConfigError, LakeConfig, load_config
from jobs.core.lake import Lake
from jobs.core.tables import EVENTS, contract_of
from jobs.ingest import IngestError
from jobs.sequences.sessionization import assign_sessions, vendor_session_agreement
from jobs.sources.accounting import IngestCounts
from jobs.sources.mapping import normalise
from jobs.sources.readers import read_raw

from .conftest import REPO, shared_data

GOOD = {
    "event_id": "e1",
    "user": "u1",
    "event_time": "2024-03-01T10:00:00.000Z",
    "type": "view",
    "product_id": "p1",
    "category_code": "electronics.smartphone",
    "brand": "acme",
    "price": 199.5,
    "search_query": None,
}


def record(**changes: object) -> str:
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v != "<absent>"})


#: (raw line, expected outcome): "kept", "duplicate", or the quarantine reason.
CASES: list[tuple[str, str]] = [
    (record(), "kept"),
    (record(event_id="e2", event_time="2024-03-01T10:05:00Z", type="cart"), "kept"),
    (record(event_id="e3", event_time=1709287500000, type="PURCHASE"), "kept"),  # epoch ms
    (
        record(event_id="e4", type="search", product_id=None, search_query="red shoes", price=None),
        "kept",
    ),
    (record(), "duplicate"),  # same event_id, same content
    # Same mapped content under another source id: the source says it is another event (a
    # field differs), so it is kept; only collapse_mapped_duplicates would merge the two.
    (record(event_id="e1-resent"), "kept"),
    ('{"event_id": "e5", "user": "u1", "event_time": "2024-03-01T1', "malformed jsonl record"),
    ("", "empty record"),
    (record(event_id="e6", user="<absent>", userId="u1"), "missing user_id"),
    (record(event_id="e7", event_time="<absent>"), "missing event_ts"),
    (record(event_id="e8", event_time="yesterday"), "unparseable event_ts: yesterday"),
    (record(event_id="e9", event_time="1970-01-01T00:00:00Z"), "event_ts out of range"),
    (record(event_id="e10", type=None), "missing event_type"),
    (record(event_id="e11", type="wishlist"), "unknown event_type: wishlist"),
    (record(event_id="e12", price="12,99 EUR"), "invalid price"),
    (record(event_id="e13", price=-5), "negative price"),
    (record(event_id="e14", user="NA"), "missing user_id"),
    # A Java literal, which Spark's cast alone would read as 19.99.
    (record(event_id="e15", price="19.99d"), "invalid price"),
]


def config_for(tmp_path: Path, paths: list[str], fmt: str = "jsonl", **options: str) -> AppConfig:
    base = AppConfig()
    spec = dataclasses.replace(
        base.ingest.source.inputs[0], paths=tuple(paths), format=fmt, options=options
    )
    source = dataclasses.replace(base.ingest.source, inputs=(spec,))
    return dataclasses.replace(
        base,
        ingest=dataclasses.replace(base.ingest, source=source),
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
    )


@pytest.fixture
def hostile(spark: SparkSession, tmp_path: Path) -> tuple[AppConfig, Lake]:
    """Config and lake for a JSON-lines file holding every line of CASES."""
    raw = tmp_path / "in.jsonl"
    raw.write_text("\n".join(line for line, _ in CASES) + "\n")
    config = config_for(tmp_path, [str(raw)])
    return config, Lake(spark, config.lake)


def test_every_line_is_kept_deduplicated_or_quarantined_with_its_reason(
    spark: SparkSession, hostile: tuple[AppConfig, Lake]
) -> None:
    config, lake = hostile
    counts = ingest.run(spark, lake, config, run_id="run-1")

    expected_reasons = sorted(o for _, o in CASES if o not in ("kept", "duplicate"))
    assert counts.input_rows == len(CASES)
    assert counts.kept == sum(o == "kept" for _, o in CASES)
    assert counts.duplicates_removed == sum(o == "duplicate" for _, o in CASES)
    assert counts.quarantined == len(expected_reasons)
    assert counts.reconciles

    quarantine = lake.read("events_quarantine").collect()
    assert sorted(r["reason"] for r in quarantine) == expected_reasons
    by_reason = {r["reason"]: r for r in quarantine}
    # The raw record is kept verbatim, with the file it came from.
    assert by_reason["negative price"]["raw"] == record(event_id="e13", price=-5)
    assert all(r["source_file"].endswith("in.jsonl") for r in quarantine)
    assert all(r["ingest_run_id"] == "run-1" for r in quarantine)

    events = lake.read("events")
    got = events.select("event_id", "user_id", "event_ts", "event_type", "price", "query")
    expected = spark.createDataFrame(
        [
            ("e1", "u1", "2024-03-01 10:00:00", "view", 199.5, None),
            ("e1-resent", "u1", "2024-03-01 10:00:00", "view", 199.5, None),
            ("e2", "u1", "2024-03-01 10:05:00", "add_to_cart", 199.5, None),
            ("e3", "u1", "2024-03-01 10:05:00", "purchase", 199.5, None),
            ("e4", "u1", "2024-03-01 10:00:00", "search", None, "red shoes"),
        ],
        "event_id string, user_id string, event_ts string, event_type string, price double, "
        "query string",
    ).withColumn("event_ts", F.to_timestamp("event_ts"))
    assertDataFrameEqual(got, expected)
    assert tuple(f.name for f in events.schema) == contract_of(EVENTS).column_names
    assert {r["event_date"].isoformat() for r in events.collect()} == {"2024-03-01"}


def test_missing_source_ids_become_content_hashes(spark: SparkSession, tmp_path: Path) -> None:
    raw = tmp_path / "noid.jsonl"
    raw.write_text("\n".join([record(event_id=None), record(event_id=None)]) + "\n")
    config = config_for(tmp_path, [str(raw)])
    counts = ingest.run(spark, Lake(spark, config.lake), config, run_id="r")
    assert (counts.kept, counts.duplicates_removed) == (1, 1)
    event_id = Lake(spark, config.lake).read("events").first()["event_id"]  # type: ignore[index]
    # The first 128 bits of the SHA-256 of the line as stored (README "Duplicates and event ids").
    assert event_id == hashlib.sha256(record(event_id=None).encode()).hexdigest()[:32]


def test_csv_parquet_and_gzip_inputs_ingest_the_same_events(
    spark: SparkSession, tmp_path: Path
) -> None:
    good = [json.loads(line) for line, outcome in CASES if outcome == "kept"]
    fields = list(GOOD)
    table = pa.table({f: [None if r.get(f) is None else str(r[f]) for r in good] for f in fields})
    csv_path = tmp_path / "csv" / "events.csv.gz"
    csv_path.parent.mkdir()
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, tmp_path / "plain.csv")
    csv_path.write_bytes(gzip.compress((tmp_path / "plain.csv").read_bytes()))
    pq.write_table(table, tmp_path / "events.parquet")
    jsonl = tmp_path / "events.jsonl.gz"
    jsonl.write_bytes(gzip.compress(("\n".join(json.dumps(r) for r in good) + "\n").encode()))

    results = {}
    for name, path, fmt in [
        ("csv", csv_path.parent, "csv"),
        ("parquet", tmp_path / "events.parquet", "parquet"),
        ("jsonl", jsonl, "jsonl"),
    ]:
        config = config_for(tmp_path / name, [str(path)], fmt)
        lake = Lake(spark, config.lake)
        counts = ingest.run(spark, lake, config, run_id="r")
        assert (counts.input_rows, counts.kept, counts.quarantined) == (len(good), len(good), 0)
        # Lineage names each format's own file; the order within it is the same in all three.
        results[name] = lake.read("events").drop("ingest_run_id", "source_file")
    assertDataFrameEqual(results["csv"], results["jsonl"])
    assertDataFrameEqual(results["parquet"], results["jsonl"])


def test_malformed_csv_rows_are_quarantined_with_the_original_line(
    spark: SparkSession, tmp_path: Path
) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        "event_id,user,event_time,type,product_id,category_code,brand,price,search_query\n"
        "e1,u1,2024-03-01T10:00:00Z,view,p1,c,b,1.0,\n"
        "e2,u1,2024-03-01T10:01:00Z,view\n"
    )
    config = config_for(tmp_path, [str(path)], "csv")
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert (counts.kept, counts.quarantined) == (1, 1)
    bad = lake.read("events_quarantine").first()
    assert bad is not None
    assert (bad["reason"], bad["raw"]) == (
        "malformed csv record",
        "e2,u1,2024-03-01T10:01:00Z,view",
    )


def test_unusable_inputs_fail_with_a_message_naming_the_problem(
    spark: SparkSession, tmp_path: Path
) -> None:
    config = config_for(tmp_path, [str(tmp_path / "missing.jsonl")])
    with pytest.raises(IngestError, match=r"input path does not exist: .*missing\.jsonl"):
        ingest.run(spark, Lake(spark, config.lake), config, run_id="r")
    (tmp_path / "x.jsonl").write_text(record() + "\n")
    config = config_for(tmp_path, [str(tmp_path / "x.jsonl")])
    spec = dataclasses.replace(config.ingest.source.inputs[0], columns={"user_id": "user"})
    with pytest.raises(IngestError, match=r"maps no column for \['event_ts', 'event_type'\]"):
        normalise(read_raw(spark, spec), spec=spec, source=config.ingest.source)
    # An unsupported format is refused when the configuration is loaded, naming the key.
    conf = tmp_path / "xml.yaml"
    conf.write_text(
        "ingest:\n  source:\n    inputs:\n      - paths: [x.xml]\n        format: xml\n"
    )
    with pytest.raises(ConfigError, match=r"'ingest\.source\.inputs\[0\]\.format' must be one of"):
        load_config([conf])


def test_counts_summary_is_the_reconciliation_line_and_check_enforces_it() -> None:
    counts = IngestCounts(
        input_rows=1_234,
        kept=1_000,
        duplicates_removed=34,
        quarantined=200,
        quarantine_reasons={"missing user_id": 150, "negative price": 50},
    )
    assert counts.summary() == (
        "reconciliation OK: input 1,234 = kept 1,000 + duplicates 34 + quarantined 200"
    )
    counts.check()
    lost = dataclasses.replace(counts, kept=999)
    assert not lost.reconciles
    assert lost.summary().startswith("reconciliation MISMATCH: input 1,234 = kept 999 +")
    with pytest.raises(IngestError, match="row accounting failed: reconciliation MISMATCH"):
        lost.check()
    # Reasons that do not add up to the quarantined rows fail the check too.
    with pytest.raises(IngestError, match="row accounting failed"):
        dataclasses.replace(counts, quarantine_reasons={"missing user_id": 150}).check()


def test_rerunning_ingest_and_sessionize_leaves_identical_tables(
    spark: SparkSession, hostile: tuple[AppConfig, Lake]
) -> None:
    config, lake = hostile

    def snapshot() -> dict[str, list]:
        return {
            t: sorted(map(repr, lake.read(t).drop("ingest_run_id", "quarantined_at").collect()))
            for t in ("events", "events_quarantine", "sessions", "user_sequences")
        }

    ingest.run(spark, lake, config, run_id="first")
    sessionize.run(spark, lake, config, run_id="first")
    first = snapshot()
    ingest.run(spark, lake, config, run_id="second")
    sessionize.run(spark, lake, config, run_id="second")
    assert snapshot() == first
    assert lake.version("events") == 1 and lake.version("sessions") == 1
    events = lake.read("events")
    assert events.count() == events.select("event_id").distinct().count()
    assert {r[0] for r in events.select("ingest_run_id").distinct().collect()} == {"second"}


def test_rees46_sample_ingests_by_config_and_matches_vendor_sessions(
    spark: SparkSession, tmp_path: Path
) -> None:
    sample = shared_data("rees46-2019-oct-sample", "events.csv")
    config = load_config(
        [REPO / "conf" / "sources" / "rees46.yaml"],
        [f"lake.root={tmp_path / 'lake'}", "lake.engine=delta-rs"],
    )
    spec = dataclasses.replace(config.ingest.source.inputs[0], paths=(str(sample),))
    config = dataclasses.replace(
        config,
        ingest=dataclasses.replace(
            config.ingest, source=dataclasses.replace(config.ingest.source, inputs=(spec,))
        ),
    )
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    # The sample's README: 17,434 rows (17,055 view / 165 cart / 214 purchase).
    assert counts.input_rows == 17_434 and counts.reconciles
    assert counts.quarantined == 0
    events = lake.read("events")
    by_type = {r["event_type"]: r["count"] for r in events.groupBy("event_type").count().collect()}
    assert set(by_type) == {"view", "add_to_cart", "purchase"}
    # The file holds 5 exact duplicate rows (4 views, 1 cart), checked independently with pandas.
    assert counts.duplicates_removed == 5
    assert by_type == {"view": 17_055 - 4, "add_to_cart": 165 - 1, "purchase": 214}
    assert events.where("category is null").count() == 0  # category_id fills missing codes
    assert events.where("source_session_id is null").count() == 0

    assigned = events.transform(assign_sessions, config=config.sessionize)
    agreement = vendor_session_agreement(assigned).first()
    assert agreement is not None
    print(
        f"\nREES46 sample: {agreement['reproduced_exactly']:,} of "
        f"{agreement['vendor_sessions']:,} vendor sessions reproduced exactly "
        f"({agreement['share_reproduced']:.1%}) with a 30-minute gap"
    )
    assert agreement["vendor_sessions"] == 5_066
    # 80.9% of this sample's vendor sessions (README "Sessionization rules"); REES46 also cuts
    # sessions on app restarts, which a time-gap rule cannot see.  A 60-minute gap gives 4,098.
    assert agreement["reproduced_exactly"] == 4_097


def test_diginetica_views_and_purchases_ingest_with_the_category_lookup(
    spark: SparkSession, tmp_path: Path
) -> None:
    folder = shared_data("diginetica-sample")
    config = load_config(
        [REPO / "conf" / "sources" / "diginetica.yaml"],
        [f"lake.root={tmp_path / 'lake'}", "lake.engine=delta-rs"],
    )
    source = config.ingest.source
    inputs = tuple(
        dataclasses.replace(spec, paths=(str(folder / Path(spec.paths[0]).name),))
        for spec in source.inputs
    )
    lookups = tuple(
        dataclasses.replace(lk, path=str(folder / Path(lk.path).name)) for lk in source.lookups
    )
    config = dataclasses.replace(
        config,
        ingest=dataclasses.replace(
            config.ingest, source=dataclasses.replace(source, inputs=inputs, lookups=lookups)
        ),
    )
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="r")
    assert counts.input_rows == 12_391 + 18_025 and counts.reconciles
    events = lake.read("events")
    by_type = {r["event_type"]: r["count"] for r in events.groupBy("event_type").count().collect()}
    assert set(by_type) == {"view", "purchase"}
    # Every sampled view's item is in the category file, so the lookup fills them all.
    views = events.where("event_type = 'view'")
    assert views.where("category is null").count() == 0
    # Rows without a user (NA) become their session's anonymous user: 7,681 views and 11,322
    # purchases, less 26 purchase rows that repeat a line exactly (counted with pandas).
    anonymous = events.where(F.col("user_id").startswith("anon-session-")).count()
    assert anonymous == 7_681 + 11_322 - 26
    # Times are the session day plus the millisecond offset.
    first = events.where("source_session_id = '1' and item_id = '81766'").select("event_ts").first()
    assert first is not None and str(first[0]) == "2016-05-09 00:08:46.309000"


def test_local_time_zone_applies_only_to_wall_clock_text(
    spark: SparkSession, tmp_path: Path
) -> None:
    lines = [
        record(
            event_id="naive", product_id="p-naive", event_time="2024-03-01T10:00:00"
        ),  # Berlin wall clock
        record(event_id="zulu", product_id="p-zulu", event_time="2024-03-01T10:00:00Z"),
        record(event_id="offset", product_id="p-offset", event_time="2024-03-01T10:00:00+02:00"),
        record(event_id="epoch", product_id="p-epoch", event_time=1709287200000),
        record(event_id="exponent", product_id="p-exponent", event_time="1.7092872E12"),
    ]
    raw = tmp_path / "tz.jsonl"
    raw.write_text("\n".join(lines) + "\n")
    config = config_for(tmp_path, [str(raw)])
    source = dataclasses.replace(config.ingest.source, timezone="Europe/Berlin")
    config = dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, source=source))
    lake = Lake(spark, config.lake)
    counts = ingest.run(spark, lake, config, run_id="tz")
    assert counts.quarantined == 0
    got = {r["event_id"]: str(r["event_ts"]) for r in lake.read("events").collect()}
    assert got == {
        "naive": "2024-03-01 09:00:00",
        "zulu": "2024-03-01 10:00:00",
        "offset": "2024-03-01 08:00:00",
        "epoch": "2024-03-01 10:00:00",
        "exponent": "2024-03-01 10:00:00",
    }
