"""MLflow logging of a ``cluster`` run: the settings that shaped it, its ``cluster_metrics``
and the segment assigner model (:mod:`udfs.assigner`), through :mod:`jobs.core.tracking`.

* params: ``run_id``, ``k`` (chosen), ``model_version``, ``backend``, ``unit``, and the
  ``cluster.*``, ``embed.*`` and (resolved) ``encoder.*`` settings, ``sessionize.max_events``;
* metrics: ``rows``; the run's ``cluster_metrics`` rows as ``<method>/<metric>`` at the chosen
  k, and every candidate's as ``sweep/<method>/<metric>`` with ``step`` = k (a curve over k);
* model ``segment_assigner``: rendering + encoder + the run's centroids, registered under
  ``mlflow.registered_model_name`` when set.  It is left out (logged, with the reason in the tag
  ``assigner``) when it could not reproduce the run: bisecting K-Means assigns by its tree, not
  by the nearest centroid, and the configured encoder may not be the clustered model version.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pyspark.sql import functions as F

from jobs.core.config import AppConfig, EncoderConfig, config_to_dict
from jobs.core.lake import Lake
from jobs.core.tables import CLUSTER_METRICS
from jobs.core.tracking import StageRun, log_stage

log = logging.getLogger(__name__)


def encoder_of_version(config: AppConfig, version: str) -> tuple[EncoderConfig, Path] | str:
    """The encoder settings (kind resolved) and weights directory that embed ``version`` with
    this configuration, or why there are none.  ``encoder.kind: auto`` tries both of its outcomes
    (:func:`jobs.sequences.encoder_choice.resolve_encoder`); the model version, a hash of the
    weights and the rendering settings, decides.  No Spark work."""
    from udfs.encoder import model_version, resolve_model_path

    enc = config.encoder
    candidates = (
        [
            dataclasses.replace(enc, kind="text"),
            dataclasses.replace(enc, kind="sequence", include_item_ids=True),
        ]
        if enc.kind == "auto"
        else [enc]
    )
    for candidate in candidates:
        try:
            model_dir = resolve_model_path(
                candidate, default_sequence_dir=config.train_encoder.output_dir
            )
        except (FileNotFoundError, ValueError):
            continue
        if model_version(candidate, model_dir) == version:
            return candidate, model_dir
    return f"the configured encoder does not embed model_version {version}"


def _metric_rows(lake: Lake, run_id: str) -> list[tuple[str, int, float]]:
    """(``<method>/<metric>``, k, value) of the run's ``cluster_metrics`` rows."""
    if not lake.exists(CLUSTER_METRICS):
        return []
    rows = (
        lake.read(CLUSTER_METRICS)
        .where(F.col("run_id") == run_id)
        .select("method", "metric", "k", "value")
        .collect()
    )
    return [(f"{r['method']}/{r['metric']}", int(r["k"]), float(r["value"])) for r in rows]


class ClusterOutcome(Protocol):
    """What the ``cluster`` stage's result says about the run (``jobs.cluster.ClusterResult``)."""

    @property
    def k(self) -> int: ...
    @property
    def backend(self) -> str: ...
    @property
    def rows(self) -> int: ...
    @property
    def model_version(self) -> str: ...


def log_cluster_run(
    lake: Lake, config: AppConfig, result: ClusterOutcome, *, model: Any, run_id: str
) -> str | None:
    """Log the cluster run ``run_id`` (``model``: the fitted or assign-only model, MLlib or
    spark-rapids-ml, whose ``result.k`` centroids were written) to MLflow; returns the MLflow run
    id, None when ``mlflow.enabled`` is false.  ``PipelineError`` when MLflow cannot be reached
    (:func:`jobs.core.tracking.stage_run`)."""
    if not config.mlflow.enabled:
        return None
    k, model_version = result.k, result.model_version
    found: tuple[EncoderConfig, Path] | str = (
        "bisecting K-Means assigns by its tree, not by the nearest centroid"
        if type(model).__name__ == "BisectingKMeansModel"
        else encoder_of_version(config, model_version)
    )
    metrics = _metric_rows(lake, run_id)
    encoder = found[0] if isinstance(found, tuple) else config.encoder

    def body(run: StageRun) -> None:
        run.log_params(
            {
                "run_id": run_id,
                "k": k,
                "model_version": model_version,
                "backend": result.backend,
                "unit": config.embed.unit,
                "cluster": config_to_dict(config.cluster),
                "embed": config_to_dict(config.embed),
                "encoder": config_to_dict(encoder),
                "sessionize.max_events": config.sessionize.max_events,
            }
        )
        run.log_metrics({"rows": result.rows})
        run.log_metrics({name: value for name, at, value in metrics if at == k})
        for step in sorted({at for _, at, _ in metrics}):
            run.log_metrics(
                {f"sweep/{name}": value for name, at, value in metrics if at == step}, step=step
            )
        if isinstance(found, str):
            log.info("mlflow: no segment assigner model logged: %s", found)
            run.mlflow.set_tag("assigner", f"not logged: {found}")
            return
        _log_assigner(run, config, found, model, model_version=model_version, run_id=run_id)

    return log_stage(config.mlflow, stage="cluster", run_id=run_id, body=body)


def _log_assigner(
    run: StageRun,
    config: AppConfig,
    encoder: tuple[EncoderConfig, Path],
    model: Any,
    *,
    model_version: str,
    run_id: str,
) -> None:
    from udfs.assigner import log_assigner

    centroids = np.array([np.asarray(c, dtype=np.float64) for c in model.clusterCenters()])
    with tempfile.TemporaryDirectory(prefix="segment-assigner-") as scratch, run.quietly():
        info = log_assigner(
            encoder=encoder[0],
            model_dir=encoder[1],
            version=model_version,
            centroids=centroids,
            max_events=config.sessionize.max_events,
            unit=config.embed.unit,
            run_id=run_id,
            scratch=Path(scratch),
            registered_model_name=config.mlflow.registered_model_name,
        )
    registered = getattr(info, "registered_model_version", None)
    run.mlflow.set_tag("assigner", info.model_uri)
    log.info(
        "mlflow: segment assigner (k=%d, %s encoder) logged as %s%s",
        len(centroids),
        encoder[0].kind,
        info.model_uri,
        f", registered as {config.mlflow.registered_model_name} version {registered}"
        if config.mlflow.registered_model_name
        else "",
    )
