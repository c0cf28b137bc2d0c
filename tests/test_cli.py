"""The command line refuses bad settings before any Spark work: exit code 2, one line naming
the key, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
    for stage in ("ingest", "sessionize", "embed", "cluster", "evaluate", "pipeline"):
        assert stage in result.stdout


def test_pipeline_range_in_the_wrong_order_is_a_usage_error() -> None:
    result = _segments("pipeline", "--from", "cluster", "--to", "ingest")
    assert result.returncode == 2
    assert "--from cluster comes after --to ingest" in result.stderr
