"""An MLlib ``KMeansModel`` holding given centres, so that assigning, saving and
``assign-only`` stay MLlib's whoever found the centres (:class:`SampledStartKMeans`' k-means++
start and Lloyd passes).

pyspark.ml has no public way to make a ``KMeansModel`` from centres (no ``initialModel``; the
RDD API's is not available under Spark Connect).  Two routes, the same model:

* portable (Spark Connect included): MLlib's ``KMeans`` fitted on the k centres themselves with a
  random start, which picks all k of them, and ``maxIter=0`` (the start is the model).  Three
  Spark jobs (``takeSample``'s count and sample, the training summary's cluster sizes), six the
  first time a (k, seed) is met (below): about 0.3-0.5 s per fit on a warm local session, more
  than scikit-learn's whole fit of the README demo's 5,000 users;
* classic sessions: the model built in this process's JVM without a job (below, a compatibility
  shim), which the portable route backs up if the JVM refuses it.

Either way the model's centres are the given ones *in the given order* (the fitted route's are
read back and checked, the JVM route's the first time in a process), so that a
centre's ``cluster_id`` is its row in ``centres`` and a classic and a Connect run number the
same segments alike.  MLlib's random start numbers the centres in the order it draws them
(``RDD.takeSample`` shuffles all k rows with a generator seeded from ``seed``: an order that
depends on k and the seed only); the portable route learns that order from its first fit of
each (k, seed) and then feeds the centres pre-shuffled so that the draw puts them back in
place.  Should an MLlib draw otherwise, the order is learnt again once; if it still differs, a
warning says so and the model (right centres, MLlib's numbering) is kept.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

FEATURES = "features"
PREDICTION = "cluster_id"

log = logging.getLogger(__name__)

#: For each (number of centres, seed): MLlib's draw order, the rows of its input in the order
#: the fitted model numbers them (learnt by :func:`_fitted_in_order`, per process).
_DRAW_ORDER: dict[tuple[int, int], Any] = {}
#: Whether building a model in the JVM has failed once in this process (then said once).
_JVM_REFUSED: list[bool] = []
#: Whether a model built in the JVM held exactly its centres once in this process.
_JVM_CHECKED: list[bool] = []


def model_with_centres(spark: SparkSession, centres: Any, *, seed: int) -> Any:
    """A pyspark ``KMeansModel`` (Euclidean, features :data:`FEATURES`, prediction
    :data:`PREDICTION`, ``k`` = the number of centres) whose centres are exactly ``centres``
    ((k, d) array, distinct rows), in that order: cluster ``i`` is ``centres[i]``.
    ``RuntimeError`` if MLlib does not reproduce them (checked as :func:`numbered_model`
    says)."""
    return numbered_model(spark, centres, seed=seed)[0]


def numbered_model(spark: SparkSession, centres: Any, *, seed: int) -> tuple[Any, Any]:
    """:func:`model_with_centres` and the model's centres as it numbers them ((k, d) float64:
    ``centres`` themselves, unless MLlib numbered them otherwise, which a warning says), so
    that a caller need not read them back (``clusterCenters()`` costs a py4j round trip of
    about 50 ms on a warm local session).

    The model built in the JVM holds the values it was sent (MLlib's SerDe unpickles the
    doubles' bytes; ``tests/test_cluster.py`` compares both routes' centres): it is read back
    and checked once per process, in case another Spark version built it otherwise (then the
    fitted route takes over, with a warning).  A fitted model is read back and checked
    every time."""
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
    if model is not None and not _JVM_CHECKED:
        if np.array_equal(np.array(model.clusterCenters()), given):
            _JVM_CHECKED.append(True)
        else:
            _JVM_REFUSED.append(True)
            log.warning("K-Means models built in the JVM lose their centres: fitting instead")
            model = None
    if model is not None:
        return model, given
    model = _fitted_in_order(spark, given, estimator, seed=seed)
    got = np.array(model.clusterCenters())
    if got.shape != given.shape or not np.allclose(
        got[np.lexsort(got.T[::-1])], given[np.lexsort(given.T[::-1])]
    ):
        raise RuntimeError("MLlib did not reproduce the K-Means centres it was given")
    if not np.allclose(got, given):
        log.warning(
            "MLlib numbered the %d K-Means centres in its own order on this session: the "
            "segments are right, but their cluster ids may differ from a classic session's run "
            "of the same data",
            len(given),
        )
    return model, got


def _fitted_in_order(spark: SparkSession, given: Any, estimator: Any, *, seed: int) -> Any:
    """``estimator`` (random start, no Lloyd step) fitted on the rows of ``given`` so that the
    model numbers them in ``given``'s order: one fit on the rows placed where MLlib's draw for
    this (k, seed) takes them from.  The first fit of a (k, seed), or one after the learnt draw
    failed, learns the draw on the rows as given (kept if the draw left them in order)."""
    import numpy as np

    def placed(order: Any) -> DataFrame:
        rows = np.empty_like(given)
        rows[order] = given  # the draw takes input row order[i] as centre i
        return _centre_rows(spark, rows)

    key = (len(given), seed)
    if key in _DRAW_ORDER:
        model = estimator.fit(placed(_DRAW_ORDER[key]))
        if np.allclose(np.array(model.clusterCenters()), given):
            return model
        del _DRAW_ORDER[key]  # MLlib drew otherwise (another version?): learn it again
    model = estimator.fit(_centre_rows(spark, given))
    got = np.array(model.clusterCenters())
    # Each centre's row in ``given`` (the rows are distinct; MLlib copies the values).
    order = ((got[:, None, :] - given[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    if sorted(order.tolist()) != list(range(len(given))):
        return model  # not the given centres: model_with_centres says so
    _DRAW_ORDER[key] = order
    if (order == np.arange(len(given))).all():
        return model
    return estimator.fit(placed(order))


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

    if is_connect(spark) or _JVM_REFUSED:
        return None
    try:
        from pyspark.ml.clustering import KMeansModel
        from pyspark.mllib.linalg import DenseVector
        from pyspark.serializers import CPickleSerializer

        jvm = spark.sparkContext._jvm
        if jvm is None:
            return None
        # The centres as one pickled list, unpickled by MLlib's own Python SerDe (the format
        # pyspark.mllib sends) into a java.util.ArrayList of MLlib vectors: one py4j call, not
        # one per centre or per number.
        pickled = bytearray(CPickleSerializer().dumps([DenseVector(row) for row in given]))
        vectors = jvm.org.apache.spark.mllib.api.python.SerDe.loads(pickled)
        parent = jvm.org.apache.spark.mllib.clustering.KMeansModel(vectors)
        java_model = jvm.org.apache.spark.ml.clustering.KMeansModel(estimator.uid, parent)
    except Exception as exc:  # e.g. a cluster that allows py4j only to listed classes
        _JVM_REFUSED.append(True)
        log.warning(
            "cannot build K-Means models in the driver's JVM (%s: %s); fitting each instead, "
            "three Spark jobs per model",
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
        )
        return None
    return estimator._copyValues(KMeansModel(java_model))
