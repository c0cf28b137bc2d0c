"""Honest accounting (README: "Bad input"): ``input = kept + duplicates + quarantined`` with each
term counted on its own and checked before anything is committed, so a step that loses a row
fails the run; and a run that would keep nothing stops with the reasons instead."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import ingest
from jobs.core.config import AppConfig, LakeConfig
from jobs.core.lake import Lake
from jobs.core.tables import EVENTS, EVENTS_QUARANTINE, INGEST_LOG
from jobs.ingest import IngestError
from jobs.sources import dedup
from jobs.sources.accounting import IngestCounts


def line(event_id: str, minute: int = 0, **changes: object) -> str:
    record = {
        "event_id": event_id,
        "user": "u1",
        "event_time": f"2024-03-01T10:{minute:02d}:00Z",
        "type": "view",
        "product_id": "p1",
    }
    return json.dumps({k: v for k, v in {**record, **changes}.items() if v != "<absent>"})


def config_for(tmp_path: Path, path: Path, *, mode: str = "full") -> AppConfig:
    base = AppConfig()
    spec = dataclasses.replace(base.ingest.source.inputs[0], paths=(str(path),))
    source = dataclasses.replace(base.ingest.source, inputs=(spec,))
    return dataclasses.replace(
        base,
        ingest=dataclasses.replace(base.ingest, source=source, mode=mode),  # type: ignore[arg-type]
        lake=LakeConfig(engine="delta-rs", root=str(tmp_path / "lake")),
    )


def versions(lake: Lake) -> dict[str, int]:
    return {t: lake.version(t) for t in (EVENTS, EVENTS_QUARANTINE, INGEST_LOG)}


@pytest.fixture(scope="module")
def _first_ingest(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three events and one duplicate, ingested once (every table at version 0): the folder
    holding the input and the lake, for each test to copy."""
    root = tmp_path_factory.mktemp("ingested")
    path = root / "in.jsonl"
    path.write_text("\n".join([line("e1"), line("e2", 1), line("e3", 2), line("e1")]) + "\n")
    config = config_for(root, path)
    counts = ingest.run(spark, Lake(spark, config.lake), config, run_id="first")
    assert counts.summary() == "reconciliation OK: input 4 = kept 3 + duplicates 1 + quarantined 0"
    return root


@pytest.fixture
def ingested(spark: SparkSession, tmp_path: Path, _first_ingest: Path) -> tuple[AppConfig, Lake]:
    """A copy of the module's first ingest in this test's folder."""
    shutil.copytree(_first_ingest, tmp_path, dirs_exist_ok=True)
    config = config_for(tmp_path, tmp_path / "in.jsonl")
    return config, Lake(spark, config.lake)


def test_a_step_that_loses_a_row_fails_the_check_before_any_commit(
    spark: SparkSession, ingested: tuple[AppConfig, Lake], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, lake = ingested
    real = dedup.label_duplicates

    def loses_e2(rows: DataFrame, **options: object) -> DataFrame:
        return real(rows, **options).where(F.col("event_id") != "e2")  # type: ignore[arg-type]

    monkeypatch.setattr(ingest, "label_duplicates", loses_e2)
    with pytest.raises(
        IngestError,
        match=r"^row accounting failed: reconciliation MISMATCH: input 4 = kept 2 \+ "
        r"duplicates 1 \+ quarantined 0$",
    ):
        ingest.run(spark, lake, config, run_id="second")
    assert versions(lake) == {EVENTS: 0, EVENTS_QUARANTINE: 0, INGEST_LOG: 0}
    assert sorted(r["event_id"] for r in lake.read(EVENTS).collect()) == ["e1", "e2", "e3"]


def test_a_write_that_commits_other_rows_than_counted_fails_naming_the_table(
    spark: SparkSession, ingested: tuple[AppConfig, Lake], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, lake = ingested
    real = dedup.kept_events
    monkeypatch.setattr(
        ingest, "kept_events", lambda labelled: real(labelled).where(F.col("event_id") != "e3")
    )
    with pytest.raises(
        IngestError, match=r"^events: the write committed 2 rows, the row accounting counted 3$"
    ):
        ingest.run(spark, lake, config, run_id="second")
    # ingest_log, the watermark, is not written after a failed check.
    assert lake.version(INGEST_LOG) == 0
    assert {r["ingest_run_id"] for r in lake.read(INGEST_LOG).collect()} == {"first"}


def test_a_run_that_keeps_nothing_names_the_top_reasons_and_the_mapping(
    spark: SparkSession, ingested: tuple[AppConfig, Lake], tmp_path: Path
) -> None:
    _, lake = ingested
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                line("b1", user="<absent>"),
                line("b2", type="wishlist"),
                line("b3", user="<absent>", userId="u1"),
            ]
        )
        + "\n"
    )
    config = dataclasses.replace(config_for(tmp_path, bad), lake=lake.config)
    with pytest.raises(IngestError) as failure:
        ingest.run(spark, lake, config, run_id="bad")
    assert str(failure.value) == (
        "no events kept from 3 records: top reasons missing user_id (2), "
        "unknown event_type: wishlist (1); check the mapping ingest.source (synthetic) in "
        f"ingest.source.inputs[].columns: inputs[0] (jsonl ['{bad}']) maps "
        "event_id <- event_id, user_id <- user, event_ts <- event_time, event_type <- type, "
        "item_id <- product_id, category <- category_code, brand <- brand, price <- price, "
        "query <- search_query"
    )
    assert versions(lake) == {EVENTS: 0, EVENTS_QUARANTINE: 0, INGEST_LOG: 0}


@pytest.mark.slow  # four ingest runs: about 25 s
def test_incremental_runs_of_only_duplicates_pass_and_of_only_bad_records_stop(
    spark: SparkSession, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "day1.jsonl").write_text(line("e1") + "\n" + line("e2", 1) + "\n")
    config = config_for(tmp_path, inbox, mode="incremental")
    lake = Lake(spark, config.lake)
    ingest.run(spark, lake, config, run_id="day1")

    # A file that only re-sends events: nothing new is kept, and that is fine.
    (inbox / "day2.jsonl").write_text(line("e2", 1) + "\n" + line("e1") + "\n")
    resent = ingest.run(spark, lake, config, run_id="day2")
    assert resent.summary() == "reconciliation OK: input 2 = kept 0 + duplicates 2 + quarantined 0"
    # No new file: a no-op.
    assert ingest.run(spark, lake, config, run_id="day2b").input_rows == 0

    (inbox / "day3.jsonl").write_text(line("e3", 2, event_time="yesterday") + "\n")
    before = versions(lake)
    with pytest.raises(
        IngestError, match=r"^no events kept from 1 records: top reasons unparseable event_ts: "
    ):
        ingest.run(spark, lake, config, run_id="day3")
    assert versions(lake) == before


def test_the_reconciliation_line_adds_collapsed_only_when_collapsing() -> None:
    counts = IngestCounts(input_rows=10, kept=6, duplicates_removed=1, quarantined=2)
    assert not counts.reconciles  # one record unaccounted for
    collapsing = dataclasses.replace(counts, collapsed=1)
    assert collapsing.reconciles
    assert collapsing.summary() == (
        "reconciliation OK: input 10 = kept 6 + duplicates 1 + quarantined 2 + collapsed 1"
    )
    with pytest.raises(IngestError, match="row accounting failed: reconciliation MISMATCH"):
        counts.check()
