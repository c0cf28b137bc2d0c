"""Overlapping incremental ingest runs: two real `segments ingest` processes started together on
one new file never append its events twice; the later one is a no-op or fails with a clear
conflict message (Delta transaction ids, compare-and-swap on commit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from .conftest import REPO


def _line(n: int, user: str, minute: int) -> str:
    return json.dumps(
        {
            "event_id": f"e{n:04d}",
            "user": user,
            "event_time": f"2024-03-01T10:{minute:02d}:00Z",
            "type": "view",
            "product_id": f"p{n % 7}",
            "category_code": "electronics.phone",
            "brand": "acme",
            "price": 10.0 + n,
        }
    )


def _ingest(inbox: Path, root: Path) -> list[str]:
    sets = [
        "spark.master=local[1]",
        "spark.shuffle_partitions=1",
        "spark.driver_memory=1g",
        "lake.engine=delta-rs",
        f"lake.root={root}",
        "ingest.mode=incremental",
        f"ingest.source.inputs=[{{paths: ['{inbox}'], format: jsonl, columns: {{event_id: "
        "event_id, user_id: user, event_ts: event_time, event_type: type, item_id: product_id, "
        "category: category_code, brand: brand, price: price}}]",
    ]
    return [sys.executable, "-m", "jobs.cli", "ingest", *[a for s in sets for a in ("--set", s)]]


@pytest.mark.slow
def test_two_runs_started_together_ingest_a_new_file_once(tmp_path: Path) -> None:
    inbox, root = tmp_path / "inbox", tmp_path / "lake"
    inbox.mkdir()
    (inbox / "day1.jsonl").write_text("\n".join(_line(n, f"u{n % 5}", n % 60) for n in range(40)))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    first = subprocess.run(
        _ingest(inbox, root), cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr[-3000:]

    (inbox / "day2.jsonl").write_text(
        "\n".join(_line(n, f"u{n % 5}", n % 60) for n in range(40, 100))
    )
    runs = [
        subprocess.Popen(
            _ingest(inbox, root),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    for code, _, err in outcomes:
        assert "Traceback" not in err, err[-3000:]
        if code != 0:  # the later run: a one-line conflict message, nothing written by it
            assert code == 1, err[-3000:]
            assert "concurrent" in err.splitlines()[-1], err[-3000:]
    assert any(code == 0 for code, _, _ in outcomes)

    events = DeltaTable(str(root / "events")).to_pyarrow_table(columns=["event_id"])
    ids = events.column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == 100  # every event once, none twice
    logged = DeltaTable(str(root / "ingest_log")).to_pyarrow_table(columns=["source_file"])
    names = sorted(Path(p).name for p in logged.column("source_file").to_pylist())
    assert names == ["day1.jsonl", "day2.jsonl"]  # the new file is listed once

    # A rerun afterwards finds nothing new.
    again = subprocess.run(
        _ingest(inbox, root), cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "input 0 = kept 0" in again.stdout
