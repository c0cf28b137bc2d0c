"""MLflow logging of an ``evaluate`` run, through :mod:`jobs.core.tracking`.

The MLflow run is tagged ``run_id`` = the evaluated cluster run (the ``run_id`` of the
``cluster_metrics`` and ``cluster_profiles`` rows it wrote; in ``segments pipeline`` also the
pipeline's run id) and ``stage_run_id`` = this invocation's run id.  Params: ``evaluate.*``, the
encoder settings, ``cluster_run_id``, ``k``, ``unit``, ``model_version``, ``backend``, ``rows``;
metrics: every value of the evaluation as ``<method>/<metric>``; artifacts: ``report.md`` and its
PNG plots under ``report/``.  Reads and writes no table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from jobs.core.config import AppConfig, config_to_dict
from jobs.core.tracking import StageRun, log_stage


class EvaluateOutcome(Protocol):
    """What the ``evaluate`` stage's result says (``jobs.evaluate.EvaluateResult``)."""

    @property
    def run_id(self) -> str: ...  # the evaluated cluster run
    @property
    def k(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def metrics(self) -> dict[str, dict[str, float]]: ...  # method -> metric -> value


class EvaluatedRun(Protocol):
    """What the evaluated cluster run clustered (``jobs.evaluate._Target``)."""

    @property
    def unit(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def backend(self) -> str: ...


def log_evaluate_run(
    config: AppConfig,
    result: EvaluateOutcome,
    target: EvaluatedRun,
    *,
    report: Path,
    run_id: str,
) -> str | None:
    """Log the evaluation ``result`` of the cluster run ``result.run_id`` (``report``: the
    ``report.md`` written beside its PNG plots; ``run_id``: this invocation's) to MLflow; returns
    the MLflow run id, None when ``mlflow.enabled`` is false.  ``PipelineError`` when MLflow
    cannot be reached (:func:`jobs.core.tracking.stage_run`)."""
    cluster_run = result.run_id

    def body(run: StageRun) -> None:
        run.log_params(
            {
                "run_id": cluster_run,
                "k": result.k,
                "unit": target.unit,
                "model_version": target.model_version,
                "backend": target.backend,
                "rows": result.rows,
                "evaluate": config_to_dict(config.evaluate),
                "encoder": config_to_dict(config.encoder),
            }
        )
        run.log_metrics(
            {
                f"{method}/{name}": value
                for method, values in result.metrics.items()
                for name, value in values.items()
            }
        )
        plots = sorted(report.parent.glob("*.png"))
        run.log_artifacts([report, *plots], artifact_path="report")

    return log_stage(
        config.mlflow,
        stage="evaluate",
        run_id=cluster_run,
        body=body,
        tags={"stage_run_id": run_id},
    )
