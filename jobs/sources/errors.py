"""Why an input cannot be ingested at all, and naming the raw file Spark failed to read."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from jobs.core.errors import PipelineError


class IngestError(PipelineError):
    """The input cannot be ingested at all (missing files, unusable mapping, a raw file Spark
    cannot read, row accounting that does not reconcile).  Also importable as
    ``jobs.ingest.IngestError``."""


_FAILED_READ = re.compile(r"Encountered error while reading file (\S+?)\.?(?=\s|$)", re.M)
_CAUSE = re.compile(r"^Caused by: ([\w.$]+)(?:: (.*?))?(?=\n\s+at |\n\s+\.\.\. |\Z)", re.M | re.S)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def unreadable_file_error(exc: BaseException) -> IngestError | None:
    """An :class:`IngestError` naming the raw file that Spark failed to read (a cut-off gzip, a
    CSV file whose header differs from the others), or None when ``exc`` is something else.

    Such failures reach Python as a Py4J error whose first line names only the Spark call; the
    file and the cause are inside the Java message.  The cause is cut to 400 characters.
    """
    text = str(exc)
    match = _FAILED_READ.search(text)
    if match is None:
        return None
    detail = ""
    causes = _CAUSE.findall(text)
    if causes:
        name, message = causes[-1]
        detail = f": {name.rsplit('.', 1)[-1]}: {' '.join(message.split())}"[:400]
    return IngestError(
        f"cannot read input file {match.group(1)}{detail} (a truncated or corrupt file? "
        "replace or remove it and rerun)"
    )


def names_unreadable_files(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator: a raw file Spark cannot read fails the call with an :class:`IngestError`
    naming it, not a Java stack trace; any other exception passes unchanged.  Corrupt files are
    deliberately not skipped (``ignoreCorruptFiles`` would drop their rows without a trace)."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return function(*args, **kwargs)
        except IngestError:
            raise
        except Exception as exc:
            error = unreadable_file_error(exc)
            if error is None:
                raise
            raise error from exc

    return wrapper


def reading(action: Callable[[], _R]) -> _R:
    """Run a Spark action over raw files, naming the file when one cannot be read."""
    return names_unreadable_files(action)()
