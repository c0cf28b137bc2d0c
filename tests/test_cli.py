"""The command line refuses bad settings before any Spark work: exit code 2, one line naming
the key, no traceback."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from .conftest import REPO


def _segments(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.parametrize(
    ("stage", "override", "expected"),
    [
        ("cluster", "cluster.backend=gpuu", "key 'cluster.backend' must be one of auto, gpu, cpu"),
        (
            "embed",
            "encoder.max_length=1024",
            "encoder.max_length=1024 exceeds the model's max_position_embeddings=512",
        ),
        (
            "embed",
            "encoder.device=cuda",
            "encoder.device=cuda but this machine has no usable CUDA device",
        ),
    ],
)
def test_bad_setting_exits_2_with_one_line_naming_the_key(
    stage: str, override: str, expected: str
) -> None:
    if "device=cuda" in override and _has_cuda():
        pytest.skip("this machine has CUDA: encoder.device=cuda is a valid setting here")
    result = _segments(stage, "--conf", "conf/local.yaml", "--set", override)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"segments {stage}: config error: {lines[0].split('config error: ', 1)[1]}"]
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert "SparkSession" not in result.stderr and "py4j" not in result.stderr


def test_unknown_command_lists_the_registered_stages() -> None:
    result = _segments("sessionise")
    assert result.returncode == 2
    assert result.stdout == ""
    for stage in ("ingest", "sessionize", "embed", "cluster", "evaluate", "pipeline"):
        assert stage in result.stderr
    assert result.stderr.splitlines()[-1] == "segments: error: unknown command 'sessionise'"
    asked = _segments("--help")
    assert asked.returncode == 0
    assert "sessionize" in asked.stdout
    assert asked.stderr == ""


def test_pipeline_range_in_the_wrong_order_is_a_usage_error() -> None:
    result = _segments("pipeline", "--from", "cluster", "--to", "ingest")
    assert result.returncode == 2
    assert "--from cluster comes after --to ingest" in result.stderr


def test_maintain_compacts_and_vacuums_the_existing_tables(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``segments maintain`` on a lake with one table written in two commits: OPTIMIZE
    compacts its two files, VACUUM (retention 0) deletes the replaced ones, the rows stay."""
    from jobs.core.config import LakeConfig
    from jobs.core.lake import Lake
    from jobs.core.tables import SESSIONIZE_LOG, TABLES
    from jobs.maintain import main

    root = tmp_path / "lake"
    lake = Lake(spark, LakeConfig(engine="delta-rs", root=str(root)))
    schema = TABLES[SESSIONIZE_LOG].schema
    for run in ("r1", "r2"):  # two commits, one file each
        row = {f.name: None for f in schema.fields} | {"run_id": run}
        lake.append(SESSIONIZE_LOG, spark.createDataFrame([row], schema).coalesce(1))
    code = main(
        ["--set", f"lake.root={root}", "--retain-hours", "0", "--set", "mlflow.enabled=false"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "maintenance: 1 tables on the delta-rs engine" in out
    # The two files become one; with no retention, VACUUM deletes the two replaced ones.
    assert f"{SESSIONIZE_LOG}: v1 -> v" in out
    assert "2 files compacted, 2 files vacuumed" in out
    assert sorted(r["run_id"] for r in lake.read(SESSIONIZE_LOG).collect()) == ["r1", "r2"]
    unknown = main(["--tables", "nope"])
    assert unknown == 2


def test_spark_error_lines_keep_the_first_line_of_a_java_trace_unless_debugging() -> None:
    from jobs.core.logs import log4j2_config_file

    def pattern(level: str) -> str:
        text = log4j2_config_file(level).read_text()
        return next(x for x in text.splitlines() if x.startswith("appender.console.layout.p"))

    assert pattern("ERROR").endswith(": %m %ex{1}%n")  # the default: one line per error
    assert pattern("WARN").endswith(": %m%n%ex")  # --log-level DEBUG: the whole trace
    # A code-generation failure Spark recovers from is not an error the user must read.
    codegen = "org.apache.spark.sql.catalyst.expressions.codegen.CodeGenerator"
    for level, shown in (("ERROR", "fatal"), ("WARN", "WARN")):
        lines = log4j2_config_file(level).read_text().splitlines()
        assert f"logger.codegen.name = {codegen}" in lines
        assert f"logger.codegen.level = {shown}" in lines


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_spark_errors_a_stage_handles_print_no_java_frames_unless_debugging(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PySpark logs every error Spark raises (plan and Java frames, as JSON on stderr) when the
    Python exception is made, before the stage can turn it into one line naming the setting
    (e.g. a mapping expression over a field the files lack)."""
    from pyspark.errors import AnalysisException
    from pyspark.logger import PySparkLogger
    from pyspark.sql import functions as F

    from jobs.core.logs import PYSPARK_ERROR_CONTEXT_LOGGERS, setup_logging

    monkeypatch.setenv("SEGMENTS_SPARK_LOG_LEVEL", "ERROR")  # setup_logging sets it
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    loggers = [PySparkLogger.getLogger(name) for name in PYSPARK_ERROR_CONTEXT_LOGGERS]
    saved_levels = [logger.level for logger in loggers]
    seen = _Records()
    for logger in loggers:
        logger.addHandler(seen)
    try:
        for level, shown in (("INFO", False), ("DEBUG", True)):
            setup_logging(level)
            seen.records.clear()
            with pytest.raises(AnalysisException):
                spark.range(1).select(F.col("no_such_field")).collect()
            errors = [r for r in seen.records if r.levelno >= logging.ERROR]
            assert bool(errors) == shown, (level, [r.getMessage()[:200] for r in errors])
    finally:
        for logger, saved in zip(loggers, saved_levels, strict=True):
            logger.removeHandler(seen)
            logger.setLevel(saved)
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]


@pytest.mark.slow  # a Spark run in a subprocess (about 18 s); the pattern is checked above
def test_a_file_spark_cannot_read_fails_with_lines_a_person_can_read(tmp_path: Path) -> None:
    # Two CSV files whose headers differ: Spark's task fails, and its executor logs the error.
    overlay = tmp_path / "drift.yaml"
    overlay.write_text(
        f"lake: {{root: {tmp_path / 'lake'}}}\n"
        "mlflow: {enabled: false}\n"
        "ingest: {source: {inputs: [{paths: ["
        f"{REPO / 'tests' / 'hostile' / 'csv_header_drift'}], format: csv, columns: "
        "{user_id: user, event_ts: event_time, event_type: type}}]}}\n"
    )
    result = _segments("ingest", "--conf", "conf/local.yaml", "--conf", str(overlay))
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1].startswith(
        "segments ingest: error: cannot read input file "
    ), result.stderr[-3000:]
    # Spark's own error lines keep their first line, not the Java frames under it.
    assert "\tat org.apache" not in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
