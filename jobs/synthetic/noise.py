"""Which records the generator duplicates, breaks, drifts and delivers late.

Noise only ever *adds* records to the clean events (each written exactly once in clean form):

* ``duplicate_rate`` x clean: exact copies of clean records (same ``event_id``), often in
  another file;
* ``malformed_rate`` x clean: copies cut off halfway (JSON-lines) or missing fields (CSV); not
  representable in Parquet, so Parquet files carry none;
* ``schema_drift_rate`` x clean: copies with one defect each, cycling through
  :data:`DRIFT_KINDS`: ``user`` renamed to ``userId``, ``event_time`` missing, ``price`` written
  as ``"12,99 EUR"``, ``type`` = ``wishlist``, ``event_time`` in 1970;
* ``late_rate``: clean records that arrive 1..``max_late_days`` days after their event day.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from jobs.core.config import GenerateConfig
from jobs.synthetic.events import DAY_MS, FIELDS, start_ms

DRIFT_KINDS = ("renamed_user", "missing_time", "text_price", "unknown_type", "epoch_1970")


@dataclass(frozen=True)
class NoisePlan:
    """The clean records and the noise planted on them; days count from ``start_date``.

    Index arrays point into ``raw``; ``arrival`` is the day each clean record's file covers,
    ``dup_arrival`` the same for each duplicate (malformed and drifted copies arrive on their
    event day).
    """

    raw: pa.Table
    event_day: np.ndarray
    arrival: np.ndarray
    dup_src: np.ndarray
    dup_arrival: np.ndarray
    bad_src: np.ndarray
    drift_src: np.ndarray
    #: The source records of the malformed copies (cut when encoded).
    bad_records: list[dict]
    drift_records: list[dict]

    @property
    def n_duplicates(self) -> int:
        return int(self.dup_src.size)

    @property
    def n_malformed(self) -> int:
        return int(self.bad_src.size)

    @property
    def n_drift(self) -> int:
        return int(self.drift_src.size)


def plant_noise(events: pa.Table, config: GenerateConfig, rng: np.random.Generator) -> NoisePlan:
    """Choose late arrivals, duplicates, malformed and drifted copies of ``events`` (the clean
    table from :func:`~jobs.synthetic.events.generate_events`), drawing from ``rng`` in a fixed
    order.  Counts are ``round(rate x clean events)``; a record is copied at most once per kind."""
    noise = config.noise
    n = events.num_rows
    ts_ms = events.column("ts_ms").to_numpy()
    event_day = (ts_ms - start_ms(config)) // DAY_MS
    arrival = event_day.copy()
    late = rng.random(n) < noise.late_rate
    arrival[late] += rng.integers(1, noise.max_late_days + 1, int(late.sum()))

    n_dup = round(noise.duplicate_rate * n)
    n_bad = round(noise.malformed_rate * n)
    n_drift = round(noise.schema_drift_rate * n)
    dup_src = rng.choice(n, n_dup, replace=False)
    bad_src = rng.choice(n, n_bad, replace=False)
    drift_src = rng.choice(n, n_drift, replace=False)
    dup_arrival = event_day[dup_src] + rng.integers(0, noise.max_late_days + 1, n_dup)
    drift_kinds = [DRIFT_KINDS[i % len(DRIFT_KINDS)] for i in range(n_drift)]

    raw = events.select(list(FIELDS))
    return NoisePlan(
        raw=raw,
        event_day=event_day,
        arrival=arrival,
        dup_src=dup_src,
        dup_arrival=dup_arrival,
        bad_src=bad_src,
        drift_src=drift_src,
        bad_records=raw.take(pa.array(bad_src)).to_pylist(),
        drift_records=drifted(raw.take(pa.array(drift_src)).to_pylist(), drift_kinds),
    )


def drifted(records: list[dict], kinds: Sequence[str]) -> list[dict]:
    """Copies of ``records``, each with the defect its entry of ``kinds`` (:data:`DRIFT_KINDS`)
    names; every defect is quarantined by ingest's default synthetic mapping."""
    out = []
    for record, kind in zip(records, kinds, strict=True):
        r = dict(record)
        if kind == "renamed_user":
            r = {("userId" if k == "user" else k): v for k, v in r.items()}
        elif kind == "missing_time":
            r.pop("event_time")
        elif kind == "text_price":
            r["price"] = "12,99 EUR"
        elif kind == "unknown_type":
            r["type"] = "wishlist"
        elif kind == "epoch_1970":
            r["event_time"] = "1970-01-01T00:00:00.000Z"
        out.append(r)
    return out
