"""Benchmark: the encoder's numeric paths, and the bare encoder core vs the same encoder inside
the Spark pandas UDF.

Same rows (user or session sequences rendered from generated data), same model, batch size and
machine:

* **fp32**: the encoder as it ran before distinct-text reuse and CPU bf16 (every row encoded,
  fp32): ``Encoder.encode_texts`` (every row) with ``encoder.precision=fp32``;
* **fp32 + dedup**: ``Encoder.encode`` (each distinct text once), fp32;
* **bf16 + dedup**: ``Encoder.encode`` with ``torch.autocast(cpu, bfloat16)``, the default
  (``precision: auto``) on CPUs with native bf16 (skipped elsewhere, and said so);
  the cosine of each row's vector to fp32's is printed (min and mean; target >= 0.99 on every
  row), and the speedup of the default path over fp32 (target >= 2.0): the paths take turns
  ``--repeats`` times and the median of the per-repeat ratios is reported, with each ratio;
* **bare**: ``Encoder.encode`` in this process with torch using all local cores (default path);
* **udf**: ``embedding_udf`` on ``local[N]`` (N tasks, one torch thread each), results written to
  Spark's ``noop`` sink so only the computation and the Arrow round trip are timed.  The first UDF
  job ("cold") includes loading the model in each Python worker; the next ``--repeats`` ("warm")
  reuse the workers, as a long embed job does after its first batches.  Each warm job takes its
  turn right after a bare run, and the ratio is the median of the per-turn ratios.

Prints sequences/s and tokens/s of each, the warm UDF / bare ratio (SPEC target:
>= 0.95) and peak resident memory.  Usage::

    python benchmarks/embed.py [--rows 4096] [--batch-size 128] [--max-length 128] [--kind text]
                               [--unit user|session] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.core.config import AppConfig, EncoderConfig, LakeConfig, SparkConfig  # noqa: E402


def _python_worker_peak_rss_mb() -> float:
    """Largest peak RSS among PySpark's Python worker processes (read from /proc)."""
    peak = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore")
            if "pyspark.daemon" not in cmdline and "pyspark.worker" not in cmdline:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024.0)
        except OSError:
            continue
    return peak


