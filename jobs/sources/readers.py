"""Reading raw input files and lookup side files, every field as text.

A raw read yields the fields an input's mapping may refer to, next to the bookkeeping columns of
:mod:`.columns`: the record as written, its file, whether it parsed, its size and whether it is
valid UTF-8.  Gzip-compressed text files are read transparently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import reduce
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import InputSpec, LookupSpec
from jobs.sources.columns import BAD_UTF8, CORRUPT, RAW, RECORD_BYTES, SOURCE_FILE
from jobs.sources.errors import IngestError, reading

_Reader = Callable[[SparkSession, InputSpec, list[str]], DataFrame]


def read_raw(spark: SparkSession, spec: InputSpec, *, allow_empty: bool = False) -> DataFrame:
    """Read one input's files with every field as text, plus the raw record and its file.

    Returns the raw fields as string columns next to ``__raw`` (the record as written, or a
    faithful rendering of it for Parquet), ``__source_file``, ``__corrupt`` (set for
    unparseable records), ``__record_bytes`` (bytes of a JSON line or CSV row; null for
    Parquet) and ``__bad_utf8`` (the record is not valid UTF-8); one row per record.

    Raises :class:`IngestError` when a local path does not exist, a CSV input has no header, or
    the input holds no record at all and ``allow_empty`` is false (a full refresh would
    otherwise replace ``events`` with an empty table); a file Spark cannot read is named in the
    error.  Empty files next to non-empty ones simply contribute no rows.
    """
    paths = existing_paths(spec.paths)
    raw = _READERS[spec.format](spark, spec, paths)
    if not allow_empty and reading(raw.isEmpty):
        raise IngestError(f"input {list(paths)} holds no records (empty files?)")
    return raw


def _read_jsonl(spark: SparkSession, spec: InputSpec, paths: list[str]) -> DataFrame:
    fields = sorted(referenced_fields(spec.columns.values()))
    schema = T.StructType(
        [T.StructField(f, T.StringType()) for f in fields]
        + [T.StructField(CORRUPT, T.StringType())]
    )
    text = spark.read.options(**dict(spec.options)).text(paths)
    value = F.col("value")
    # Spark skips a byte order mark that opens a file, but not one that opens a later line (files
    # joined with cat); it is an encoding marker, not data, and the JSON parser rejects it.
    line = F.when(value.startswith("\ufeff"), F.expr("substring(value, 2)")).otherwise(value)
    parsed = F.from_json(RAW, schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT})
    blank = F.btrim(RAW, F.lit(" \t\r")) == ""
    # from_json stops after the first JSON value, so the rest of a line holding two records (a
    # lost newline) or trailing text would vanish unnoticed: such a line is malformed.
    # Outside strings "}" then "{" never follows in valid JSON; the regex runs only on lines
    # with a second "{" at all, which clickstream records rarely have.
    two_objects = F.when(F.locate("{", F.col(RAW), 2) == 0, F.lit(False)).otherwise(
        F.col(RAW).rlike(r'\}\s*\{\s*"')
    )
    complete = F.btrim(RAW, F.lit(" \t\r")).endswith("}") & ~two_objects
    return (
        text.select(line.alias(RAW), F.col("_metadata.file_path").alias(SOURCE_FILE))
        .select(RAW, SOURCE_FILE, parsed.alias("__parsed"))
        .select(
            # The text reader passes bytes through unchecked (the JSON parser then turns bad
            # bytes into U+FFFD silently), so invalid UTF-8 is detected on the bytes, and the
            # stored record has them replaced to keep the quarantine table readable.
            F.make_valid_utf8(RAW).alias(RAW),
            SOURCE_FILE,
            *[F.col(f"__parsed.`{f}`").alias(f) for f in fields],
            # A blank line parses to an all-null record, not a corrupt one; call it what it is.
            F.when(blank, F.lit(""))
            .when(F.col(f"__parsed.{CORRUPT}").isNull() & ~complete, F.col(RAW))
            .otherwise(F.col(f"__parsed.{CORRUPT}"))
            .alias(CORRUPT),
            F.octet_length(RAW).cast("long").alias(RECORD_BYTES),
            (~F.is_valid_utf8(RAW)).alias(BAD_UTF8),
        )
    )


def _read_csv(spark: SparkSession, spec: InputSpec, paths: list[str]) -> DataFrame:
    options = {"header": "true", **dict(spec.options)}
    header = reading(lambda: spark.read.options(**options).csv(paths).columns)
    if not header:
        raise IngestError(f"input {list(paths)}: no CSV header found (empty files?)")
    schema = T.StructType(
        [T.StructField(c, T.StringType()) for c in header]
        + [T.StructField(CORRUPT, T.StringType())]
    )
    df = (
        spark.read.schema(schema)
        .options(**options)
        # Columns are matched by header name in every file, so a file whose header drifted
        # fails with an error naming it instead of shifting values into wrong columns.
        .option("enforceSchema", "false")
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .csv(paths)
    )
    sep = options.get("sep", options.get("delimiter", ","))
    values = [F.col(f"`{c}`") for c in header]
    rendered = F.to_csv(F.struct(*values), {"sep": sep})
    # The CSV reader decodes the bytes itself and replaces invalid UTF-8 by U+FFFD, so that
    # character is the only trace left; a file that really contains U+FFFD is quarantined too.
    bad_utf8 = reduce(
        lambda a, b: a | b,
        [F.coalesce(c.contains("\ufffd"), F.lit(False)) for c in [*values, F.col(CORRUPT)]],
    )
    # The row's size without rendering it: its fields plus one separator between each.
    size = reduce(lambda a, b: a + b, [F.coalesce(F.octet_length(c), F.lit(0)) for c in values])
    return df.select(
        F.coalesce(F.col(CORRUPT), rendered).alias(RAW),
        F.col("_metadata.file_path").alias(SOURCE_FILE),
        *values,
        F.col(CORRUPT),
        F.coalesce(F.octet_length(CORRUPT), size + (len(header) - 1))
        .cast("long")
        .alias(RECORD_BYTES),
        bad_utf8.alias(BAD_UTF8),
    )


def _read_parquet(spark: SparkSession, spec: InputSpec, paths: list[str]) -> DataFrame:
    df = spark.read.options(**dict(spec.options)).parquet(*paths)
    fields = df.columns
    return df.select(
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in fields])).alias(RAW),
        F.col("_metadata.file_path").alias(SOURCE_FILE),
        *[F.col(f"`{c}`") for c in fields],
        F.lit(None).cast("string").alias(CORRUPT),
        F.lit(None).cast("long").alias(RECORD_BYTES),
        F.lit(False).alias(BAD_UTF8),
    )


#: One reader per input format (``InputSpec.format``, checked when the config is loaded).
_READERS: Mapping[str, _Reader] = {
    "jsonl": _read_jsonl,
    "json": _read_jsonl,
    "ndjson": _read_jsonl,
    "csv": _read_csv,
    "parquet": _read_parquet,
}


def read_lookup(spark: SparkSession, spec: LookupSpec) -> DataFrame:
    """Read a side file (e.g. item -> category) as the format's reader gives it (CSV: every
    field as text, the first line the header).  Raises :class:`IngestError` when a local path
    does not exist."""
    paths = existing_paths((spec.path,))
    if spec.format == "csv":
        return spark.read.options(**{"header": "true", **dict(spec.options)}).csv(paths)
    if spec.format == "parquet":
        return spark.read.options(**dict(spec.options)).parquet(*paths)
    return spark.read.options(**dict(spec.options)).json(paths)


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def existing_paths(paths: Sequence[str]) -> list[str]:
    """``paths`` as a list, after checking each local one exists (URIs and glob patterns are
    left to Spark).  Raises :class:`IngestError` naming the first missing path, or when
    ``paths`` is empty."""
    if not paths:
        raise IngestError("ingest input has no paths configured")
    for path in paths:
        if _URI_SCHEME.match(path) or any(ch in path for ch in "*?["):
            continue
        if not Path(path).exists():
            raise IngestError(f"input path does not exist: {path}")
    return list(paths)


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_IDENTIFIER = re.compile(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)")


def referenced_fields(expressions: Iterable[str]) -> set[str]:
    """Names the Spark SQL ``expressions`` may read from a JSON record (over-approximated, which
    is harmless: a name that is really a function or keyword just becomes an unused all-null
    field).  Text inside quotes is ignored; a backquoted name counts as one field."""
    names: set[str] = set()
    for expression in expressions:
        stripped = _QUOTED.sub("''", expression)
        for quoted, bare in _IDENTIFIER.findall(stripped):
            names.add(quoted or bare)
    return names
