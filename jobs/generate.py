"""``generate`` stage: synthetic clickstream with planted personas, written as raw files.

No Spark and no tables: the generator (:mod:`jobs.synthetic`) writes one file per arrival day
and format under ``generate.output_dir`` and the personas' ground truth to
``generate.ground_truth_path``.  Either may be an object-store URI (``s3a://...``): the files
are then written to a local temporary folder and uploaded with ``lake.storage_options``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

from jobs.core.config import AppConfig
from jobs.core.lake.paths import Outbox, Storage, reaching
from jobs.runner import run_stage
from jobs.synthetic import GenerateResult, generate

log = logging.getLogger(__name__)


def run(config: AppConfig, *, run_id: str) -> GenerateResult:
    """Write the raw files and the ground truth of ``config.generate`` (same seed, same bytes).

    Raises ``ValueError`` as :func:`jobs.synthetic.generate` does, and
    :class:`jobs.core.lake.LakeError` for an output location that cannot be reached.
    """
    cfg = config.generate
    log.info("generating %d users over %d days (run %s)", cfg.n_users, cfg.n_days, run_id)
    storage = Storage(config.lake.storage_options)
    truth_dir, slash, truth_name = cfg.ground_truth_path.rpartition("/")
    with (
        Outbox(storage, cfg.output_dir, where="generate.output_dir") as raw,
        Outbox(storage, truth_dir or slash or ".", where="generate.ground_truth_path") as truth,
    ):
        if raw.staged and truth.native.startswith(raw.native + "/"):
            raise ValueError("generate.ground_truth_path must not be inside generate.output_dir")
        local = dataclasses.replace(
            cfg, output_dir=str(raw.local), ground_truth_path=str(truth.local / truth_name)
        )
        result = generate(local)
        if raw.staged:
            # Each format's folder is replaced, as the generator does locally.
            with reaching(f"generate.output_dir ({cfg.output_dir})"):
                for fmt in cfg.formats:
                    storage.clear_dir(f"{raw.native}/{fmt}")
        raw.publish()
        truth.publish()
    if not (raw.staged or truth.staged):
        return result
    files = tuple(raw.shown(p[len(str(raw.local)) + 1 :]) for p in result.files)
    return dataclasses.replace(result, files=files, ground_truth_path=truth.shown(truth_name))


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python jobs/generate.py --conf conf/local.yaml`` (no Spark needed)."""
    return run_stage("generate", argv)


if __name__ == "__main__":
    sys.exit(main())
