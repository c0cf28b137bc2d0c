"""Running one registered stage: the arguments every stage shares, the checks, the timing.

Parses ``--conf`` / ``--set`` / ``--run-id`` / ``--log-level``, loads and checks the
configuration before any Spark work (a bad setting exits with code 2 and one line naming the key),
looks the stage up in :mod:`jobs.stages` and runs it.  Stage modules are imported by name only
when they run, so this module sits below them: every stage's ``main`` (``spark-submit
jobs/<stage>.py``, ``segments <stage>``, the Databricks wheel tasks) is :func:`run_stage`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import jobs
from jobs import stages
from jobs.core.config import AppConfig, ConfigError, load_config, log_config
from jobs.core.errors import PipelineError
from jobs.core.logs import setup_logging

log = logging.getLogger("jobs")


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The arguments every stage accepts."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="PATH",
        help="YAML config overlaid on the defaults; repeatable, later files win",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set sessionize.inactivity_gap_s=900; repeatable",
    )
    parser.add_argument("--run-id", default=None, help="run identifier (default: generated)")
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="INFO (default) shows the stages' own lines; DEBUG adds Spark's warnings",
    )
    return parser


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    seconds: float
    summary: str
    result: Any


def execute_stage(name: str, config: AppConfig, run_id: str, spark: Any = None) -> StageOutcome:
    """Run one registered stage with start/end logging and wall time; ``spark`` is built on
    demand for stages that need it."""
    entry = stages.stage(name)
    module = entry.load()
    log.info("stage %s: start (run %s)", name, run_id)
    started = time.monotonic()
    if entry.needs_spark:
        from jobs.core.lake import Lake
        from jobs.core.session import get_spark

        spark = spark or get_spark(config.spark, delta=config.lake.engine == "spark")
        result = module.run(spark, Lake(spark, config.lake), config, run_id=run_id)
    else:
        result = module.run(config, run_id=run_id)
    summary = result.summary()
    seconds = time.monotonic() - started
    log.info("stage %s: done in %.1fs: %s", name, seconds, summary)
    return StageOutcome(stage=name, seconds=seconds, summary=summary, result=result)


def parse_common(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    extend: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, AppConfig, str]:
    """Parse arguments, set up logging, load and check the config; exits 2 on a config error
    (one line naming the key, no traceback), before any Spark work."""
    parser = build_parser(prog, description)
    if extend:
        extend(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = load_config(args.conf, args.overrides)
        check_runtime(config)
    except ConfigError as exc:
        parser.exit(2, f"{prog}: config error: {exc}\n")
    # Which copy of the code runs: an installed wheel, a --py-files archive or a checkout.
    log.info("jobs package: %s", jobs.__path__[0])
    log_config(config, args.conf, args.overrides)
    return args, config, args.run_id or new_run_id()


def check_runtime(config: AppConfig) -> None:
    """Checks that need more than the config itself (the model's limits, the machine's
    devices, the pseudonymisation key); each raises :class:`ConfigError` naming the key."""
    from udfs.encoder import check_encoder_config

    check_encoder_config(
        config.encoder,
        default_sequence_dir=config.train_encoder.output_dir,
        local_driver=(config.spark.remote or config.spark.master).startswith("local"),
    )
    if config.privacy.pseudonymize_user_id:
        from jobs.core.privacy import resolve_key

        resolve_key(config.privacy)


def run_stage(name: str, argv: Sequence[str] | None = None) -> int:
    """``main()`` of one stage: ``segments <stage>``, ``spark-submit jobs/<stage>.py`` and the
    Databricks wheel tasks; returns the exit code."""
    module = stages.stage(name).load()
    add_arguments = getattr(module, "add_arguments", None)
    args, config, run_id = parse_common(
        argv, f"segments {name}", f"Run the {name} stage.", extend=add_arguments
    )
    apply_arguments = getattr(module, "apply_arguments", None)
    if apply_arguments is not None:
        try:
            config = apply_arguments(args, config)
        except ConfigError as exc:
            print(f"segments {name}: {exc}", file=sys.stderr)
            return 2
    try:
        outcome = execute_stage(name, config, run_id)
    except ConfigError as exc:  # a setting only Spark can check (e.g. a datetime pattern)
        print(f"segments {name}: config error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        log.debug("stage %s failed", name, exc_info=True)
        print(f"segments {name}: error: {exc}", file=sys.stderr)
        return 1
    print(f"{name}: {outcome.summary} ({outcome.seconds:.1f}s)")
    return 0