def rendered_sequences(
    rows: int, encoder: EncoderConfig, workdir: Path, unit: str = "user"
) -> list[str]:
    """Render user (or session) sequences of generated data with the pipeline's own
    transforms."""
    from jobs import ingest, sessionize
    from jobs.core.lake import Lake
    from jobs.core.session import get_spark
    from jobs.sequences.rendering import render_sequences, select_units
    from jobs.synthetic import generate

    base = AppConfig()
    spec = dataclasses.replace(
        base.ingest.source.inputs[0], paths=(str(workdir / "raw" / "jsonl"),)
    )
    config = dataclasses.replace(
        base,
        generate=dataclasses.replace(
            base.generate,
            # More users than rows: a share are bots (excluded) or have no events.
            n_users=max(200, rows + rows // 2),
            output_dir=str(workdir / "raw"),
            ground_truth_path=str(workdir / "truth.csv"),
        ),
        ingest=dataclasses.replace(
            base.ingest, source=dataclasses.replace(base.ingest.source, inputs=(spec,))
        ),
        lake=LakeConfig(engine="delta-rs", root=str(workdir / "lake")),
    )
    generate(config.generate)
    spark = get_spark(config.spark)
    lake = Lake(spark, config.lake)
    ingest.run(spark, lake, config, run_id="bench")
    sessionize.run(spark, lake, config, run_id="bench")
    texts = [
        r[0]
        for r in lake.read("user_sequences" if unit == "user" else "sessions")
        .transform(select_units, unit=unit, include_bots=False)
        .transform(render_sequences, config=encoder)
        .select("rendered")
        .orderBy("id")
        .limit(rows)
        .collect()
    ]
    # Never padded with repeats: they would flatter the distinct-text reuse.
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--kind", default="text", choices=["text"])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--unit", default="user", choices=["user", "session"])
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs of each numeric path, the bare encoder and the warm UDF (median)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    import numpy as np
    import torch

    from jobs.core.session import get_spark
    from udfs.encoder import cpu_has_native_bf16, load_encoder, resolve_model_path
    from udfs.spark_udf import embedding_udf

    encoder_config = EncoderConfig(
        kind=args.kind, max_length=args.max_length, batch_size=args.batch_size, device="cpu"
    )
    fp32_config = dataclasses.replace(encoder_config, precision="fp32")
    workdir = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    spark = get_spark(
        SparkConfig(
            master=f"local[{args.cores}]",
            shuffle_partitions=args.cores,
            extra={"spark.ui.showConsoleProgress": "false"},
        )
    )
    texts = rendered_sequences(args.rows, encoder_config, workdir, args.unit)

    # ---- numeric paths, bare core, side by side on the same rows
    native_bf16 = cpu_has_native_bf16()
    paths: dict[str, tuple[EncoderConfig, bool]] = {
        "fp32": (fp32_config, False),
        "dedup": (fp32_config, True),
    }
    if native_bf16:
        paths["bf16"] = (dataclasses.replace(encoder_config, precision="bf16"), True)
    runners = {}
    for name, (config, dedup) in paths.items():
        loaded = load_encoder(config, device="cpu", num_threads=args.cores)
        # encode_texts: every row tokenised and encoded (no distinct-text reuse).
        run = loaded.encode if dedup else loaded.encode_texts
        run(texts[: args.batch_size])  # warm-up: first-call allocations
        runners[name] = run
    # The paths take turns, once per repeat, so that a slow spell of a shared machine (CPU
    # frequency, a neighbour's load) lands on all of them rather than on one; each figure is
    # the median of the repeats, and the speedup is the median of the per-repeat ratios.
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            started = time.perf_counter()
            vectors[name] = run(texts)
            seconds[name].append(time.perf_counter() - started)
    del runners, loaded, run  # the bare path below loads its own
    fp32_s, dedup_s = statistics.median(seconds["fp32"]), statistics.median(seconds["dedup"])
    fp32_vectors, dedup_vectors = vectors["fp32"], vectors["dedup"]
    fastest = "bf16" if native_bf16 else "dedup"
    speedups = [f / b for f, b in zip(seconds["fp32"], seconds[fastest], strict=True)]
    if native_bf16:
        bf16_s, bf16_vectors = statistics.median(seconds["bf16"]), vectors["bf16"]
    encoder = load_encoder(encoder_config, device="cpu", num_threads=args.cores)
    tokens = sum(len(ids) for ids in encoder.tokenize(texts))
    encoder.encode(texts[: args.batch_size])  # warm-up: first-call allocations

    # ---- the same rows through the UDF, the bare encoder and the warm UDF job taking turns
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_size * 8))
    frame = spark.createDataFrame([(t,) for t in texts], "rendered string").repartition(args.cores)
    frame = frame.cache()
    frame.count()
    model_dir = str(resolve_model_path(encoder_config))
    embedded = frame.select(embedding_udf(encoder_config, model_dir)("rendered").alias("v"))

    def udf_job() -> float:
        torch.set_num_threads(1)  # the driver stays idle while the UDF's workers compute
        started = time.perf_counter()
        embedded.write.format("noop").mode("overwrite").save()
        return time.perf_counter() - started

    cold_s = udf_job()  # loads the model in each Python worker
    bare_times, timings = [], []
    for _ in range(args.repeats):  # in turns, so that a slow spell lands on both
        torch.set_num_threads(args.cores)
        started = time.perf_counter()
        bare_vectors = encoder.encode(texts)
        bare_times.append(time.perf_counter() - started)
        timings.append(udf_job())
    bare_s, warm_s = statistics.median(bare_times), statistics.median(timings)
    ratios = [b / u for b, u in zip(bare_times, timings, strict=True)]
    bare_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    del encoder
    worker_rss = _python_worker_peak_rss_mb()
    # The UDF computes what the core computes (spot check on the first rows).
    sample = [
        r["v"]
        for r in frame.limit(8)
        .select(embedding_udf(encoder_config, model_dir)("rendered").alias("v"))
        .collect()
    ]
    first_texts = [r[0] for r in frame.limit(8).collect()]
    check = load_encoder(encoder_config, device="cpu").encode(first_texts)
    max_diff = float(np.abs(check - np.array(sample)).max())
    spark.stop()

    n = len(texts)
    ratio = statistics.median(ratios)
    distinct = len(set(texts))
    print(
        f"\n{n:,} {args.unit} sequences ({distinct:,} distinct), {tokens:,} tokens "
        f"(mean {tokens / n:.0f}), model all-MiniLM-L6-v2, batch {args.batch_size}, max_length "
        f"{args.max_length}, {args.cores} CPU cores, torch {torch.__version__}"
    )
    exact = float(np.abs(dedup_vectors - fp32_vectors).max())
    print(f"fp32:            {n / fp32_s:8.1f} seq/s  ({fp32_s:.1f}s)")
    print(
        f"fp32 + dedup:    {n / dedup_s:8.1f} seq/s  ({dedup_s:.1f}s)  speedup "
        f"{fp32_s / dedup_s:.2f}  max abs difference to fp32 {exact:.1e}"
    )
    result: dict[str, Any] = {"fp32_s": fp32_s, "dedup_s": dedup_s, "dedup_max_abs_diff": exact}
    if native_bf16:
        cosine = (bf16_vectors * fp32_vectors).sum(axis=1)
        print(
            f"bf16 + dedup:    {n / bf16_s:8.1f} seq/s  ({bf16_s:.1f}s)  cosine to fp32 min "
            f"{cosine.min():.5f} mean {cosine.mean():.5f} (target >= 0.99 on every row)"
        )
        result.update(
            bf16_s=bf16_s, cosine_min=float(cosine.min()), cosine_mean=float(cosine.mean())
        )
    else:
        print("bf16 + dedup:    skipped: this CPU has no native bf16 (precision auto runs fp32)")
    print(
        f"speedup of the default path ({fastest} + dedup) over fp32: "
        f"{statistics.median(speedups):.2f} (target >= 2.0), median of {args.repeats} "
        f"repeats: {', '.join(f'{x:.2f}' for x in speedups)}"
    )
    result.update(speedup=statistics.median(speedups), speedups=speedups, repeats=args.repeats)
    print(
        f"bare encode():   {n / bare_s:8.1f} seq/s  {tokens / bare_s:10,.0f} tokens/s  "
        f"({bare_s:.1f}s)  peak RSS {bare_rss:,.0f} MB"
    )
    print(
        f"UDF warm:        {n / warm_s:8.1f} seq/s  {tokens / warm_s:10,.0f} tokens/s  "
        f"({warm_s:.1f}s)  peak Python worker RSS {worker_rss:,.0f} MB"
    )
    print(
        f"UDF cold:        {n / cold_s:8.1f} seq/s  (first job, includes loading the model "
        f"in each of {args.cores} workers; {cold_s:.1f}s)"
    )
    print(
        f"ratio UDF/bare (warm): {ratio:.2f}  (target >= 0.95), median of {args.repeats} turns: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; cold {bare_s / cold_s:.2f}"
    )
    print(f"UDF vs core on the same rows: max abs difference {max_diff:.2e}")
    print(
        json.dumps(
            {
                "rows": n,
                "tokens": tokens,
                "bare_s": bare_s,
                "udf_warm_s": warm_s,
                "udf_cold_s": cold_s,
                "ratio_warm": ratio,
                "bare_rss_mb": bare_rss,
                "worker_rss_mb": worker_rss,
                "bare_dim": int(bare_vectors.shape[1]),
                **result,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
