"""Rendering a unit's events in plain Python: the Spark-free twin of
:mod:`jobs.sequences.rendering`, for the segment assigner model (:mod:`udfs.assigner`), which must
predict without Spark.

:func:`render_events` returns, for the same events in the same order, the very string that
``jobs.sequences.rendering.render_sequences`` builds with Spark built-ins (``tests/test_mlflow.py``
holds the two equal, nulls, session boundaries and item buckets included), so the same encoder
gives the same vector.  An event is a mapping with the keys of an element of the tables'
``events`` arrays that rendering reads: ``event_type``, ``item_id``, ``category``, ``brand``,
``price`` and, in user sequences, ``session_id``; a missing key counts as null.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.core.config import EncoderConfig

#: The word of each event type and the price bands' names; :mod:`jobs.sequences.rendering`
#: (Spark) renders with these same tables.
EVENT_WORDS = {
    "view": "view",
    "add_to_cart": "cart",
    "remove_from_cart": "remove",
    "purchase": "buy",
    "search": "search",
    "other": "other",
}
PRICE_BANDS = ("cheap", "low", "mid", "high", "premium")
#: Spark's ``xxhash64`` seed, and the buckets of ``pmod(xxhash64(item_id), 1024)``.
_XXHASH_SEED = 42
_ITEM_BUCKETS = 1024

_MASK = (1 << 64) - 1
_P1, _P2, _P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P4, _P5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _MASK, 31) * _P1) & _MASK


def _merge(acc: int, val: int) -> int:
    return ((acc ^ _round(0, val)) * _P1 + _P4) & _MASK


def xxhash64(data: bytes, seed: int = _XXHASH_SEED) -> int:
    """XXH64 of ``data`` as an unsigned 64-bit int: Spark's ``xxhash64`` of a string (its UTF-8
    bytes) is this value as a signed long.  Pure Python, O(len(data))."""
    n, i = len(data), 0
    if n >= 32:
        v1, v2 = (seed + _P1 + _P2) & _MASK, (seed + _P2) & _MASK
        v3, v4 = seed & _MASK, (seed - _P1) & _MASK
        while i + 32 <= n:
            v1 = _round(v1, int.from_bytes(data[i : i + 8], "little"))
            v2 = _round(v2, int.from_bytes(data[i + 8 : i + 16], "little"))
            v3 = _round(v3, int.from_bytes(data[i + 16 : i + 24], "little"))
            v4 = _round(v4, int.from_bytes(data[i + 24 : i + 32], "little"))
            i += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + _P5) & _MASK
    h = (h + n) & _MASK
    while i + 8 <= n:
        h ^= _round(0, int.from_bytes(data[i : i + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _MASK
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i : i + 4], "little") * _P1) & _MASK
        h = (_rotl(h, 23) * _P2 + _P3) & _MASK
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & _MASK
        h = (_rotl(h, 11) * _P1) & _MASK
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _MASK
    h ^= h >> 29
    h = (h * _P3) & _MASK
    return h ^ (h >> 32)


def item_bucket(item_id: str | None) -> str:
    """``pmod(xxhash64(item_id), 1024)`` as Spark writes it (``"0"`` .. ``"1023"``); a null id
    hashes to the seed, as in Spark."""
    if item_id is None:
        return str(_XXHASH_SEED % _ITEM_BUCKETS)
    # pmod of a signed long by a power of two equals the unsigned value modulo it.
    return str(xxhash64(item_id.encode("utf-8")) % _ITEM_BUCKETS)


def price_band(price: float | None, edges: Sequence[float]) -> str | None:
    """``cheap`` .. ``premium``: the band of the first of the increasing ``edges`` that ``price``
    is below, else the last band; None for a null price (NaN compares as Spark's: above all)."""
    if price is None:
        return None
    for edge, name in zip(edges, PRICE_BANDS, strict=False):
        if not math.isnan(price) and price < edge:
            return name
    return PRICE_BANDS[min(len(edges), len(PRICE_BANDS) - 1)]


def _null(value: Any) -> Any:
    """None for a missing value (None or a float NaN standing in for a null string)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _event_text(e: Mapping[str, Any], config: EncoderConfig) -> str | None:
    word = EVENT_WORDS.get(_null(e.get("event_type")), "other")
    category = _null(e.get("category"))
    price = e.get("price")
    parts = [
        word,
        None if category is None else re.sub(r"[._]", " ", category),
        _null(e.get("brand")),
        price_band(None if price is None else float(price), config.price_band_edges),
    ]
    if config.include_item_ids:
        parts.append(_null(e.get("item_id")))
    return " ".join(p for p in parts if p is not None)


def _event_token(e: Mapping[str, Any], config: EncoderConfig) -> str | None:
    event_type = _null(e.get("event_type"))
    if event_type is None:  # Spark's concat of a null is null, and array_join skips it
        return None
    category = _null(e.get("category"))
    token = f"{event_type}:{'none' if category is None else category}"
    if config.include_item_ids:
        token += ":i" + item_bucket(_null(e.get("item_id")))
    return token


def render_events(events: Sequence[Mapping[str, Any]], config: EncoderConfig) -> str:
    """One unit's events (oldest first) -> the encoder's input string, as
    ``render_sequences`` renders the same array: ``text`` joins event phrases with ``", "``
    (``"| "`` before the first event of a new session), ``sequence`` joins tokens with spaces
    (``"[SEP] "`` at a session change).  ``ValueError`` for another ``config.kind``."""
    if config.kind == "text":
        render, joiner, boundary = _event_text, ", ", "| "
    elif config.kind == "sequence":
        render, joiner, boundary = _event_token, " ", "[SEP] "
    else:
        raise ValueError(f"encoder.kind must be text or sequence, got {config.kind!r}")
    out: list[str] = []
    previous: Any = None
    for i, e in enumerate(events):
        text = render(e, config)
        session = _null(e.get("session_id"))
        if text is not None:
            new_session = i > 0 and session is not None and previous is not None
            out.append((boundary if new_session and session != previous else "") + text)
        previous = session
    return joiner.join(out)
