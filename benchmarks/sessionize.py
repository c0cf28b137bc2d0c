"""Benchmark: our Spark ingest + sessionize vs DuckDB running the same sessionization SQL.

Generates N raw events (default 5,000,000) as Parquet with the default noise, then times

* **spark**: ``ingest.run`` (parse, validate, quarantine, deduplicate, write Delta ``events``)
  and ``sessionize.run`` (write Delta ``sessions`` + ``user_sequences``) on ``local[2]``;
* **duckdb**: one connection with 2 threads doing the same work in SQL on the same Parquet files
  (validation, both deduplication passes, the same session rules incl. the max-duration split
  and the bot flag, last-200-event lists, user sequences), writing Parquet.

Prints wall times, throughput, the Spark/DuckDB ratio (target: <= 2x) and the
peak RSS of each side.  Usage::

    python benchmarks/sessionize.py --events 5000000 [--workdir /tmp/bench] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.core.config import AppConfig, GenerateConfig, InputSpec, LakeConfig, SparkConfig  # noqa: E402

#: Events per user the generator produces on average with the default personas (measured).
EVENTS_PER_USER = 44

DUCKDB_SQL = """
CREATE TEMP TABLE raw AS
SELECT
    nullif(trim(event_id), '') AS event_id,
    nullif(trim("user"), '') AS user_id,
    try_cast(event_time AS TIMESTAMPTZ) AS event_ts,
    CASE lower(trim(type))
        WHEN 'view' THEN 'view' WHEN 'cart' THEN 'add_to_cart'
        WHEN 'remove_from_cart' THEN 'remove_from_cart' WHEN 'purchase' THEN 'purchase'
        WHEN 'search' THEN 'search' END AS event_type,
    nullif(trim(product_id), '') AS item_id,
    nullif(trim(category_code), '') AS category,
    nullif(trim(brand), '') AS brand,
    try_cast(price AS DOUBLE) AS price,
    nullif(trim(search_query), '') AS query
FROM read_parquet('{parquet}');

CREATE TEMP TABLE events AS
WITH valid AS (
    SELECT * FROM raw
    WHERE user_id IS NOT NULL AND event_ts IS NOT NULL AND event_type IS NOT NULL
      AND event_ts >= TIMESTAMPTZ '2000-01-01 00:00:00+00'
      AND event_ts < TIMESTAMPTZ '2100-01-01 00:00:00+00'
      AND (price IS NULL OR (isfinite(price) AND price >= 0))
), by_id AS (
    SELECT coalesce(event_id, md5(concat_ws('|', user_id, epoch_us(event_ts), event_type,
                    item_id, category, brand, price, query))) AS event_id,
           min(struct_pack(user_id, event_ts, event_type, item_id, category, brand, price,
                           query)) AS r
    FROM valid GROUP BY 1
)
SELECT min(event_id) AS event_id, r.user_id, r.event_ts, r.event_type, r.item_id, r.category,
       r.brand, r.price, r.query
FROM by_id GROUP BY r.user_id, r.event_ts, r.event_type, r.item_id, r.category, r.brand,
       r.price, r.query;

