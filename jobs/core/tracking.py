"""MLflow tracking of a stage run: where runs go, one run per stage invocation, quiet logs.

* Where (``mlflow.tracking_uri``): the configured URI (a plain path is a file store there); when
  null, ``databricks`` on Databricks (``DATABRICKS_RUNTIME_VERSION`` set), else the local store
  ``data/mlruns`` (relative to the working directory, like ``lake.root``).  The configuration
  decides, not ``MLFLOW_TRACKING_URI``: MLflow itself rewrites that variable in-process.
* The local store is MLflow's file store: it needs nothing but ``mlflow-skinny`` and works
  offline.  MLflow 3 refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true`` (its database store
  needs SQLAlchemy, which ``mlflow-skinny`` does not have), so that variable is set for file
  URIs only.
* On Databricks an experiment name without a leading ``/`` becomes ``/Shared/<name>`` (workspace
  experiments are paths); a three-part ``registered_model_name`` registers in Unity Catalog, a
  one-part name in the workspace model registry.
* Every run is tagged ``run_id`` (the Delta rows' ``run_id``) and ``stage``, so
  ``tags.run_id = '<run id>'`` finds the runs of a pipeline run, and a run's tag finds its rows.
* MLflow's own INFO lines and advisory warnings stay out of the job log (WARNING and up pass).

The stages call this through :mod:`jobs.clustering.tracking` and :mod:`jobs.evaluation.tracking`;
nothing here imports MLflow at module level, so ``mlflow.enabled: false`` needs no MLflow.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jobs.core.config import MlflowConfig
from jobs.core.errors import PipelineError

log = logging.getLogger(__name__)

#: The local tracking store when nothing else is configured (git-ignored, under ``data/``).
LOCAL_STORE = "data/mlruns"
INSTALL_HINT = "pip install 'clickstream-segments[mlflow]'"
#: How MLflow's model registry announces what it did (printed, not logged).
_REGISTRY_NOTICES = ("Successfully registered model", "Created version", "Registered model")
#: MLflow's limit on a parameter value (longer values are cut, with a marker).
_MAX_PARAM = 6000


def mlflow_installed() -> bool:
    """Whether ``mlflow`` (or ``mlflow-skinny``) is importable, without importing it."""
    return importlib.util.find_spec("mlflow") is not None


def on_databricks() -> bool:
    """Whether this process runs on a Databricks runtime."""
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))


def resolve_tracking_uri(config: MlflowConfig) -> str:
    """The tracking URI for ``config``: the configured one, else ``databricks`` on Databricks,
    else ``file://`` + the absolute path of :data:`LOCAL_STORE`."""
    if config.tracking_uri:
        uri = config.tracking_uri
        if uri == "databricks" or urlparse(uri).scheme:
            return uri
        return Path(uri).resolve().as_uri()  # a plain path: a file store there
    if on_databricks():
        return "databricks"
    return Path(LOCAL_STORE).resolve().as_uri()


