"""Delta per-file statistics computed from Parquet footers (the delta-rs engine's commits)."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

#: Longer string statistics are truncated (and the maximum widened) to keep the log small.
_MAX_STAT_STRING = 256


def file_stats(metadata: pq.FileMetaData) -> str:
    """Delta per-file statistics (numRecords, nullCount, min/max) from a Parquet footer.

    Only top-level primitive columns get statistics; Parquet numbers its columns by leaf, so
    each is found by its leaf path rather than by its position among top-level fields.
    """
    null_count: dict[str, int] = {}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    for leaf in range(metadata.num_columns):
        name = metadata.schema.column(leaf).path
        if "." in name:  # a field inside a struct, list or map
            continue
        nulls = 0
        lo: Any = None
        hi: Any = None
        complete = True
        try:
            for rg in range(metadata.num_row_groups):
                stats = metadata.row_group(rg).column(leaf).statistics
                if stats is None or not stats.has_null_count:
                    complete = False
                    break
                nulls += stats.null_count
                if stats.has_min_max:
                    lo = stats.min if lo is None else min(lo, stats.min)
                    hi = stats.max if hi is None else max(hi, stats.max)
        except (pa.ArrowNotImplementedError, TypeError):
            continue  # e.g. decimals: pyarrow cannot extract their statistics
        if not complete:
            continue
        null_count[name] = nulls
        lo_json, hi_json = _stat_json(lo, floor=True), _stat_json(hi, floor=False)
        if lo_json is not None and hi_json is not None:
            mins[name] = lo_json
            maxs[name] = hi_json
    stats = {
        "numRecords": metadata.num_rows,
        "minValues": mins,
        "maxValues": maxs,
        "nullCount": null_count,
    }
    # Never a bare NaN / Infinity in the log (_stat_json drops them; this makes sure).
    return json.dumps(stats, allow_nan=False)


def _stat_json(value: Any, *, floor: bool) -> Any:
    """A statistic as Delta's JSON wants it, widened (never narrowed) where precision is lost."""
    if value is None or isinstance(value, (bytes, Decimal)):
        return None
    if isinstance(value, datetime):
        # Delta keeps timestamp statistics at millisecond precision: round outward so that the
        # range still covers every row.
        value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        micros = value.microsecond % 1000
        if micros and not floor:
            value += timedelta(microseconds=1000 - micros)
        elif micros:
            value -= timedelta(microseconds=micros)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        if len(value) <= _MAX_STAT_STRING:
            return value
        # A prefix is a valid lower bound; the prefix followed by the highest code point is a
        # valid upper bound.  Leaving the column out instead would make delta-rs skip the file
        # on any filter over that column.
        prefix = value[:_MAX_STAT_STRING]
        return prefix if floor else prefix + "\U0010ffff"
    if isinstance(value, float) and not math.isfinite(value):
        # NaN has no order, and JSON has no infinity: a bare ``Infinity`` makes the log entry
        # invalid JSON that strict readers reject.  Without min/max the file is never skipped.
        return None
    return value
