"""``segments maintain``: ``OPTIMIZE`` and ``VACUUM`` the pipeline's Delta tables.

Not a pipeline stage (it writes no data): a maintenance command to schedule beside the pipeline,
e.g. weekly.  ``--tables`` picks tables (default: every table that exists);
``--retain-hours`` is VACUUM's retention (default 168 = Delta's 7 days; time travel to versions
older than that stops working).  Uses the lake's engine (:mod:`jobs.core.lake.maintenance`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from jobs.core.errors import PipelineError
from jobs.core.lake import Lake
from jobs.core.lake.maintenance import DEFAULT_RETENTION_HOURS, maintain
from jobs.core.tables import TABLES
from jobs.runner import parse_common

log = logging.getLogger(__name__)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tables",
        default=None,
        help=f"comma-separated tables (default: every existing one of {', '.join(TABLES)})",
    )
    parser.add_argument(
        "--retain-hours",
        type=int,
        default=DEFAULT_RETENTION_HOURS,
        help="VACUUM retention in hours (default: 168, Delta's 7 days)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``segments maintain --conf conf/local.yaml [--tables t1,t2]``."""
    args, config, _ = parse_common(
        argv, "segments maintain", "OPTIMIZE and VACUUM the Delta tables.", extend=_add_arguments
    )
    tables = [t.strip() for t in args.tables.split(",")] if args.tables else list(TABLES)
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        print(f"segments maintain: unknown tables {unknown}; the tables are {', '.join(TABLES)}")
        return 2
    from jobs.core.session import get_spark

    try:
        spark = get_spark(config.spark, delta=config.lake.engine == "spark")
        lake = Lake(spark, config.lake)
        done = [
            maintain(lake, table, retention_hours=args.retain_hours)
            for table in tables
            if args.tables or lake.exists(table)
        ]
    except PipelineError as exc:
        print(f"segments maintain: error: {exc}", file=sys.stderr)
        return 1
    for result in done:
        print(f"  {result.summary()}")
    print(f"maintenance: {len(done)} tables on the {lake.engine} engine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
