"""Crash safety (README: crash safety): a stage killed with SIGKILL during a write leaves each table
at a committed version, and the next run completes with the same tables as an uninterrupted
run.  The stage runs in a real child process (Python driver + JVM), killed from outside."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from jobs import ingest, sessionize
from jobs.core.config import AppConfig, LakeConfig
from jobs.core.lake import Lake
from jobs.synthetic import generate

from .conftest import REPO

TABLES = ("events", "events_quarantine", "ingest_log", "sessions", "user_sequences")


def _versions(root: Path) -> dict[str, int | None]:
    """Each table's version and the number of commits in its history (None: no table yet)."""
    out: dict[str, int | None] = {}
    for table in TABLES:
        path = root / table
        if (path / "_delta_log").is_dir():
            dt = DeltaTable(str(path))
            assert len(dt.history()) == dt.version() + 1
            out[table] = dt.version()
        else:
            out[table] = None
    return out


def _kill_when(
    command: list[str], cwd: Path, ready: Callable[[], bool], timeout_s: float = 240
) -> None:
    """Start ``command``, SIGKILL its whole process group (driver and JVM) as soon as
    ``ready()`` holds, and fail if the process ended on its own first."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            if process.poll() is not None:
                err = process.stderr.read().decode()[-3000:] if process.stderr else ""
                pytest.fail(f"stage finished (rc {process.returncode}) before the kill:\n{err}")
            if time.monotonic() > deadline:
                pytest.fail("the watched write never started")
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        if process.stderr:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _stage(name: str, lake_root: Path, *overrides: str) -> list[str]:
    sets = [
        "spark.master=local[2]",
        "spark.shuffle_partitions=2",
        "spark.driver_memory=1g",
        "lake.engine=delta-rs",
        f"lake.root={lake_root}",
        *overrides,
    ]
    return [sys.executable, "-m", "jobs.cli", name, *[a for s in sets for a in ("--set", s)]]


@pytest.mark.slow
def test_killed_stages_leave_committed_versions_and_a_rerun_completes(
    spark: SparkSession, tmp_path: Path
) -> None:
    base = AppConfig()
    raw = tmp_path / "generated"
    gen = dataclasses.replace(
        base.generate,
        n_users=300,
        n_days=4,
        output_dir=str(raw),
        ground_truth_path=str(tmp_path / "truth.csv"),
    )
    files = sorted(Path(f) for f in generate(gen).files)
    # The child processes run in tmp_path with the default input path, data/raw/synthetic/jsonl.
    inbox = tmp_path / "data" / "raw" / "synthetic" / "jsonl"
    inbox.mkdir(parents=True)
    spec = dataclasses.replace(base.ingest.source.inputs[0], paths=(str(inbox),))
    root = tmp_path / "lake"
    config = dataclasses.replace(
        base,
        ingest=dataclasses.replace(
            base.ingest,
            mode="incremental",
            source=dataclasses.replace(base.ingest.source, inputs=(spec,)),
        ),
        sessionize=dataclasses.replace(base.sessionize, mode="incremental"),
        lake=LakeConfig(engine="delta-rs", root=str(root)),
    )
    lake = Lake(spark, config.lake)
    for path in files[:3]:
        shutil.copy(path, inbox / path.name)
    ingest.run(spark, lake, config, run_id="day1")
    sessionize.run(spark, lake, config, run_id="day1")
    for path in files[3:]:
        shutil.copy(path, inbox / path.name)

    # A reference lake that takes the same second day without interruption.
    reference_root = tmp_path / "reference"
    shutil.copytree(root, reference_root)
    reference = Lake(spark, LakeConfig(engine="delta-rs", root=str(reference_root)))
    ref_config = dataclasses.replace(config, lake=reference.config)
    ingest.run(spark, reference, ref_config, run_id="day2")
    sessionize.run(spark, reference, ref_config, run_id="day2")

    before = _versions(root)

    # 1. ingest killed after its events commit but before ingest_log is written.
    events_log = root / "events" / "_delta_log"
    committed = len(list(events_log.glob("*.json")))
    _kill_when(
        _stage("ingest", root, "ingest.mode=incremental"),
        tmp_path,
        lambda: len(list(events_log.glob("*.json"))) > committed,
    )
    after_ingest_kill = _versions(root)
    assert after_ingest_kill["events"] == before["events"] + 1  # type: ignore[operator]
    assert after_ingest_kill["ingest_log"] == before["ingest_log"]  # the files stay unlisted

    sessions_before = lake.read("sessions").collect()
    # 2. sessionize killed while it writes sessions: every table keeps its version.
    staging = root / "sessions" / "_staging"
    _kill_when(
        _stage("sessionize", root, "sessionize.mode=incremental"),
        tmp_path,
        lambda: staging.is_dir() and any(staging.iterdir()),
    )
    assert _versions(root) == after_ingest_kill
    assertDataFrameEqual(lake.read("sessions"), sessions_before)  # the committed version

    # 3. Rerunning both stages completes the day: the same tables as the uninterrupted lake.
    again = ingest.run(spark, lake, config, run_id="day2-retry")
    assert again.reconciles and again.kept == 0  # the events were committed before the kill
    sessionize.run(spark, lake, config, run_id="day2-retry")
    for table in ("sessions", "user_sequences"):
        assertDataFrameEqual(lake.read(table), reference.read(table))
    assert lake.read("events").count() == reference.read("events").count()
    quarantine = lake.read("events_quarantine").drop("ingest_run_id", "quarantined_at")
    assertDataFrameEqual(
        quarantine, reference.read("events_quarantine").drop("ingest_run_id", "quarantined_at")
    )
