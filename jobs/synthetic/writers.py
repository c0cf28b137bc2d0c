"""Raw files: clean records plus planted noise, one file per arrival day and format.

Files are ``<output_dir>/<format>/events-<YYYY-MM-DD>.<ext>`` (``jsonl``, ``csv`` with a
header, ``parquet`` with every field as text; ``.gz`` added when ``generate.compress``), the
date being the arrival day.  ``out_of_order_rate`` displaces records inside a file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.core.config import GenerateConfig
from jobs.synthetic.events import FIELDS
from jobs.synthetic.noise import NoisePlan

FORMATS = ("jsonl", "csv", "parquet")


def json_lines(table: pa.Table) -> pa.Array:
    """One JSON object per row, keys in FIELDS order (values are safe ASCII by construction)."""
    parts: list[object] = []
    for i, name in enumerate(FIELDS):
        column = table.column(name)
        if name == "price":
            text = pc.cast(column, pa.string())
        else:
            text = pc.binary_join_element_wise('"', column, '"', "")
        parts.append(("{" if i == 0 else ", ") + f'"{name}": ')
        parts.append(pc.fill_null(text, "null"))
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "")


def csv_lines(table: pa.Table) -> pa.Array:
    """RFC 4180 lines: every present value quoted (inner quotes doubled), missing values empty."""
    parts: list[object] = []
    for i, name in enumerate(FIELDS):
        column = table.column(name)
        text = pc.cast(column, pa.string()) if name == "price" else column
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
        if i:
            parts.append(",")
        parts.append(pc.fill_null(quoted, ""))
    return pc.binary_join_element_wise(*parts, "")


def record_to_json(record: dict) -> str:
    """One record (any keys, e.g. a drifted one) as a JSON line."""
    return json.dumps(record, separators=(", ", ": "))


def record_to_csv(record: dict) -> str:
    """One record as a CSV line in FIELDS order (absent fields empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="")
    writer.writerow(["" if record.get(f) is None else record.get(f) for f in FIELDS])
    return buffer.getvalue()


def _parquet_rows(plan: NoisePlan) -> tuple[pa.Table, np.ndarray]:
    """Clean, duplicate and drifted rows (all fields as text) and each row's arrival day."""
    raw = plan.raw
    body = pa.concat_tables([raw, raw.take(pa.array(plan.dup_src))])
    typed_drift = pa.Table.from_pylist(
        [
            {f: (None if r.get(f) is None else str(r.get(f))) for f in FIELDS}
            for r in plan.drift_records
        ],
        schema=pa.schema([(f, pa.string()) for f in FIELDS]),
    )
    body = pa.concat_tables(
        [body.set_column(7, "price", pc.cast(body.column("price"), pa.string())), typed_drift]
    )
    days = np.concatenate([plan.arrival, plan.dup_arrival, plan.event_day[plan.drift_src]])
    return body, days


def _text_lines(plan: NoisePlan, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Clean, duplicate, malformed and drifted lines of ``fmt`` and each line's arrival day."""
    encode = json_lines if fmt == "jsonl" else csv_lines
    one = record_to_json if fmt == "jsonl" else record_to_csv
    clean_lines = encode(plan.raw).to_numpy(zero_copy_only=False)
    if fmt == "jsonl":
        bad_lines = [one(r)[: max(5, len(one(r)) // 2)] for r in plan.bad_records]
    else:
        bad_lines = [",".join(one(r).split(",")[:4]) for r in plan.bad_records]
    lines = np.concatenate(
        [
            clean_lines,
            clean_lines[plan.dup_src],
            np.array(bad_lines, dtype=object),
            np.array([one(r) for r in plan.drift_records], dtype=object),
        ]
    )
    days = np.concatenate(
        [
            plan.arrival,
            plan.dup_arrival,
            plan.event_day[plan.bad_src],
            plan.event_day[plan.drift_src],
        ]
    )
    return lines, days


def _arrival_order(days: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Row order grouped by arrival day, with a share ``rate`` of rows displaced in their day."""
    order = np.argsort(days, kind="stable")
    shuffled = rng.random(order.size) < rate
    positions = np.flatnonzero(shuffled)
    order[positions] = order[rng.permutation(positions)]
    return order[np.argsort(days[order], kind="stable")]


def write_format(
    fmt: str, plan: NoisePlan, *, config: GenerateConfig, rng: np.random.Generator
) -> tuple[list[str], int]:
    """Replace ``<output_dir>/<fmt>/`` with one file per arrival day.

    Returns the paths written (in day order) and the number of records they hold.  Raises
    ``ValueError`` for a format not in :data:`FORMATS`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"generate.formats: unknown format {fmt!r}")
    folder = Path(config.output_dir) / fmt
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    body: pa.Table | None = None
    lines: np.ndarray | None = None
    if fmt == "parquet":
        body, days = _parquet_rows(plan)
    else:
        lines, days = _text_lines(plan, fmt)
    order = _arrival_order(days, config.noise.out_of_order_rate, rng)
    files: list[str] = []
    total = 0
    for day_index in np.unique(days):
        chosen = order[days[order] == day_index]
        date = (np.datetime64(config.start_date) + np.timedelta64(int(day_index), "D")).astype(str)
        if body is not None:
            path = folder / f"events-{date}.parquet"
            pq.write_table(body.take(pa.array(chosen)), path)
        else:
            assert lines is not None
            text = "\n".join(lines[chosen].tolist()) + "\n"
            if fmt == "csv":
                text = ",".join(FIELDS) + "\n" + text
            ext = fmt + (".gz" if config.compress else "")
            path = folder / f"events-{date}.{ext}"
            data = text.encode()
            path.write_bytes(gzip.compress(data, mtime=0) if config.compress else data)
        total += chosen.size
        files.append(str(path))
    return files, total


def write_ground_truth(truth: pa.Table, path: Path) -> None:
    """``user_id,persona`` CSV (header first, one line per user, no quoting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    truth_lines = ["user_id,persona"] + [
        f"{u},{p}"
        for u, p in zip(
            truth.column("user_id").to_pylist(), truth.column("persona").to_pylist(), strict=True
        )
    ]
    path.write_text("\n".join(truth_lines) + "\n")
