"""An MLlib ``KMeansModel`` holding given centres, so that assigning, saving and
``assign-only`` stay MLlib's whoever found the centres (:class:`SampledStartKMeans`' k-means++
start and Lloyd passes).

pyspark.ml has no public way to make a ``KMeansModel`` from centres (no ``initialModel``; the
RDD API's is not available under Spark Connect).  Two routes, the same model:

* portable (Spark Connect included): MLlib's ``KMeans`` fitted on the k centres themselves with a
  random start, which picks all k of them, and ``maxIter=0`` (the start is the model).  Three
  Spark jobs (``takeSample``'s count and sample, the training summary's cluster sizes): about
  0.3-0.5 s per model on a warm local session, more than scikit-learn's whole fit of the README
  demo's 5,000 users;
* classic sessions: the model built in this process's JVM without a job (below, a compatibility
  shim), which the portable route backs up if the JVM refuses it.

Either way the model's centres are checked against the given ones.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

FEATURES = "features"
PREDICTION = "cluster_id"

log = logging.getLogger(__name__)


def model_with_centres(spark: SparkSession, centres: Any, *, seed: int) -> Any:
    """A pyspark ``KMeansModel`` (Euclidean, features :data:`FEATURES`, prediction
    :data:`PREDICTION`, ``k`` = the number of centres) whose centres are exactly ``centres``
    ((k, d) array, distinct rows).  ``RuntimeError`` if MLlib does not reproduce them."""
    import numpy as np
    from pyspark.ml.clustering import KMeans

    given = np.asarray(centres, dtype=np.float64)
    estimator = KMeans(
        k=len(given),
        initMode="random",
        maxIter=0,
        seed=seed,
        solver="row",
        featuresCol=FEATURES,
        predictionCol=PREDICTION,
    )
    model = _built_in_jvm(spark, given, estimator)
    if model is None:
        model = estimator.fit(_centre_rows(spark, given))
    got = np.array(model.clusterCenters())
    if got.shape != given.shape or not np.allclose(
        got[np.lexsort(got.T[::-1])], given[np.lexsort(given.T[::-1])]
    ):
        raise RuntimeError("MLlib did not reproduce the K-Means centres it was given")
    return model


def _centre_rows(spark: SparkSession, given: Any) -> DataFrame:
    """The (k, d) array ``given`` as one partition of :data:`FEATURES` vectors."""
    import pyarrow as pa
    from pyspark.ml.functions import array_to_vector

    column = pa.FixedSizeListArray.from_arrays(pa.array(given.reshape(-1)), given.shape[1])
    # From an Arrow table: a local relation, which MLlib's few jobs re-read in well under a
    # second (a list of Python vectors became a pickled RDD: 1.2 s per model; a cache of it
    # would not run on Databricks serverless).
    return (
        spark.createDataFrame(pa.table({"centre": column.cast(pa.list_(pa.float64()))}))
        .select(array_to_vector(F.col("centre")).alias(FEATURES))
        .coalesce(1)
    )


def _built_in_jvm(spark: SparkSession, given: Any, estimator: Any) -> Any | None:
    """Compatibility shim (classic sessions only: the JVM through py4j).  The model
    ``estimator.fit`` would return, built without a job: MLlib's
    ``org.apache.spark.mllib.clustering.KMeansModel`` from the centres (its public Java
    constructor, Euclidean) inside ``org.apache.spark.ml.clustering.KMeansModel`` (the
    constructor ``KMeans.fit`` itself calls; ``private[ml]`` in Scala, public in the bytecode),
    with ``estimator``'s params copied as pyspark's ``JavaEstimator._fit`` copies them (they
    reach the JVM on ``transform`` and ``save``).  None under Spark Connect (no JVM here) or when
    the JVM refuses a call."""
    from jobs.core.session import is_connect

    if is_connect(spark):
        return None
    try:
        from pyspark.ml.clustering import KMeansModel
        from pyspark.mllib.common import _py2java
        from pyspark.mllib.linalg import DenseVector

        context = spark.sparkContext
        jvm = context._jvm
        if jvm is None:
            return None
        # One pickled list through MLlib's own Python SerDe (what pyspark.mllib sends), not a
        # py4j call per number.
        vectors = _py2java(context, [DenseVector(row) for row in given])
        parent = jvm.org.apache.spark.mllib.clustering.KMeansModel(vectors)
        java_model = jvm.org.apache.spark.ml.clustering.KMeansModel(estimator.uid, parent)
    except Exception as exc:  # an unexpected JVM or pyspark: the portable route still works
        log.debug("building the K-Means model in the JVM failed, fitting it instead: %s", exc)
        return None
    return estimator._copyValues(KMeansModel(java_model))
