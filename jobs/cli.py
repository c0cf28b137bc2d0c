"""``segments <stage|pipeline> [options]``: the console entry point.

Looks the command up in the stage registry (:mod:`jobs.stages`) and hands it to
:func:`jobs.runner.run_stage`, or to :mod:`jobs.pipeline` for ``pipeline``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jobs import stages
from jobs.runner import run_stage


def main(argv: Sequence[str] | None = None) -> int:
    """``segments <stage|pipeline> [options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = (*stages.NAMES, "pipeline", "maintain")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        # Asked for: the usage on stdout, exit 0; a usage error: on stderr, exit 2, as argparse.
        asked = bool(argv) and argv[0] in ("-h", "--help")
        out = sys.stdout if asked else sys.stderr
        entries = [
            *((entry.name, entry.description) for entry in stages.STAGES),
            ("pipeline", "the stages in order under one run id (--from / --to)"),
            ("maintain", "OPTIMIZE and VACUUM the Delta tables (--tables, --retain-hours)"),
        ]
        usage = f"usage: segments {{{','.join(commands)}}} [--conf PATH] [--set KEY=VALUE] ..."
        print("\n".join([usage, *(f"  {name:<14} {text}" for name, text in entries)]), file=out)
        if asked:
            return 0
        if argv:
            print(f"segments: error: unknown command {argv[0]!r}", file=sys.stderr)
        else:
            print("segments: error: a command is required", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "pipeline":
        from jobs.pipeline import main as pipeline_main

        return pipeline_main(rest)
    if command == "maintain":
        from jobs.maintain import main as maintain_main

        return maintain_main(rest)
    return run_stage(command, rest)


if __name__ == "__main__":
    sys.exit(main())
