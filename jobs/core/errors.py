"""Errors whose message tells the person running the job what is wrong and what to do.

The command line prints such an error as one line and exits with code 1 (a configuration error
exits with 2, see :mod:`jobs.core.config`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PipelineError(RuntimeError):
    """A stage cannot go on: bad input, a table in an unexpected state, a concurrent run.  The
    message names the setting, file or table concerned."""


class DataError(PipelineError, ValueError):
    """The tables hold nothing a stage can work on (no rows, no run, every point identical):
    printed as one line like every :class:`PipelineError`, and still a ``ValueError`` for callers
    of the domain functions that raise it."""
