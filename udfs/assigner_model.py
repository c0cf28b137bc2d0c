"""The segment assigner as an MLflow ``pyfunc`` model, defined from code: MLflow copies this file
into the logged model and runs it on load (nothing is pickled).  The logic is
:class:`udfs.assigner.Assigner`; this file only adapts it to MLflow's interface.  Importing it
registers the model with ``mlflow.models.set_model`` (that is how models from code work), so only
MLflow and :func:`udfs.assigner.log_assigner` import it.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from udfs.assigner import Assigner


class SegmentAssignerModel(PythonModel):
    """``predict``: a DataFrame with column ``events`` (one unit per row) -> a DataFrame with
    ``cluster_id`` (int64) and ``distance`` (float64), row for row."""

    def __init__(self) -> None:
        self._assigner: Assigner | None = None

    def load_context(self, context: PythonModelContext) -> None:
        """Load the encoder and centroids once per process (``RuntimeError`` when the installed
        encoder is not the model version the segments were clustered on)."""
        self._assigner = Assigner.from_model(context.model_config, context.artifacts)

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Assign each row's unit; ``KeyError`` without an ``events`` column."""
        assert self._assigner is not None, "load_context has not run"
        ids, distances = self._assigner.assign(model_input["events"].tolist())
        return pd.DataFrame({"cluster_id": ids, "distance": distances}, index=model_input.index)


mlflow.models.set_model(SegmentAssignerModel())
