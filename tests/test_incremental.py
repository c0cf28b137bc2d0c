"""Incremental ingest + sessionize: daily files with late events end in the same tables as one
full run (README: daily incremental runs)."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import date, datetime
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from jobs import ingest, sessionize
from jobs.core.config import AppConfig, LakeConfig, NoiseConfig
from jobs.core.lake import Lake
from jobs.core.tables import EVENTS, contract_of
from jobs.sequences.incremental import incremental_window
from jobs.synthetic import generate


def event_rows(rows: list[tuple[str, str, str]], *, run_id: str) -> list[tuple]:
    """(event_id, user, "YYYY-MM-DD HH:MM:SS") -> rows of the ``events`` contract."""
    out = []
    for i, (event_id, user, text) in enumerate(rows):
        ts = datetime.fromisoformat(text)
        source_file, source_order = f"file:/raw/{run_id}.jsonl", i * 65536
        values = ("view", "i1", "c1", None, 1.0, None, None, source_file, source_order)
        out.append((event_id, user, ts, *values, ts.date(), run_id))
    return out


def _config(base: AppConfig, inbox: Path, lake_root: Path, mode: str) -> AppConfig:
    spec = dataclasses.replace(base.ingest.source.inputs[0], paths=(str(inbox),), format="jsonl")
    return dataclasses.replace(
        base,
        ingest=dataclasses.replace(
            base.ingest,
            mode=mode,
            source=dataclasses.replace(base.ingest.source, inputs=(spec,)),
        ),
        # Correctness does not rest on the lookback (the window starts from the earliest new
        # event); a short one shows that late days recompute only a few partitions.
        sessionize=dataclasses.replace(base.sessionize, mode=mode, lookback_hours=24),
        lake=LakeConfig(engine="delta-rs", root=str(lake_root)),
    )


@pytest.mark.slow
def test_daily_incremental_runs_with_late_data_equal_one_full_run(
    spark: SparkSession, tmp_path: Path
) -> None:
    base = AppConfig()
    raw = tmp_path / "raw"
    generated = generate(
        dataclasses.replace(
            base.generate,
            n_users=250,
            n_days=5,
            output_dir=str(raw),
            ground_truth_path=str(tmp_path / "truth.csv"),
            # Many late arrivals (1-3 days) and re-sent duplicates, plus the usual bots.
            noise=dataclasses.replace(NoiseConfig(), late_rate=0.08, duplicate_rate=0.03),
        )
    )
    daily_files = sorted(Path(f) for f in generated.files)
    assert len(daily_files) == 5 + 3  # arrival days run up to max_late_days past the last day

    full = _config(base, raw / "jsonl", tmp_path / "full", "full")
    full_lake = Lake(spark, full.lake)
    full_counts = ingest.run(spark, full_lake, full, run_id="full")
    sessionize.run(spark, full_lake, full, run_id="full")

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    daily = _config(base, inbox, tmp_path / "daily", "incremental")
    lake = Lake(spark, daily.lake)
    totals = {"input": 0, "kept": 0, "duplicates": 0, "quarantined": 0}
    windows = []
    for day, path in enumerate(daily_files):
        shutil.copy(path, inbox / path.name)
        counts = ingest.run(spark, lake, daily, run_id=f"day{day}")
        assert counts.reconciles
        totals["input"] += counts.input_rows
        totals["kept"] += counts.kept
        totals["duplicates"] += counts.duplicates_removed
        totals["quarantined"] += counts.quarantined
        result = sessionize.run(spark, lake, daily, run_id=f"day{day}")
        windows.append(result.window_start)

    # Later days recompute only a window, not the whole history.
    assert windows[0] is None  # the first run has nothing to build on
    # The last file holds only events 3 days late (from 2024-03-05): a few partitions change.
    assert windows[-1] is not None and windows[-1] >= date(2024, 3, 3), windows
    # Every raw record is accounted for exactly as in the full run.
    assert totals == {
        "input": full_counts.input_rows,
        "kept": full_counts.kept,
        "duplicates": full_counts.duplicates_removed,
        "quarantined": full_counts.quarantined,
    }
    assert lake.read("events").count() == full_counts.kept

    # The same events with the same lineage: a record's order within its file does not depend on
    # which other files a run read (the files sit in other folders, so compare their names).
    def lineage(events: DataFrame) -> DataFrame:
        name = F.regexp_extract("source_file", r"([^/]+)$", 1)
        return events.drop("ingest_run_id").withColumn("source_file", name)

    assertDataFrameEqual(lineage(lake.read("events")), lineage(full_lake.read("events")))

    for table in ("sessions", "user_sequences"):
        assertDataFrameEqual(lake.read(table), full_lake.read(table))
    assert lake.read("sessions").where("is_bot").count() > 0  # bots were flagged incrementally

    # A run with no new files changes nothing.
    versions = {t: lake.version(t) for t in ("events", "sessions", "user_sequences")}
    assert ingest.run(spark, lake, daily, run_id="again").input_rows == 0
    assert sessionize.run(spark, lake, daily, run_id="again").partitions_rewritten == 0
    assert versions == {t: lake.version(t) for t in versions}


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_session_that_crosses_the_window_start_is_recomputed_from_its_start(
    spark: SparkSession, tmp_path: Path
) -> None:
    check_crossing_session(spark, tmp_path, engine="delta-rs")


def check_crossing_session(spark: SparkSession, tmp_path: Path, *, engine: str) -> None:
    """A late event 20 minutes after a session that started the day before the lookback window
    joins that session, exactly as in a full rebuild; the rebuilt users are merged into
    ``user_sequences`` (Delta MERGE).  ``engine``: the lake engine (tests/test_delta_native.py
    runs this on the spark engine under Spark Connect)."""
    base = AppConfig()
    cfg = dataclasses.replace(base.sessionize, lookback_hours=0, mode="incremental")
    config = dataclasses.replace(
        base,
        sessionize=cfg,
        lake=LakeConfig(engine=engine, root=str(tmp_path / "inc")),  # type: ignore[arg-type]
    )
    first = [
        ("e1", "u1", "2024-03-01 23:40:00"),
        ("e2", "u1", "2024-03-02 00:10:00"),  # the session crosses midnight
        ("e3", "u2", "2024-03-02 09:00:00"),
    ]
    late = [("e4", "u1", "2024-03-02 00:35:00"), ("e5", "u2", "2024-03-02 09:20:00")]
    lake = Lake(spark, config.lake)
    schema = contract_of(EVENTS).schema
    lake.overwrite("events", spark.createDataFrame(event_rows(first, run_id="r1"), schema))
    sessionize.run(spark, lake, config, run_id="s1")
    lake.append("events", spark.createDataFrame(event_rows(late, run_id="r2"), schema))

    window = incremental_window(
        lake.read("sessions"), first_new_event=_ts("2024-03-02 00:35:00"), config=cfg
    )
    assert window.start_date == date(2024, 3, 2)
    # Only u1's session reaches the window; u1 is recomputed from that session's start.
    assertDataFrameEqual(window.cuts, [Row(user_id="u1", cut=_ts("2024-03-01 23:40:00"))])

    counts = sessionize.run(spark, lake, config, run_id="s2")
    assert counts.mode == "incremental" and counts.partitions_rewritten == 2
    full_lake = Lake(spark, LakeConfig(engine=engine, root=str(tmp_path / "full")))  # type: ignore[arg-type]
    full_lake.overwrite("events", lake.read("events"))
    full = dataclasses.replace(
        config, sessionize=dataclasses.replace(cfg, mode="full"), lake=full_lake.config
    )
    sessionize.run(spark, full_lake, full, run_id="full")
    for table in ("sessions", "user_sequences"):
        assertDataFrameEqual(lake.read(table), full_lake.read(table))
    assert lake.read("sessions").where("user_id = 'u1'").select("n_events").collect() == [Row(3)]
    # Both users' sequences were rebuilt and merged in (Delta MERGE on user_id), not rewritten.
    last = DeltaTable(str(tmp_path / "inc" / "user_sequences")).history(1)[0]
    assert last["operation"] == "MERGE"
    metrics = last["operationMetrics"]  # delta-rs's names, or delta-spark's
    assert int(metrics.get("num_target_rows_updated", metrics.get("numTargetRowsUpdated"))) == 2
