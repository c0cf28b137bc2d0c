"""One generation: clean events, planted noise, raw files and the ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jobs.core.config import GenerateConfig
from jobs.synthetic.events import generate_events
from jobs.synthetic.noise import plant_noise
from jobs.synthetic.writers import write_format, write_ground_truth


@dataclass(frozen=True)
class GenerateResult:
    """What one generation wrote (counts are those of the first configured format)."""

    n_events_clean: int
    n_lines_written: int
    n_duplicates_planted: int
    n_malformed_planted: int
    n_schema_drift_planted: int
    n_bot_users: int
    files: tuple[str, ...]
    ground_truth_path: str
    lines_per_format: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """The ``generate`` stage's one-line report."""
        return (
            f"generated {self.n_lines_written:,} raw records "
            f"({self.n_events_clean:,} clean events) in {len(self.files)} files"
        )


def generate(config: GenerateConfig) -> GenerateResult:
    """Generate events, add the configured noise, write raw files and the ground truth.

    Each of ``config.formats`` replaces ``<output_dir>/<format>/``; the ground truth goes to
    ``config.ground_truth_path``.  The same config writes the same bytes.  Raises
    ``ValueError`` for an unknown format, ``n_personas`` out of range, or a ground truth path
    inside ``output_dir`` (checked after the raw files are written).
    """
    events, truth = generate_events(config)
    # The noise generator continues into the writers (out-of-order displacement), in order.
    rng = np.random.default_rng(config.seed + 1)
    plan = plant_noise(events, config, rng)

    files: list[str] = []
    lines_per_format: dict[str, int] = {}
    for fmt in config.formats:
        written, lines_per_format[fmt] = write_format(fmt, plan, config=config, rng=rng)
        files.extend(written)

    out_root = Path(config.output_dir)
    truth_path = Path(config.ground_truth_path)
    if out_root.resolve() in truth_path.resolve().parents:
        raise ValueError("generate.ground_truth_path must not be inside generate.output_dir")
    write_ground_truth(truth, truth_path)

    first = config.formats[0] if config.formats else "jsonl"
    return GenerateResult(
        n_events_clean=events.num_rows,
        n_lines_written=lines_per_format.get(first, 0),
        n_duplicates_planted=plan.n_duplicates,
        n_malformed_planted=0 if first == "parquet" else plan.n_malformed,
        n_schema_drift_planted=plan.n_drift,
        n_bot_users=config.noise.bot_users,
        files=tuple(files),
        ground_truth_path=str(truth_path),
        lines_per_format=lines_per_format,
    )
