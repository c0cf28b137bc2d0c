"""The stage registry: each stage's name, entry module, the tables it reads and writes.

Every way of running a stage goes through this list: ``segments <stage>``, ``segments pipeline``,
``spark-submit jobs/<stage>.py`` and the Databricks wheel tasks (console scripts that call each
stage module's ``main``).  Stage modules are imported lazily by name (:meth:`Stage.load`), so
the registry and the CLI sit below the stages and never import one at module level.

A stage module provides:

* ``run(spark, lake, config, *, run_id)`` (``run(config, *, run_id)`` when ``needs_spark`` is
  false) returning a result object whose ``summary()`` is the stage's one-line report;
* ``main(argv)`` for ``spark-submit jobs/<stage>.py``: ``jobs.runner.run_stage(<name>, argv)``;
* optionally ``add_arguments(parser)`` and ``apply_arguments(args, config) -> config`` for
  options of its own (``cluster --assign-only --model PATH``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from jobs.core.tables import (
    CLUSTER_ASSIGNMENTS,
    CLUSTER_CENTROIDS,
    CLUSTER_METRICS,
    CLUSTER_PROFILES,
    EMBEDDINGS,
    EVENTS,
    EVENTS_QUARANTINE,
    HISTORY_EMBEDDINGS,
    INGEST_LOG,
    SESSIONIZE_LOG,
    SESSIONS,
    USER_SEQUENCES,
)

if TYPE_CHECKING:
    from jobs.core.config import AppConfig


class StageResult(Protocol):
    """What every stage's ``run`` returns."""

    def summary(self) -> str:
        """One human-readable line: what the stage did, with counts."""
        ...


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, as the CLI, the pipeline and the docs see it."""

    name: str
    module: str
    description: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    needs_spark: bool = True
    #: Whether a pipeline run with this config calls for the stage, and why not (None: always).
    applies: Callable[[AppConfig], tuple[bool, str]] | None = None

    def load(self) -> ModuleType:
        """Import the stage's module (by name: nothing imports a stage at module level)."""
        return importlib.import_module(self.module)

    def applies_to(self, config: AppConfig) -> tuple[bool, str]:
        return (True, "") if self.applies is None else self.applies(config)


def _needs_training(config: AppConfig) -> tuple[bool, str]:
    if config.encoder.kind in ("sequence", "auto"):  # auto: the stage decides on the data
        return True, ""
    return False, f"encoder.kind={config.encoder.kind} needs no training"


STAGES: tuple[Stage, ...] = (
    Stage(
        "generate",
        "jobs.generate",
        "synthetic clickstream with planted personas (raw files, not tables)",
        reads=(),
        writes=(),
        needs_spark=False,
    ),
    Stage(
        "ingest",
        "jobs.ingest",
        "raw files -> events, quarantine with reasons, row accounting",
        reads=(INGEST_LOG, EVENTS, EVENTS_QUARANTINE),
        writes=(EVENTS, EVENTS_QUARANTINE, INGEST_LOG),
    ),
    Stage(
        "sessionize",
        "jobs.sessionize",
        "events -> sessions and per-user sequences, bot flags",
        reads=(EVENTS, INGEST_LOG, SESSIONIZE_LOG, SESSIONS, USER_SEQUENCES),
        writes=(SESSIONS, USER_SEQUENCES, SESSIONIZE_LOG),
    ),
    Stage(
        "train_encoder",
        "jobs.train_encoder",
        "self-supervised training of the sequence encoder (or contrastive fine-tuning)",
        reads=(SESSIONS,),
        writes=(),
        applies=_needs_training,
    ),
    Stage(
        "embed",
        "jobs.embed",
        "sequences -> transformer embeddings (pandas UDF)",
        reads=(USER_SEQUENCES, SESSIONS, EMBEDDINGS),
        writes=(EMBEDDINGS,),
    ),
    Stage(
        "cluster",
        "jobs.cluster",
        "K-Means over one model_version of embeddings",
        reads=(EMBEDDINGS,),
        writes=(CLUSTER_ASSIGNMENTS, CLUSTER_CENTROIDS, CLUSTER_METRICS),
    ),
    Stage(
        "evaluate",
        "jobs.evaluate",
        "metrics against baselines, profiles and the report of one cluster run",
        reads=(
            CLUSTER_ASSIGNMENTS,
            CLUSTER_CENTROIDS,
            CLUSTER_METRICS,
            EMBEDDINGS,
            HISTORY_EMBEDDINGS,
            USER_SEQUENCES,
            SESSIONS,
        ),
        writes=(CLUSTER_METRICS, CLUSTER_PROFILES, HISTORY_EMBEDDINGS),
    ),
)

NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    """The registered stage called ``name``; ``KeyError`` names the stages that exist."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(NAMES)}") from None


def select(start: str | None, stop: str | None) -> list[Stage]:
    """The stages from ``start`` to ``stop`` inclusive, in pipeline order."""
    first = NAMES.index(start) if start else 0
    last = NAMES.index(stop) if stop else len(NAMES) - 1
    if first > last:
        raise ValueError(f"--from {start} comes after --to {stop}")
    return list(STAGES[first : last + 1])
