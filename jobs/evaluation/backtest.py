"""The backtest, end to end: choose the protocol, split, fit every method on history, score the
future (:mod:`jobs.evaluation.protocol`, :mod:`jobs.evaluation.methods`,
:mod:`jobs.evaluation.future`).

Takes DataFrames and settings, returns numbers: the ``evaluate`` stage reads the tables and
writes the results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.core.config import AppConfig
from jobs.evaluation.future import FutureScores, future_metrics, score_future
from jobs.evaluation.methods import (
    ENCODED,
    PROTOCOL_METHODS,
    SEGMENT,
    NotApplicable,
    baseline_fitters,
    embedding_segments,
    encoded_histories,
    known_vectors,
)
from jobs.evaluation.protocol import choose_protocol, future_targets, history_units, split_events

log = logging.getLogger(__name__)

#: Bucket count of the bootstrap (units are hashed into at most this many).
BOOTSTRAP_BUCKETS = 1000


@dataclass(frozen=True)
class Backtest:
    """The protocol run and what it measured."""

    protocol: str | None
    reason: str
    cutoff: datetime | None = None
    #: method -> metric -> value (finite).
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    #: (method, metric or "*") -> why it was not computed.
    not_applicable: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Units with history and future.
    scored_units: int = 0
    #: ``content_hash``, ``embedding`` of the history texts this run encoded (one row per
    #: text; materialised), for ``history_embeddings``; None when nothing was encoded.
    encoded_histories: DataFrame | None = None
    #: Why the embedding's future metrics may be optimistic (:func:`encoder_caveat`), or None.
    caveat: str | None = None


def encoder_caveat(model_dir: str | None) -> str | None:
    """Why the embedding's future metrics may be optimistic, or None: an encoder trained by
    ``train_encoder`` (its ``metadata.json`` records ``trained_on``) learned from every
    session of the lake, the held-out future included, while every other method is fitted on
    history only.  The packaged pretrained MiniLM never saw this data."""
    if model_dir is None:
        return None
    import json
    from pathlib import Path

    metadata = Path(model_dir) / "metadata.json"
    try:
        trained_on = json.loads(metadata.read_text()).get("trained_on")
    except (OSError, ValueError, AttributeError):
        return None
    if not trained_on:
        return None
    return (
        f"the encoder ({model_dir}) was trained by train_encoder on {trained_on.get('table')} "
        "including the events held out as the future, so the embedding's future metrics may be "
        "optimistic against the baselines, which see history only"
    )


@dataclass(frozen=True)
class EmbeddingSource:
    """How the ``embedding`` method gets history vectors: the run's model, and the vectors it
    already gave rendered texts (``content_hash``, ``embedding``, one row per hash:
    :func:`jobs.evaluation.methods.known_vectors`) to reuse."""

    model_dir: str
    known: DataFrame


def _fitters(
    config: AppConfig, k: int, embedding: EmbeddingSource | str, encoded: list[DataFrame]
) -> dict[str, Callable[[DataFrame], DataFrame]]:
    """Method name -> history units -> ``id``, ``segment``; the embedding method appends the
    history texts it encoded (``content_hash``, ``embedding``) to ``encoded``."""

    def embedded(units: DataFrame) -> DataFrame:
        if isinstance(embedding, str):
            raise NotApplicable(embedding)
        # One row per stored text, read by the reuse join, the left-anti join and the check
        # for anything left to encode: aggregated once, not once per read.
        known = embedding.known.localCheckpoint()
        vectors = encoded_histories(
            units, known=known, encoder=config.encoder, model_dir=embedding.model_dir
        )
        # Encoded once: K-Means reads its input many times, the assignment once more, and the
        # stage stores the new vectors from it.
        vectors = vectors.localCheckpoint(eager=True)
        row = vectors.agg(F.count_if(F.col(ENCODED)), F.count(F.lit(1))).first()
        fresh, total = (int(row[0]), int(row[1])) if row is not None else (0, 0)
        log.info(
            "backtest: %s of %s history vectors encoded, the others reused",
            f"{fresh:,}",
            f"{total:,}",
        )
        if fresh:
            # One vector per text (units rendering alike were encoded alike): the smallest id's.
            encoded.append(known_vectors(vectors.where(F.col(ENCODED))).localCheckpoint())
        return embedding_segments(vectors.select("id", "embedding"), k=k, cluster=config.cluster)

    return {"embedding": embedded, **baseline_fitters(config, k)}


def run_backtest(
    sessions: DataFrame,
    *,
    unit: str,
    units: DataFrame,
    k: int,
    config: AppConfig,
    embedding: EmbeddingSource | str,
) -> Backtest:
    """Run the configured protocol on human ``sessions`` for the evaluated ``units`` (``id``:
    user or session ids of the cluster run) with ``k`` segments per method.

    ``embedding``: where the embedding method's vectors come from, or the reason it cannot run
    (e.g. the configured encoder is not the run's model).  Methods or metrics that cannot be
    computed are listed in ``not_applicable``; a protocol without enough units gives a
    :class:`Backtest` with ``protocol`` None and the reason.  Runs Spark jobs.
    """
    key = "user_id" if unit == "user" else "session_id"
    # Read by every count of the protocol choice and by the split: filtered and joined once.
    human = (
        sessions.where(~F.col("is_bot"))
        .join(units.select(F.col("id").alias(key)).distinct(), key, "left_semi")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        return _run(human, unit=unit, k=k, config=config, embedding=embedding)
    finally:
        human.unpersist()


def _run(
    human: DataFrame, *, unit: str, k: int, config: AppConfig, embedding: EmbeddingSource | str
) -> Backtest:
    """:func:`run_backtest` on the human sessions of the evaluated units."""
    choice = choose_protocol(human, unit=unit, config=config.evaluate)
    if choice.protocol is None:
        log.warning("future metrics not applicable: %s", choice.reason)
        return Backtest(None, choice.reason)
    log.info("protocol %s: %s", choice.protocol, choice.reason)
    split = split_events(
        human, protocol=choice.protocol, unit=unit, config=config.evaluate, cutoff=choice.cutoff
    ).persist(StorageLevel.MEMORY_AND_DISK)
    history = history_units(split, unit=unit, sessionize=config.sessionize).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    targets = future_targets(split, unit=unit).persist(StorageLevel.MEMORY_AND_DISK)
    skipped: dict[tuple[str, str], str] = {}
    fitted = []
    encoded: list[DataFrame] = []
    try:
        for method, fit in _fitters(config, k, embedding, encoded).items():
            try:
                started = time.perf_counter()
                segments = fit(history).select(F.lit(method).alias("method"), "id", SEGMENT)
                fitted.append(segments.localCheckpoint(eager=True))
                log.info(
                    "backtest: %s fitted on history in %.1fs", method, time.perf_counter() - started
                )
            except NotApplicable as reason:
                log.warning("%s not applicable: %s", method, reason)
                skipped[(method, "*")] = str(reason)
        stored = encoded[0] if encoded else None
        if not fitted:
            return Backtest(choice.protocol, choice.reason, choice.cutoff, {}, skipped, 0, stored)
        all_segments = fitted[0]
        for more in fitted[1:]:
            all_segments = all_segments.unionByName(more)
        # Units that fit the driver's bound are scored there (the same numbers, no shuffle).
        scores = score_future(
            all_segments,
            history,
            targets,
            buckets=BOOTSTRAP_BUCKETS,
            local_rows=config.cluster.init_sample,
        )
        scores = FutureScores(
            scores.per_bucket, scores.auc_tables, scores.history_categories, skipped
        )
        metrics, not_applicable = future_metrics(
            scores,
            resamples=config.evaluate.bootstrap_resamples,
            seed=config.evaluate.seed,
        )
    finally:
        for frame in (split, history, targets):
            frame.unpersist()
    ordered = {m: metrics[m] for m in PROTOCOL_METHODS if m in metrics}
    return Backtest(
        choice.protocol,
        choice.reason,
        choice.cutoff,
        ordered,
        not_applicable,
        choice.scored_units,
        stored,
    )
