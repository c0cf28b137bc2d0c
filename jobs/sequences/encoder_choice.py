"""``encoder.kind: auto``: which encoder fits this log, decided by the data's shape.

The text encoder reads rendered words (``view electronics smartphone samsung mid``).  A log whose
events carry only opaque ids (item-only logs, numeric category codes such as DIGINETICA's) gives
it nothing to read, so every history renders alike and its segments cannot beat a bag of ids.
The sequence encoder learns its own vocabulary of event x category tokens with hashed item
buckets (masked-event pre-training, ``train_encoder``), which works on ids as well as on words.

The rule: the share of events whose category or brand holds a word (a run of at least three
letters, after dropping a leading ``name:`` label such as ``category_id:`` that mappings add to
ids).  Text at :data:`READABLE_SHARE` or more, otherwise the sequence encoder with item buckets.
Shared by ``train_encoder``, ``embed`` and ``evaluate``, so all three resolve the same kind.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.core.config import EncoderConfig

log = logging.getLogger(__name__)

#: Share of events with a readable category or brand from which ``auto`` picks ``text``.
READABLE_SHARE = 0.5
#: Sessions sampled for the decision (the share is stable well before this).
SAMPLE_SESSIONS = 20_000


def _has_word(value: Column) -> Column:
    unlabelled = F.regexp_replace(value, r"^[A-Za-z_]+[:=]", "")
    return F.coalesce(unlabelled.rlike(r"[A-Za-z]{3,}"), F.lit(False))


def readable_share(sessions: DataFrame) -> float:
    """Share (in [0, 1]) of events whose category or brand holds a word, over about
    :data:`SAMPLE_SESSIONS` sessions picked by a hash of ``session_id`` (so every stage that
    asks gets the same answer on the same table); 0.0 without events.  Two Spark actions."""
    every = max(1, sessions.count() // SAMPLE_SESSIONS)
    picked = sessions.where(F.pmod(F.xxhash64("session_id"), F.lit(every)) == 0)
    events = picked.select(F.explode("events").alias("e"))
    readable = _has_word(F.col("e.category")) | _has_word(F.col("e.brand"))
    row = events.agg(
        F.count(F.lit(1)).alias("n"), F.count(F.when(readable, 1)).alias("readable")
    ).first()
    if row is None or not row["n"]:
        return 0.0
    return float(row["readable"]) / float(row["n"])


def resolve_encoder(config: EncoderConfig, sessions: DataFrame) -> tuple[EncoderConfig, str]:
    """``config`` with ``kind`` decided (unchanged unless ``auto``), and the reason to log.

    ``auto`` becomes ``text`` when at least :data:`READABLE_SHARE` of the events of
    ``sessions`` (the ``sessions`` table) name a category or brand in words, else ``sequence``
    with ``include_item_ids`` (hashed item buckets).
    """
    if config.kind != "auto":
        return config, f"encoder.kind={config.kind}"
    share = readable_share(sessions)
    if share >= READABLE_SHARE:
        reason = (
            f"encoder.kind=auto chose text: {share:.0%} of events name a category or brand in "
            f"words (>= {READABLE_SHARE:.0%})"
        )
        return replace(config, kind="text"), reason
    reason = (
        f"encoder.kind=auto chose sequence: only {share:.0%} of events name a category or brand "
        f"in words (< {READABLE_SHARE:.0%}: ids only), so the masked-event encoder over event x "
        "category tokens with hashed item buckets"
    )
    return replace(config, kind="sequence", include_item_ids=True), reason