def experiment_name(config: MlflowConfig, uri: str) -> str:
    """``mlflow.experiment_name``, made a workspace path (``/Shared/<name>``) on Databricks."""
    name = config.experiment_name
    if uri.startswith("databricks") and not name.startswith("/"):
        return f"/Shared/{name}"
    return name


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings -> ``{"section.key": "value"}`` (lists and mappings as text, values over
    MLflow's 6000 characters cut)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = "null" if value is None else str(value)
            flat[name] = text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."
    return flat


def _quiet() -> None:
    """MLflow's INFO chatter (experiment created, model registered) out of the job log."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class StageRun:
    """The active MLflow run of one stage, handed to the stage's logging code."""

    def __init__(self, mlflow: Any, run: Any, uri: str) -> None:
        self.mlflow = mlflow
        self.run_id: str = run.info.run_id
        self.tracking_uri = uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Parameters (flattened, see :func:`flatten_params`)."""
        self.mlflow.log_params(flatten_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Finite metrics (a non-finite value is left out, as in ``cluster_metrics``)."""
        finite = {k: float(v) for k, v in metrics.items() if v == v and abs(v) != float("inf")}
        if finite:
            self.mlflow.log_metrics(finite, step=step)

    @contextmanager
    def quietly(self) -> Iterator[None]:
        """MLflow's registration notices (``Successfully registered model ...``, ``Created
        version ...``: printed to stderr, not logged) out of the job log for the block; the
        stage logs one line of its own instead.  Anything else written to stderr passes."""
        buffer = io.StringIO()
        try:
            with redirect_stderr(buffer):
                yield
        finally:
            for line in buffer.getvalue().splitlines(keepends=True):
                if not line.startswith(_REGISTRY_NOTICES):
                    sys.stderr.write(line)

    def log_artifacts(self, files: Iterable[Path], artifact_path: str | None = None) -> None:
        """Files under the run's artifacts (``artifact_path`` a folder inside them)."""
        for path in files:
            self.mlflow.log_artifact(str(path), artifact_path=artifact_path)


@contextmanager
def stage_run(
    config: MlflowConfig, *, stage: str, run_id: str, tags: Mapping[str, str] | None = None
) -> Iterator[StageRun]:
    """Open an MLflow run named ``<stage>-<run_id>`` tagged ``run_id`` and ``stage`` (plus
    ``tags``) in the configured experiment; it ends FINISHED, or FAILED when the block raises.

    An MLflow or I/O error (tracking server unreachable, store not writable) becomes a
    :class:`PipelineError` naming ``mlflow.tracking_uri`` (the stage's tables are already
    committed then: a rerun is idempotent).  Call only when ``config.enabled``.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    _quiet()
    uri = resolve_tracking_uri(config)
    if uri.startswith("file:"):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        mlflow.set_tracking_uri(uri)
        if uri.startswith("databricks") and config.registered_model_name:
            # catalog.schema.model: Unity Catalog; a one-part name: the workspace registry.
            three_part = config.registered_model_name.count(".") == 2
            mlflow.set_registry_uri("databricks-uc" if three_part else uri)
        experiment = mlflow.set_experiment(experiment_name(config, uri))
        with (
            warnings.catch_warnings(),
            mlflow.start_run(
                experiment_id=experiment.experiment_id,
                run_name=f"{stage}-{run_id}",
                tags={"run_id": run_id, "stage": stage, **(tags or {})},
            ) as run,
        ):
            # MLflow's advisory UserWarnings (input examples, type hints) are for notebooks.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
            yield StageRun(mlflow, run, uri)
    except (MlflowException, OSError) as exc:
        raise PipelineError(
            f"MLflow logging of the {stage} run {run_id} to {uri} failed ({exc}); the tables are "
            "written. Fix mlflow.tracking_uri, or set mlflow.enabled=false, and rerun"
        ) from exc


def log_stage(
    config: MlflowConfig,
    *,
    stage: str,
    run_id: str,
    body: Callable[[StageRun], None],
    tags: Mapping[str, str] | None = None,
) -> str | None:
    """Run ``body`` inside :func:`stage_run` when ``config.enabled`` and return the MLflow run
    id (logged with the experiment and URI), else None."""
    if not config.enabled:
        return None
    if not mlflow_installed():  # the config loader refuses this; a hand-built config may not
        raise PipelineError(
            f"mlflow.enabled is true but MLflow is not installed: {INSTALL_HINT}, "
            "or set mlflow.enabled=false"
        )
    with stage_run(config, stage=stage, run_id=run_id, tags=tags) as run:
        body(run)
    log.info(
        "mlflow: %s run %s logged as MLflow run %s (experiment %s, %s)",
        stage,
        run_id,
        run.run_id,
        experiment_name(config, run.tracking_uri),
        run.tracking_uri,
    )
    return run.run_id
