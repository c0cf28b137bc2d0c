"""``pipeline``: the stages in order under one ``run_id``, then a summary of every table.

``--from`` / ``--to`` select a contiguous range of stages; ``train_encoder`` runs only when
``encoder.kind`` is ``sequence``.  ``generate`` runs only when the
range includes it (it is the first stage), so a real dataset is processed with
``--from ingest``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from jobs.cli import SPARK_STAGES, STAGES, StageOutcome, execute_stage, parse_common
from jobs.config import AppConfig

log = logging.getLogger(__name__)

#: Tables each stage writes, for the closing summary.
STAGE_TABLES = {
    "ingest": ("events", "events_quarantine"),
    "sessionize": ("sessions", "user_sequences"),
    "embed": ("embeddings",),
    "cluster": ("cluster_assignments", "cluster_centroids", "cluster_metrics"),
    "evaluate": ("cluster_metrics", "cluster_profiles"),
}


def select_stages(start: str | None, stop: str | None) -> list[str]:
    """The stages from ``start`` to ``stop`` inclusive, in pipeline order."""
    first = STAGES.index(start) if start else 0
    last = STAGES.index(stop) if stop else len(STAGES) - 1
    if first > last:
        raise SystemExit(f"--from {start} comes after --to {stop}")
    return list(STAGES[first : last + 1])


def applicable(stages: Sequence[str], config: AppConfig) -> list[str]:
    """Drop optional stages the configuration does not call for: ``train_encoder`` runs only
    for the ``sequence`` encoder (the text encoder is pretrained)."""
    if config.encoder.kind == "sequence":
        return list(stages)
    skipped = [s for s in stages if s == "train_encoder"]
    if skipped:
        log.info("skipping train_encoder: encoder.kind=%s needs no training", config.encoder.kind)
    return [s for s in stages if s != "train_encoder"]


def _add_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="start", choices=STAGES, help="first stage to run")
    parser.add_argument("--to", dest="stop", choices=STAGES, help="last stage to run")


def run_pipeline(
    config: AppConfig, run_id: str, stages: Sequence[str]
) -> tuple[list[StageOutcome], list[str]]:
    """Run ``stages`` in order; return their outcomes and the table summary lines."""
    outcomes: list[StageOutcome] = []
    spark = None
    for position, stage in enumerate(stages, start=1):
        log.info("[%d/%d] %s", position, len(stages), stage)
        if stage in SPARK_STAGES and spark is None:
            from jobs.spark_session import get_spark

            spark = get_spark(config.spark)
        outcomes.append(execute_stage(stage, config, run_id, spark=spark))
    table_lines: list[str] = []
    if spark is not None:
        from jobs.lake import Lake

        lake = Lake(spark, config.lake)
        # Several stages write cluster_metrics: list each table once, in stage order.
        tables = dict.fromkeys(t for stage in stages for t in STAGE_TABLES.get(stage, ()))
        for table in tables:
            info = lake.describe(table)
            table_lines.append(
                f"  {table:<18} {info.rows:>12,} rows  v{info.version:<4} {info.location}"
            )
    return outcomes, table_lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``segments pipeline --conf conf/local.yaml [--from X] [--to Y]``."""
    args, config, run_id = parse_common(
        argv, "segments pipeline", "Run the pipeline stages in order.", extend=_add_range
    )
    stages = applicable(select_stages(args.start, args.stop), config)
    started = time.monotonic()
    outcomes, table_lines = run_pipeline(config, run_id, stages)
    print(f"\npipeline run {run_id}: {' -> '.join(stages)} in {time.monotonic() - started:.1f}s")
    for outcome in outcomes:
        print(f"  {outcome.stage:<11} {outcome.seconds:6.1f}s  {outcome.summary}")
    if table_lines:
        print("Delta tables (engine output, readable with deltalake.DeltaTable(path)):")
        print("\n".join(table_lines))
    evaluated = next((o.result for o in outcomes if o.stage == "evaluate"), None)
    if evaluated is not None:
        emb = evaluated.metrics.get("embedding", {})
        print(f"\nheadline (k={evaluated.k}): {evaluated.headline()}")
        if "hit_rate_lift" in emb:
            print(
                f"usefulness: hit-rate@10 {emb['hit_rate_at_10']:.3f} with cluster-popular vs "
                f"{emb['hit_rate_at_10_global']:.3f} global, lift {emb['hit_rate_lift']:.2f} "
                f"(95% CI {emb['hit_rate_lift_ci_low']:.2f}-{emb['hit_rate_lift_ci_high']:.2f})"
            )
        print(f"report: {evaluated.report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
