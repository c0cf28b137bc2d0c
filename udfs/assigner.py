"""The segment assigner: a unit's events in, its segment (``cluster_id``) and the distance to the
segment's centroid out, without Spark.  Rendering (:mod:`udfs.rendering`, the twin of the
batch job's) + the encoder (:mod:`udfs.encoder`) + the centroids of one cluster run, logged as one
MLflow ``pyfunc`` model by the ``cluster`` stage (:func:`log_assigner`).

* Input: one row per unit (user or session, as the run clustered), column ``events``: the unit's
  events oldest first, as in the ``events`` arrays of ``user_sequences`` / ``sessions``, each an
  object with the fields rendering reads (:data:`EVENT_FIELDS`; ``ts`` is not needed, the order
  is the array's).  The most recent ``sessionize.max_events`` are kept, as sessionize does.
* Output, row for row: ``cluster_id`` (long) and ``distance`` (double, Euclidean, in the
  embedding space).  ``cluster_id`` is the nearest of the run's centroids (exactly MLlib K-Means'
  rule), so the batch job's assignment is reproduced for the same rows when the encoder runs as
  it did in ``embed`` (fp32 gives the same vectors to ~1e-6; bf16 results depend on batching by
  ~1e-3, which can move a unit on a segment boundary).

The model's code is :mod:`udfs.assigner_model` (MLflow "models from code": no pickle); it needs
this project installed where it loads (see :func:`log_assigner`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs.core.config import EncoderConfig
from udfs.encoder import Encoder, load_encoder, model_version, packaged_minilm_path
from udfs.rendering import render_events

log = logging.getLogger(__name__)

#: The name of the model inside its MLflow run.
MODEL_NAME = "segment_assigner"
#: Fields of one event the model reads: (name, MLflow type, required).
EVENT_FIELDS = (
    ("event_type", "string", True),
    ("item_id", "string", False),
    ("category", "string", False),
    ("brand", "string", False),
    ("price", "double", False),
    ("session_id", "string", False),
)
CENTROIDS_ARTIFACT = "centroids"
ENCODER_ARTIFACT = "encoder"


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid (ties: the lowest index, as MLlib) and the Euclidean
    distance to it, in float64: ``vectors`` (n, d), ``centroids`` (k, d) -> (n,) int64,
    (n,) float64.  O(n·k·d) memory-light (one (n, k) matrix)."""
    x = np.asarray(vectors, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    if x.shape[0] == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    squared = np.stack([((x - centre) ** 2).sum(axis=1) for centre in c], axis=1)
    ids = squared.argmin(axis=1)
    return ids.astype(np.int64), np.sqrt(squared[np.arange(len(ids)), ids])


def _settings_of(encoder: EncoderConfig) -> dict[str, Any]:
    """The encoder settings the assigner runs with, as plain data (device: auto unless cpu)."""
    settings = dataclasses.asdict(encoder)
    settings["price_band_edges"] = list(encoder.price_band_edges)
    settings["device"] = "cpu" if encoder.device == "cpu" else "auto"
    return settings


@dataclass
class Assigner:
    """A loaded assigner; :meth:`from_model` builds it from a logged model's config and
    artifacts."""

    encoder: Encoder
    encoder_config: EncoderConfig
    centroids: np.ndarray  # (k, d) float64
    max_events: int

    @classmethod
    def from_model(cls, config: Mapping[str, Any], artifacts: Mapping[str, str]) -> Assigner:
        """Load the encoder (the logged directory, else the packaged all-MiniLM-L6-v2) and the
        centroids; ``RuntimeError`` when the weights are not the clustered ``model_version``."""
        settings = dict(config["encoder"])
        settings["price_band_edges"] = tuple(settings["price_band_edges"])
        encoder_config = EncoderConfig(**settings)
        model_dir = (
            Path(artifacts[ENCODER_ARTIFACT])
            if ENCODER_ARTIFACT in artifacts
            else packaged_minilm_path()
        )
        found = model_version(encoder_config, model_dir)
        if found != config["model_version"]:
            raise RuntimeError(
                f"the encoder at {model_dir} is model_version {found}, the segments were "
                f"clustered on {config['model_version']}: install the package version the model "
                "was logged with"
            )
        return cls(
            encoder=load_encoder(encoder_config, model_dir=model_dir),
            encoder_config=encoder_config,
            centroids=np.load(artifacts[CENTROIDS_ARTIFACT]),
            max_events=int(config["max_events"]),
        )

    def render(self, units: Iterable[Sequence[Mapping[str, Any]] | None]) -> list[str]:
        """Each unit's events (oldest first; None = none) -> the encoder's input string."""
        keep = self.max_events
        return [
            render_events(([] if events is None else list(events))[-keep:], self.encoder_config)
            for events in units
        ]

    def assign(
        self, units: Iterable[Sequence[Mapping[str, Any]] | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Units' events -> (n,) int64 ``cluster_id`` and (n,) float64 ``distance``."""
        vectors = self.encoder.encode(self.render(units))
        return nearest_centroid(vectors, self.centroids)


def signature() -> Any:
    """The model's explicit ``ModelSignature``: input ``events`` (array of event objects,
    :data:`EVENT_FIELDS`), output ``cluster_id`` (long) and ``distance`` (double)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Object, Property, Schema

    event = Object(
        [Property(name, DataType[kind], required=required) for name, kind, required in EVENT_FIELDS]
    )
    return ModelSignature(
        inputs=Schema([ColSpec(Array(event), "events")]),
        outputs=Schema(
            [ColSpec(DataType.long, "cluster_id"), ColSpec(DataType.double, "distance")]
        ),
    )


def _requirements() -> list[str]:
    """pip requirements of the logged model: this project (which brings torch, transformers and
    the packaged MiniLM) at the installed version, and the MLflow that logged it."""
    from importlib.metadata import PackageNotFoundError, version

    import mlflow

    try:
        project = f"clickstream-segments=={version('clickstream-segments')}"
    except PackageNotFoundError:  # running from a source tree or --py-files archive
        project = "clickstream-segments"
    return [project, f"mlflow-skinny=={mlflow.__version__}"]


def log_assigner(
    *,
    encoder: EncoderConfig,
    model_dir: Path,
    version: str,
    centroids: np.ndarray,
    max_events: int,
    unit: str,
    run_id: str,
    scratch: Path,
    registered_model_name: str | None = None,
) -> Any:
    """Log the assigner in the active MLflow run (and register it under
    ``registered_model_name`` when given); returns MLflow's ``ModelInfo``.

    ``encoder``: the resolved encoder settings (kind ``text`` or ``sequence``) whose weights in
    ``model_dir`` are ``version``; ``centroids``: (k, d) float64, row i = ``cluster_id`` i;
    ``scratch``: an empty folder for the centroids and the model's code file.  The packaged
    all-MiniLM-L6-v2 is not copied (it comes with the project's wheel, checked by
    ``model_version`` on load); any other encoder directory (a trained sequence encoder,
    ``encoder.model_path``) is logged with it.

    Environment: the model depends on this project's wheel instead of ``code_paths``: the wheel
    pins one tested version of the code and brings its dependencies (torch, transformers, the
    packaged encoder), while ``code_paths`` would copy the whole pipeline into every model and put
    it in front of an installed copy on ``sys.path``.  Where the wheel is not on an index, install
    it first (the Databricks bundle deploys it; elsewhere ``pip install dist/*.whl``).
    """
    import pkgutil

    import mlflow

    path = scratch / "centroids.npy"
    np.save(path, np.asarray(centroids, dtype=np.float64))
    # The model's code file, copied out of the package (which may be a --py-files zip).
    code = scratch / "assigner_model.py"
    code.write_bytes(pkgutil.get_data("udfs", "assigner_model.py") or b"")
    artifacts = {CENTROIDS_ARTIFACT: str(path)}
    if model_dir.resolve() != packaged_minilm_path().resolve():
        artifacts[ENCODER_ARTIFACT] = str(model_dir)
    config = {
        "encoder": _settings_of(encoder),
        "model_version": version,
        "max_events": max_events,
        "unit": unit,
        "run_id": run_id,
    }
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=str(code),
        artifacts=artifacts,
        model_config=config,
        signature=signature(),
        pip_requirements=_requirements(),
        registered_model_name=registered_model_name,
    )
