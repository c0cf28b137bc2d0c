"""Command line shared by every stage: ``--conf``, ``--set``, ``--run-id``, logging, timing.

Each stage module has ``main(argv)`` for ``spark-submit jobs/<stage>.py ...``; the console script
``segments <stage> ...`` dispatches to the same code.
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
from jobs.config import AppConfig, ConfigError, load_config, log_config

log = logging.getLogger("jobs")

STAGES = ("generate", "ingest", "sessionize", "train_encoder", "embed", "cluster", "evaluate")
#: Stages that read or write tables need Spark; ``generate`` is plain Python.
SPARK_STAGES = frozenset(STAGES) - {"generate"}


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
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    return parser


def setup_logging(level: str) -> None:
    """Plain, greppable log lines on stderr; Spark's own JVM logging stays at WARN."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("py4j", "py4j.clientserver", "py4j.java_gateway"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    seconds: float
    summary: str
    result: Any


def _summary(stage: str, result: Any) -> str:
    """One human line per stage result."""
    if stage == "generate":
        return (
            f"generated {result.n_lines_written:,} raw records "
            f"({result.n_events_clean:,} clean events) in {len(result.files)} files"
        )
    if stage == "ingest":
        return str(result.line())
    if stage == "sessionize" and result.mode == "incremental":
        if not result.partitions_rewritten:
            return "incremental: no new ingest runs, nothing to do"
        return (
            f"incremental from {result.window_start}: {result.events_in:,} events -> "
            f"{result.sessions:,} sessions in {result.partitions_rewritten} session_date "
            f"partitions, {result.users:,} user sequences rebuilt"
        )
    if stage == "sessionize":
        return (
            f"{result.events_in:,} events -> {result.sessions:,} sessions, "
            f"{result.users:,} user sequences ({result.bot_users} bot users flagged)"
        )
    if stage == "train_encoder":
        loss = "masked-event" if result.mode == "mlm" else "contrastive"
        return (
            f"{loss} loss {result.first_loss:.3f} -> {result.last_loss:.3f} over "
            f"{result.steps} steps on {result.sequences:,} sequences; model at {result.output_dir}"
        )
    if stage == "embed":
        reused = result.rows - result.embedded
        return (
            f"{result.rows:,} {result.unit} embeddings from {result.model_name} "
            f"(model_version {result.model_version})"
            + (f"; {reused:,} unchanged sequences kept their vectors" if reused else "")
        )
    if stage == "cluster":
        source = (
            "saved model" if not result.sweep else f"k chosen from {[s[0] for s in result.sweep]}"
        )
        return (
            f"{result.rows:,} rows in k={result.k} clusters on {result.backend} ({source}); "
            f"sizes {list(result.sizes)}"
        )
    if stage == "evaluate":
        return (
            f"cluster run {result.run_id} (k={result.k}, {result.rows:,} rows): "
            f"{result.headline()}; report {result.report_path}"
        )
    return repr(result)


def execute_stage(stage: str, config: AppConfig, run_id: str, spark: Any = None) -> StageOutcome:
    """Run one stage with start/end logging and wall time; ``spark`` is built on demand."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    log.info("stage %s: start (run %s)", stage, run_id)
    started = time.monotonic()
    result: Any
    if stage == "generate":
        from jobs.generate import generate

        result = generate(config.generate)
    else:
        import importlib

        from jobs.lake import Lake
        from jobs.spark_session import get_spark

        spark = spark or get_spark(config.spark)
        module = importlib.import_module(f"jobs.{stage}")
        result = module.run(spark, Lake(spark, config.lake), config, run_id=run_id)
    summary = _summary(stage, result)
    seconds = time.monotonic() - started
    log.info("stage %s: done in %.1fs: %s", stage, seconds, summary)
    return StageOutcome(stage=stage, seconds=seconds, summary=summary, result=result)


def parse_common(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    extend: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, AppConfig, str]:
    """Parse arguments, set up logging, load and log the config; exits 2 on a config error."""
    parser = build_parser(prog, description)
    if extend:
        extend(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    # Which copy of the code runs: an installed wheel, a --py-files archive or a checkout.
    log.info("jobs package: %s", jobs.__path__[0])
    try:
        config = load_config(args.conf, args.overrides)
        if config.privacy.pseudonymize_user_id:
            # Refuse to start, before any Spark work, when the pseudonymisation key is unusable.
            from jobs.privacy import resolve_key

            resolve_key(config.privacy)
    except ConfigError as exc:
        parser.exit(2, f"{prog}: config error: {exc}\n")
    log_config(config)
    return args, config, args.run_id or new_run_id()


def run_stage(stage: str, argv: Sequence[str] | None = None) -> int:
    """``main()`` of a single-stage job."""
    _, config, run_id = parse_common(argv, f"segments {stage}", f"Run the {stage} stage.")
    outcome = execute_stage(stage, config, run_id)
    print(f"{stage}: {outcome.summary} ({outcome.seconds:.1f}s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``segments <stage|pipeline> [options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = (*STAGES, "pipeline")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: segments {{{','.join(commands)}}} [--conf PATH] [--set KEY=VALUE] ...")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "pipeline":
        from jobs.pipeline import main as pipeline_main

        return pipeline_main(rest)
    if command == "cluster":
        from jobs.cluster import main as cluster_main

        return cluster_main(rest)
    return run_stage(command, rest)


if __name__ == "__main__":
    sys.exit(main())
