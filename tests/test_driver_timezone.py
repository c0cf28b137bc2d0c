"""A driver whose local time zone is not UTC: incremental sessionize still equals a full
rebuild (README: "Daily incremental runs"), and the backtest's cutoff is the UTC instant.

PySpark turns naive Python datetimes into instants in the driver's local zone, both ways, so a
driver outside UTC must never hand Spark a naive datetime.  The check runs in a subprocess
with ``TZ=America/Los_Angeles`` (the JVM and Python both read it at start-up).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import dataclasses
    import sys
    import time
    from datetime import datetime, timezone

    from pyspark.testing import assertDataFrameEqual

    from jobs import sessionize
    from jobs.core.config import AppConfig, LakeConfig, SparkConfig
    from jobs.core.lake import Lake
    from jobs.core.session import get_spark
    from jobs.core.tables import EVENTS, contract_of

    assert time.strftime("%Z", time.localtime(1709287200)) == "PST", time.tzname
    root = sys.argv[1]
    spark = get_spark(
        SparkConfig(master="local[1]", shuffle_partitions=1, driver_memory="1g", extra={
            "spark.ui.showConsoleProgress": "false", "spark.sql.adaptive.enabled": "false"})
    )
    schema = contract_of(EVENTS).schema

    def events(rows, run_id):
        out = []
        for i, (event_id, user, text) in enumerate(rows):
            ts = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)  # an instant
            values = {
                "event_id": event_id, "user_id": user, "event_ts": ts, "event_type": "view",
                "item_id": "i1", "price": 1.0, "source_file": f"file:/raw/{run_id}.jsonl",
                "source_order": i, "event_date": ts.date(), "ingest_run_id": run_id,
            }
            out.append(tuple(values.get(name) for name in schema.fieldNames()))
        return spark.createDataFrame(out, schema)

    first = [
        # u1's session runs from 07:50Z to 08:05Z: across 00:00 Los Angeles time (08:00Z).
        ("e1", "u1", "2024-03-01 07:50:00"),
        ("e2", "u1", "2024-03-01 08:05:00"),
        ("e3", "u2", "2024-03-01 12:00:00"),
        ("e4", "u3", "2024-03-01 23:50:00"),
    ]
    late = [
        ("e5", "u2", "2024-03-01 12:10:00"),
        ("e6", "u3", "2024-03-02 00:10:00"),  # continues u3's session across UTC midnight
        ("e7", "u1", "2024-03-02 09:00:00"),
    ]
    base = AppConfig()
    cfg = dataclasses.replace(base.sessionize, lookback_hours=0, mode="incremental")
    inc = dataclasses.replace(
        base, sessionize=cfg, lake=LakeConfig(engine="delta-rs", root=f"{root}/inc")
    )
    lake = Lake(spark, inc.lake)
    lake.overwrite("events", events(first, "r1"))
    sessionize.run(spark, lake, inc, run_id="s1")
    lake.append("events", events(late, "r2"))
    counts = sessionize.run(spark, lake, inc, run_id="s2")
    assert counts.mode == "incremental" and counts.partitions_rewritten > 0, counts
    assert str(counts.window_start) == "2024-03-01", counts

    full = dataclasses.replace(
        base,
        sessionize=dataclasses.replace(cfg, mode="full"),
        lake=LakeConfig(engine="delta-rs", root=f"{root}/full"),
    )
    full_lake = Lake(spark, full.lake)
    full_lake.overwrite("events", events(first + late, "r1"))
    sessionize.run(spark, full_lake, full, run_id="full")
    for table in ("sessions", "user_sequences"):
        assertDataFrameEqual(lake.read(table), full_lake.read(table))
    n_events = {
        r["user_id"]: r["n"]
        for r in lake.read("sessions").groupBy("user_id").sum("n_events")
        .withColumnRenamed("sum(n_events)", "n").collect()
    }
    assert n_events == {"u1": 3, "u2": 2, "u3": 2}, n_events
    assert lake.read("sessions").count() == 4  # u1 twice, u2 once, u3 once (across midnight)
    print("incremental == full")

    # The backtest's cutoff is the UTC instant, also inside the repeated hour of the switch
    # back from daylight-saving time (2024-11-03 01:00-02:00 in Los Angeles).
    from pyspark.sql import functions as F

    from jobs.core.config import EvaluateConfig
    from jobs.evaluation.protocol import future_cutoff, split_events

    def at(text):
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)

    stamps = [at("2024-11-03 08:40:00"), at("2024-11-03 09:20:00"), at("2024-11-03 09:40:00")]
    sessions = spark.createDataFrame(
        [("s1", "u1", [(t, f"i{i}") for i, t in enumerate(stamps)])],
        "session_id string, user_id string, events array<struct<ts timestamp, item_id string>>",
    )
    config = EvaluateConfig(holdout_days=30 / 1440)  # 09:40Z - 30 min = 09:10Z (01:10 PST)
    cutoff = future_cutoff(sessions, config)
    assert cutoff == at("2024-11-03 09:10:00"), cutoff
    assert f"{cutoff:%Y-%m-%d %H:%M:%S}" == "2024-11-03 09:10:00", cutoff
    split = split_events(
        sessions, protocol="future", unit="user", config=config, cutoff=cutoff
    ).first()
    sides = ([e["item_id"] for e in split["history"]], [e["item_id"] for e in split["future"]])
    assert sides == (["i0"], ["i1", "i2"]), sides
    print("cutoff in UTC")
    """
)


@pytest.mark.slow
def test_incremental_sessionize_equals_full_on_a_driver_in_los_angeles(tmp_path: Path) -> None:
    env = {**os.environ, "TZ": "America/Los_Angeles", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    assert "incremental == full" in result.stdout
    assert "cutoff in UTC" in result.stdout
