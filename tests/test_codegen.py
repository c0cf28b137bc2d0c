"""Ingest's normalising and labelling plan keeps Spark's whole-stage code generation.

The JVM refuses a method of more than 64 KB of bytecode.  When one of Spark's whole-stage
generated methods outgrows that (or Spark's ``spark.sql.codegen.hugeMethodLimit``, 65,535 bytes by
default), Spark logs the failure and runs the stage with interpreted expressions instead: nothing
fails, the counts are the same, only slower (the demo's ingest took 32-45 s instead of 25-37 s
when the JSON normalising projection overflowed), and the only trace is a log line that the
default log level hides.  These tests compile the plan of every shipped mapping's input format
and read Spark's own bytecode statistics (``explain("codegen")``: ``maxMethodCodeSize``, -1 when
the code did not compile), so a wider projection fails here rather than in a benchmark.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import DataFrame, SparkSession

from jobs.core.config import AppConfig, InputSpec, load_config
from jobs.sources.dedup import label_duplicates
from jobs.sources.mapping import normalise
from jobs.sources.readers import read_raw

from .conftest import REPO, shared_data

#: Spark's default ``spark.sql.codegen.hugeMethodLimit``: a stage whose largest generated
#: method is larger runs without whole-stage code generation.
HUGE_METHOD_LIMIT = 65535
#: Spark's defaults, which the test session changes (conftest.TEST_SPARK_SETTINGS).
_PRODUCTION_CODEGEN = {
    "spark.sql.codegen.wholeStage": "true",
    "spark.sql.codegen.factoryMode": "FALLBACK",
}
_STATS = re.compile(r"== Subtree \d+ / \d+ \(maxMethodCodeSize:(-?\d+);")


def method_sizes(df: DataFrame) -> list[int]:
    """The largest generated method (bytes of bytecode) of each whole-stage codegen subtree of
    ``df``'s plan, as Spark compiles it; -1 for a subtree whose code did not compile.  The test
    session turns whole-stage codegen off (conftest); it is on, as in production, meanwhile."""
    conf = df.sparkSession.conf
    saved = {key: conf.get(key) for key in _PRODUCTION_CODEGEN}
    out = io.StringIO()
    try:
        for key, value in _PRODUCTION_CODEGEN.items():
            conf.set(key, value)
        with contextlib.redirect_stdout(out):
            df.explain("codegen")
    finally:
        for key, value in saved.items():
            conf.set(key, value)
    return [int(size) for size in _STATS.findall(out.getvalue())]


def _labelled(spark: SparkSession, config: AppConfig, spec: InputSpec) -> DataFrame:
    """One input's records read, normalised and labelled, as ingest plans them."""
    source = config.ingest.source
    raw = read_raw(spark, spec, order_by=source.order_by)
    return label_duplicates(normalise(raw, spec=spec, source=source, privacy=config.privacy))


def _default_parquet(folder: Path) -> str:
    """One record in the default mapping's fields, as Parquet."""
    path = folder / "events.parquet"
    fields = ["event_id", "user", "event_time", "type", "product_id", "category_code", "brand"]
    table = pa.table({name: [f"{name}-1"] for name in fields})
    table = table.append_column("price", pa.array([9.99])).append_column(
        "search_query", pa.array([None], pa.string())
    )
    pq.write_table(table, path)
    return str(path)


def _check(df: DataFrame) -> None:
    sizes = method_sizes(df)
    assert sizes, "no whole-stage codegen subtree in the plan"
    assert all(0 <= size <= HUGE_METHOD_LIMIT for size in sizes), sizes


@pytest.mark.parametrize(
    ("fmt", "fixture"),
    [("jsonl", "negative_price.jsonl"), ("csv", "truncated.csv"), ("parquet", None)],
)
def test_default_mapping_keeps_whole_stage_codegen(
    spark: SparkSession, tmp_path: Path, fmt: str, fixture: str | None
) -> None:
    config = AppConfig()
    spec = config.ingest.source.inputs[0]
    assert isinstance(spec, InputSpec)
    path = str(REPO / "tests" / "hostile" / fixture) if fixture else _default_parquet(tmp_path)
    _check(_labelled(spark, config, dataclasses.replace(spec, format=fmt, paths=(path,))))


@pytest.mark.parametrize(
    ("mapping", "sample"),
    [
        ("rees46.yaml", ("rees46-2019-oct-sample", "events.csv")),
        ("diginetica.yaml", ("diginetica-sample",)),
    ],
)
def test_real_log_mappings_keep_whole_stage_codegen(
    spark: SparkSession, mapping: str, sample: tuple[str, ...]
) -> None:
    shared_data(*sample)  # skips the test when the shared samples are absent
    config = load_config([REPO / "conf" / "sources" / mapping])
    for spec in config.ingest.source.inputs:
        assert isinstance(spec, InputSpec)
        # The mapping's own relative paths (../shared/data/...), from the repository root.
        paths = tuple(str((REPO / p).resolve()) for p in spec.paths)
        _check(_labelled(spark, config, dataclasses.replace(spec, paths=paths)))
