"""Benchmark: Spark MLlib K-Means (the cluster job's CPU path) vs scikit-learn on the same rows.

N unit vectors of dimension 384 (MiniLM's size) around k directions with noise are written to
Parquet once; MLlib fits them on ``local[N cores]`` (k-means||), scikit-learn fits the same
NumPy array (k-means++, ``n_init=1``), both with the same k, max_iter and tol.  Prints fit wall
times, the ratio, and each model's cost (inertia) so speed is not bought with a worse solution.
Usage::

    python benchmarks/kmeans.py [--rows 200000] [--k 8] [--max-iter 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F
    from sklearn.cluster import KMeans as SkKMeans

    from jobs.core.config import SparkConfig
    from jobs.core.session import get_spark

    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(args.k, args.dim)).astype(np.float32)
    labels = rng.integers(0, args.k, args.rows)
    points = centres[labels] + rng.normal(scale=0.6, size=(args.rows, args.dim)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-kmeans-"))
    flat = pa.array(points.reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(flat, args.dim).cast(pa.list_(pa.float32()))
    pq.write_table(
        pa.table({"embedding": column}), workdir / "points.parquet", row_group_size=20_000
    )

    started = time.perf_counter()
    sk = SkKMeans(
        n_clusters=args.k,
        init="k-means++",
        n_init=1,
        max_iter=args.max_iter,
        tol=args.tol,
        random_state=args.seed,
        algorithm="lloyd",
    ).fit(points)
    sk_s = time.perf_counter() - started

    cores = os.cpu_count() or 2
    spark = get_spark(
        SparkConfig(
            master=f"local[{cores}]",
            driver_memory="8g",
            extra={"spark.ui.showConsoleProgress": "false"},
        )
    )
    frame = (
        spark.read.parquet(str(workdir / "points.parquet"))
        .select(array_to_vector(F.col("embedding")).alias("features"))
        .repartition(cores * 2)
        .cache()
    )
    frame.count()
    started = time.perf_counter()
    model = KMeans(
        k=args.k, maxIter=args.max_iter, tol=args.tol, seed=args.seed, initMode="k-means||"
    ).fit(frame)
    mllib_s = time.perf_counter() - started
    mllib_cost = float(model.summary.trainingCost)
    iterations = int(model.summary.numIter)
    spark.stop()

    print(
        f"\n{args.rows:,} x {args.dim} float32 unit vectors, k={args.k}, max_iter "
        f"{args.max_iter}, tol {args.tol}, {cores} cores"
    )
    print(
        f"scikit-learn KMeans (k-means++, lloyd):  {sk_s:7.1f}s  inertia {sk.inertia_:,.1f}"
        f"  ({sk.n_iter_} iterations)"
    )
    print(
        f"Spark MLlib KMeans (k-means||):          {mllib_s:7.1f}s  cost    {mllib_cost:,.1f}"
        f"  ({iterations} iterations)"
    )
    print(
        f"ratio MLlib/scikit-learn fit time: {mllib_s / sk_s:.2f}x; cost ratio "
        f"{mllib_cost / sk.inertia_:.4f}"
    )
    print(
        json.dumps(
            {
                "rows": args.rows,
                "sklearn_s": sk_s,
                "mllib_s": mllib_s,
                "sklearn_inertia": float(sk.inertia_),
                "mllib_cost": mllib_cost,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
