"""``generate`` stage: synthetic clickstream with planted personas, written as raw files.

No Spark and no tables: the generator (:mod:`jobs.synthetic`) writes one file per arrival day
and format under ``generate.output_dir`` and the personas' ground truth to
``generate.ground_truth_path``.
"""

from __future__ import annotations

import logging
import sys

from jobs.core.config import AppConfig
from jobs.runner import run_stage
from jobs.synthetic import GenerateResult, generate

log = logging.getLogger(__name__)


def run(config: AppConfig, *, run_id: str) -> GenerateResult:
    """Write the raw files and the ground truth of ``config.generate`` (same seed, same bytes)."""
    cfg = config.generate
    log.info("generating %d users over %d days (run %s)", cfg.n_users, cfg.n_days, run_id)
    return generate(cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python jobs/generate.py --conf conf/local.yaml`` (no Spark needed)."""
    return run_stage("generate", argv)


if __name__ == "__main__":
    sys.exit(main())