CREATE TEMP TABLE assigned AS
WITH lagged AS (
    SELECT *, lag(event_ts) OVER w AS prev_ts FROM events
    WINDOW w AS (PARTITION BY user_id ORDER BY event_ts, event_id)
), breaks AS (
    SELECT *, prev_ts IS NULL OR epoch_us(event_ts) - epoch_us(prev_ts) > 1800000000 AS brk
    FROM lagged
), gap_starts AS (
    SELECT *, last_value(CASE WHEN brk THEN event_ts END IGNORE NULLS) OVER (
        PARTITION BY user_id ORDER BY event_ts, event_id
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS gap_start
    FROM breaks
), windows AS (
    SELECT *, floor((epoch_us(event_ts) - epoch_us(gap_start)) / 86400000000) AS wnd
    FROM gap_starts
), starts AS (
    SELECT *, brk OR wnd <> lag(wnd) OVER (PARTITION BY user_id ORDER BY event_ts, event_id)
        AS new_session
    FROM windows
)
SELECT *, last_value(CASE WHEN new_session THEN event_ts END IGNORE NULLS) OVER (
    PARTITION BY user_id ORDER BY event_ts, event_id
    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session_start
FROM starts;

CREATE TEMP TABLE sessions AS
WITH s AS (
    SELECT md5(concat_ws('|', user_id, epoch_us(session_start))) AS session_id, user_id,
           min(event_ts) AS session_start, max(event_ts) AS session_end,
           count(*) AS n_events, count_if(event_type = 'view') AS n_views,
           count_if(event_type = 'add_to_cart') AS n_add_to_cart,
           count_if(event_type = 'purchase') AS n_purchases,
           coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS revenue,
           list({{'ts': event_ts, 'event_type': event_type, 'item_id': item_id,
                 'category': category, 'brand': brand, 'price': price}}
                ORDER BY event_ts, event_type, item_id, category, brand, price)[-200:] AS events
    FROM assigned GROUP BY user_id, session_start
), flagged AS (
    SELECT *, (epoch_us(session_end) - epoch_us(session_start)) / 1e6 AS duration_s,
           CAST(session_start AS DATE) AS session_date FROM s
), suspicious AS (
    SELECT *, (n_events >= 20 AND n_events / greatest(duration_s, 60) * 60 > 30)
              OR sum(n_events) OVER (PARTITION BY user_id, session_date) > 2000 AS sus
    FROM flagged
)
SELECT * EXCLUDE (sus), bool_or(sus) OVER (PARTITION BY user_id) AS is_bot FROM suspicious;

COPY (SELECT *, CAST(event_ts AS DATE) AS event_date FROM events) TO '{out}/events'
    (FORMAT parquet, PARTITION_BY (event_date), OVERWRITE_OR_IGNORE);
"""

DUCKDB_SQL_TAIL = """
COPY (SELECT * FROM sessions) TO '{out}/sessions' (FORMAT parquet, PARTITION_BY (session_date),
    OVERWRITE_OR_IGNORE);
COPY (
    WITH per_user AS (
        SELECT user_id, count(*) AS n_sessions, min(session_start) AS first_seen,
               max(session_end) AS last_seen, sum(n_events) AS n_events,
               sum(n_views) AS n_views, sum(n_add_to_cart) AS n_add_to_cart,
               sum(n_purchases) AS n_purchases, sum(revenue) AS revenue,
               bool_or(is_bot) AS is_bot,
               flatten(list(
                   list_transform(events, lambda e: struct_insert(e, session_id := session_id))
                   ORDER BY session_start)) AS all_events
        FROM sessions GROUP BY user_id
    )
    SELECT * EXCLUDE (all_events), all_events[-200:] AS events FROM per_user
) TO '{out}/user_sequences.parquet' (FORMAT parquet);
"""


def peak_rss_mb() -> float:
    """Peak resident memory of this Python process (where DuckDB runs)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_duckdb(parquet_glob: str, out: Path, threads: int) -> dict[str, float]:
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET TimeZone = 'UTC'")
    started = time.perf_counter()
    con.execute(DUCKDB_SQL.format(parquet=parquet_glob, out=out))
    ingest_done = time.perf_counter()
    con.execute(DUCKDB_SQL_TAIL.format(out=out))
    finished = time.perf_counter()
    counts = {
        "events": con.execute("SELECT count(*) FROM events").fetchone()[0],  # type: ignore[index]
        "sessions": con.execute("SELECT count(*) FROM sessions").fetchone()[0],  # type: ignore[index]
    }
    con.close()
    return {
        "total_s": finished - started,
        "through_events_s": ingest_done - started,
        **{f"rows_{k}": float(v) for k, v in counts.items()},
    }


def run_spark(parquet_dir: Path, lake_root: Path) -> dict[str, float]:
    from jobs import ingest, sessionize
    from jobs.core.lake import Lake
    from jobs.core.session import get_spark

    base = AppConfig()
    spec = dataclasses.replace(
        base.ingest.source.inputs[0], paths=(str(parquet_dir),), format="parquet"
    )
    assert isinstance(spec, InputSpec)
    config = dataclasses.replace(
        base,
        spark=SparkConfig(
            master="local[2]",
            driver_memory="8g",
            extra={"spark.ui.showConsoleProgress": "false"},
        ),
        lake=LakeConfig(engine="delta-rs", root=str(lake_root)),
        ingest=dataclasses.replace(
            base.ingest, source=dataclasses.replace(base.ingest.source, inputs=(spec,))
        ),
    )
    t0 = time.perf_counter()
    spark = get_spark(config.spark)
    lake = Lake(spark, config.lake)
    t1 = time.perf_counter()
    counts = ingest.run(spark, lake, config, run_id="bench")
    t2 = time.perf_counter()
    sessions = sessionize.run(spark, lake, config, run_id="bench")
    t3 = time.perf_counter()
    jvm_peak_mb = _jvm_peak_rss_mb(spark)
    spark.stop()
    return {
        "startup_s": t1 - t0,
        "ingest_s": t2 - t1,
        "sessionize_s": t3 - t2,
        "total_s": t3 - t1,
        "rows_events": float(counts.kept),
        "rows_sessions": float(sessions.sessions),
        "input_rows": float(counts.input_rows),
        "jvm_peak_rss_mb": jvm_peak_mb,
    }


def _jvm_peak_rss_mb(spark: object) -> float:
    """Peak resident memory of the local JVM (the driver and its executor threads)."""
    try:
        pid = spark.sparkContext._gateway.proc.pid  # type: ignore[attr-defined]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (AttributeError, OSError, ValueError):
        pass
    return float("nan")


def _generate_and_report(gen: GenerateConfig) -> None:
    from jobs.synthetic import generate

    started = time.perf_counter()
    generated = generate(gen)
    print(
        f"generated {generated.n_lines_written:,} raw events for {gen.n_users:,} users as Parquet "
        f"in {time.perf_counter() - started:.1f}s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="approximate raw events")
    parser.add_argument("--workdir", default=None, help="where to put data (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (Spark: local[2])")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sessionize-"))
    shutil.rmtree(workdir / "out", ignore_errors=True)
    gen = dataclasses.replace(
        GenerateConfig(),
        n_users=max(50, args.events // EVENTS_PER_USER),
        output_dir=str(workdir / "raw"),
        ground_truth_path=str(workdir / "truth" / "personas.csv"),
        formats=("parquet",),
    )
    # Generate in a child process so this process's peak RSS measures DuckDB alone.
    child = multiprocessing.get_context("fork").Process(target=_generate_and_report, args=(gen,))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit("data generation failed")
    parquet_dir = workdir / "raw" / "parquet"

    duck = run_duckdb(str(parquet_dir / "*.parquet"), workdir / "out" / "duckdb", args.threads)
    duck_rss = peak_rss_mb()
    spark = run_spark(parquet_dir, workdir / "out" / "lake")
    jvm_rss = spark["jvm_peak_rss_mb"]

    n = spark["input_rows"]
    ratio = spark["total_s"] / duck["total_s"]
    print(
        f"\nrows: input {n:,.0f}, events {spark['rows_events']:,.0f} (duckdb "
        f"{duck['rows_events']:,.0f}), sessions {spark['rows_sessions']:,.0f} (duckdb "
        f"{duck['rows_sessions']:,.0f})"
    )
    print(
        f"spark local[2]  ingest {spark['ingest_s']:7.1f}s  "
        f"sessionize {spark['sessionize_s']:7.1f}s"
        f"  total {spark['total_s']:7.1f}s  ({n / spark['total_s']:,.0f} events/s; JVM start "
        f"{spark['startup_s']:.1f}s not counted)"
    )
    print(
        f"duckdb {args.threads} threads  through events {duck['through_events_s']:6.1f}s  "
        f"total {duck['total_s']:7.1f}s  ({n / duck['total_s']:,.0f} events/s)"
    )
    print(f"ratio spark/duckdb: {ratio:.2f}x  (target <= 2x)")
    print(f"peak RSS: python+duckdb {duck_rss:,.0f} MB, spark JVM {jvm_rss:,.0f} MB")
    print(json.dumps({"events": n, "spark": spark, "duckdb": duck, "ratio": ratio}))
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
