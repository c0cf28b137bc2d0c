"""``segments pipeline``: the registered stages in order under one ``run_id``, then a summary.

``--from`` / ``--to`` select a contiguous range of stages (:func:`jobs.stages.select`); a stage
whose ``applies`` rule says the configuration does not call for it is skipped with the reason
(``train_encoder`` runs only for ``encoder.kind: sequence``).  ``generate`` runs only when the
range includes it (it is the first stage), so a real dataset is processed with ``--from ingest``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from jobs import stages
from jobs.core.config import AppConfig, ConfigError
from jobs.core.errors import PipelineError
from jobs.runner import StageOutcome, execute_stage, parse_common

log = logging.getLogger(__name__)


def applicable(selected: Sequence[stages.Stage], config: AppConfig) -> list[stages.Stage]:
    """Drop the stages the configuration does not call for, logging why."""
    kept = []
    for entry in selected:
        applies, reason = entry.applies_to(config)
        if applies:
            kept.append(entry)
        else:
            log.info("skipping %s: %s", entry.name, reason)
    return kept


def _add_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", choices=stages.NAMES, help="first stage to run")
    parser.add_argument("--to", dest="stop", choices=stages.NAMES, help="last stage to run")


def run_pipeline(
    config: AppConfig, run_id: str, selected: Sequence[stages.Stage]
) -> tuple[list[StageOutcome], list[str]]:
    """Run ``selected`` in order; return their outcomes and the table summary lines."""
    outcomes: list[StageOutcome] = []
    spark = None
    for position, entry in enumerate(selected, start=1):
        log.info("[%d/%d] %s", position, len(selected), entry.name)
        if entry.needs_spark and spark is None:
            from jobs.core.session import get_spark

            spark = get_spark(config.spark, delta=config.lake.engine == "spark")
        outcomes.append(execute_stage(entry.name, config, run_id, spark=spark))
    table_lines: list[str] = []
    if spark is not None:
        from jobs.core.lake import Lake

        lake = Lake(spark, config.lake)
        # Several stages write cluster_metrics: list each table once, in stage order.
        tables = dict.fromkeys(t for entry in selected for t in entry.writes)
        for table in tables:
            if not lake.exists(table):
                # e.g. history_embeddings when the backtest had no protocol and encoded nothing
                table_lines.append(f"  {table:<19} {'not written':>17}")
                continue
            info = lake.describe(table)
            table_lines.append(
                f"  {table:<19} {info.rows:>12,} rows  v{info.version:<4} {info.location}"
            )
    return outcomes, table_lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``segments pipeline --conf conf/local.yaml [--from X] [--to Y]``."""
    args, config, run_id = parse_common(
        argv, "segments pipeline", "Run the pipeline stages in order.", extend=_add_range
    )
    try:
        selected = applicable(stages.select(args.start, args.stop), config)
    except ValueError as exc:
        print(f"segments pipeline: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        outcomes, table_lines = run_pipeline(config, run_id, selected)
    except ConfigError as exc:  # a setting only Spark can check (e.g. a datetime pattern)
        print(f"segments pipeline: config error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        log.debug("pipeline failed", exc_info=True)
        print(f"segments pipeline: error: {exc}", file=sys.stderr)
        return 1
    names = " -> ".join(entry.name for entry in selected)
    print(f"\npipeline run {run_id}: {names} in {time.monotonic() - started:.1f}s")
    for outcome in outcomes:
        print(f"  {outcome.stage:<11} {outcome.seconds:6.1f}s  {outcome.summary}")
    if table_lines:
        print("Delta tables (engine output, readable with deltalake.DeltaTable(path)):")
        print("\n".join(table_lines))
    evaluated = next((o.result for o in outcomes if o.stage == "evaluate"), None)
    if evaluated is not None:
        for line in evaluated.closing_lines():
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
