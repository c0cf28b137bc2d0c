"""Reading raw input files and lookup side files, every field as text.

A raw read yields the fields an input's mapping may refer to, next to the bookkeeping columns of
:mod:`.columns`: the record as written, its file, whether it parsed, its size and whether it is
valid UTF-8.  Gzip-compressed text files are read transparently.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import InputSpec, LookupSpec
from jobs.sources.columns import (
    BAD_UTF8,
    CORRUPT,
    DUPLICATE_KEY,
    POSITION,
    RAW,
    RECORD_BYTES,
    SOURCE_FILE,
    SPLIT_START,
)
from jobs.sources.csv_reader import read_csv
from jobs.sources.errors import IngestError, reading
from jobs.sources.nested import called_names, explode_path, field_value, referenced_paths
from jobs.sources.parquet import read_parquet

_Reader = Callable[[SparkSession, InputSpec, list[str]], DataFrame]


def read_raw(
    spark: SparkSession,
    spec: InputSpec,
    *,
    allow_empty: bool = False,
    order_by: str | None = None,
) -> DataFrame:
    """Read one input's files with every field as text, plus the raw record and its file.

    Returns the raw fields as string columns next to ``__raw`` (the record as written, or a
    faithful rendering of it for Parquet), ``__source_file``, ``__corrupt`` (set for
    unparseable records), ``__record_bytes`` (bytes of a JSON line or CSV row; null for
    Parquet), ``__bad_utf8`` (the record is not valid UTF-8) and the record's place in its file
    (``__position``, ``__split_start``: provisional until :func:`resolve_positions`); JSON
    lines also ``__duplicate_key`` (a field the mapping reads that the record repeats at its
    top level, which makes it malformed); one row per record.  ``order_by``
    (``ingest.source.order_by``) is an expression whose fields are read too.

    Raises :class:`IngestError` when a local path does not exist, a CSV input has no header, or
    the input holds no record at all and ``allow_empty`` is false (a full refresh would
    otherwise replace ``events`` with an empty table); a file Spark cannot read is named in the
    error.  Empty files next to non-empty ones simply contribute no rows.
    """
    paths = existing_paths(spec.paths)
    read_spec = spec
    if order_by:
        # Readers that pick fields by the mapping (JSON lines) must read the order fields too.
        read_spec = dataclasses.replace(spec, columns={**spec.columns, "__order_by": order_by})
    raw = _with_split_positions(_READERS[spec.format](spark, read_spec, paths), spec.format)
    if not allow_empty and reading(raw.isEmpty):
        raise IngestError(f"input {list(paths)} holds no records (empty files?)")
    return raw


#: Bits of ``monotonically_increasing_id()`` that count rows within a Spark partition.
_ROW_BITS = (1 << 33) - 1


def _with_split_positions(raw: DataFrame, fmt: str) -> DataFrame:
    """``raw`` plus the provisional ``__position`` and ``__split_start`` (see
    :func:`resolve_positions`).

    Parquet knows each row's index in its file (``_metadata.row_index``).  Text formats know
    only the start of the split a line came from (``_metadata.file_block_start``); within a
    Spark partition, the low 33 bits of ``monotonically_increasing_id()`` count rows in read
    order, and a split is read whole by one partition.  Both must be taken in the scan's own
    stage (no shuffle in between), which is why they are added right after the reader.
    """
    if fmt == "parquet":
        try:
            return raw.select(
                "*",
                F.col("_metadata.row_index").cast("long").alias(POSITION),
                F.lit(None).cast("long").alias(SPLIT_START),
            )
        except AnalysisException:  # the reader hid the file's metadata: count rows as for text
            pass
    start = F.col("_metadata.file_block_start")
    try:
        raw.select(start)
    except AnalysisException:  # not resolvable through the reader's plan: ask the task instead
        start = F.input_file_block_start()
    return raw.select(
        "*",
        (F.monotonically_increasing_id().bitwiseAND(F.lit(_ROW_BITS))).alias(POSITION),
        start.cast("long").alias(SPLIT_START),
    )


def resolve_positions(rows: DataFrame) -> DataFrame:
    """Turn the provisional positions of :func:`read_raw` rows into each record's row index in
    its file (``__position``, from 0), and drop ``__split_start``.

    A text record's index is the rows of the file's earlier splits plus its index within its
    split (its partition row number less the split's first), so it does not depend on how
    Spark cut the files into splits or packed splits into partitions: a full and an
    incremental run give every record the same position.  Counting per split is one small
    aggregation (a row per split) joined back by broadcast; call this on a persisted frame so
    the provisional values are read, not recomputed.  ``rows`` may hold other columns (e.g. a
    :func:`jobs.sources.mapping.normalise` result); every row of a split must still be there.
    """
    splits = (
        rows.where(F.col(SPLIT_START).isNotNull())
        .groupBy(SOURCE_FILE, SPLIT_START)
        .agg(F.min(POSITION).alias("__first"), F.count(F.lit(1)).alias("__rows"))
    )
    earlier = Window.partitionBy(SOURCE_FILE).orderBy(SPLIT_START)
    splits = splits.withColumn(
        "__before",
        F.coalesce(
            F.sum("__rows").over(earlier.rowsBetween(Window.unboundedPreceding, -1)), F.lit(0)
        ),
    ).drop("__rows")
    joined = rows.join(F.broadcast(splits), [SOURCE_FILE, SPLIT_START], "left")
    position = F.when(F.col(SPLIT_START).isNull(), F.col(POSITION)).otherwise(
        F.col("__before") + F.col(POSITION) - F.col("__first")
    )
    return joined.select(
        *[
            position.alias(c) if c == POSITION else F.col(c)
            for c in rows.columns
            if c != SPLIT_START
        ]
    )


def _read_jsonl(spark: SparkSession, spec: InputSpec, paths: list[str]) -> DataFrame:
    # Top-level fields are parsed as text, so a record is malformed only when it is not JSON;
    # fields read by dotted paths are then parsed from that text (a value of another shape gives
    # null fields), and the array to explode stays text for explode_records.
    expressions = [*spec.columns.values(), *filter(None, [spec.explode])]
    tree = referenced_paths(expressions)
    explode = explode_path(spec)
    fields = sorted(tree)
    schema = T.StructType(
        [T.StructField(f, T.StringType()) for f in fields]
        + [T.StructField(CORRUPT, T.StringType())]
    )
    text = spark.read.options(**dict(spec.options)).text(paths)
    value = F.col("value")
    # Spark skips a byte order mark that opens a file, but not one that opens a later line (files
    # joined with cat); it is an encoding marker, not data, and the JSON parser rejects it.
    line = F.when(value.startswith("\ufeff"), F.expr("substring(value, 2)")).otherwise(value)
    # Strict where Spark's parser is lenient by default: a single-quoted string is not JSON.
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    parsed = F.from_json(RAW, schema, {**options, "allowSingleQuotes": "false"})
    blank = F.btrim(RAW, F.lit(" \t\r")) == ""
    # from_json stops after the first JSON value, so the rest of a line holding two records (a
    # lost newline, or records joined by a comma) or trailing text would vanish unnoticed: such
    # a line is malformed.  Outside strings "}" then "{" never follows in valid JSON; the
    # regexes run only on lines with a second "{" at all, which flat records rarely have.
    # "}," then "{" is also how an array of objects looks (nested records), so those lines
    # alone are counted as a JSON array's elements once wrapped in brackets: a record is one
    # element, records joined by commas are more (the JSON parsers, from_json's and
    # try_parse_json's alike, stop after the first value and accept the rest unseen).
    wrapped = F.json_array_length(F.concat(F.lit("["), F.col(RAW), F.lit("]")))
    joined = F.col(RAW).rlike(r"\}\s*,\s*\{") & (F.coalesce(wrapped, F.lit(1)) > 1)
    two_objects = F.when(F.locate("{", F.col(RAW), 2) == 0, F.lit(False)).otherwise(
        F.col(RAW).rlike(r'\}\s*\{\s*"') | joined
    )
    complete = F.btrim(RAW, F.lit(" \t\r")).endswith("}") & ~two_objects
    # Only a record that is otherwise well-formed JSON can hold a repeated key (a malformed one
    # stays malformed).  json_object_keys refuses NaN and Infinity, which from_json reads as
    # numbers: such a record's keys are listed with those tokens replaced.
    parsed_whole = F.col(f"__parsed.{CORRUPT}").isNull() & F.col("__complete") & ~F.col("__blank")
    keys = F.coalesce(
        F.col("__keys"),
        F.when(parsed_whole, F.json_object_keys(F.regexp_replace(RAW, _NON_NUMERIC, "$10"))),
    )
    checked = sorted(set(fields) - called_names(expressions))
    return (
        text.select(line.alias(RAW), F.col("_metadata.file_path").alias(SOURCE_FILE))
        .select(
            RAW,
            SOURCE_FILE,
            parsed.alias("__parsed"),
            F.json_object_keys(RAW).alias("__keys"),
            complete.alias("__complete"),
            blank.alias("__blank"),
        )
        # Each check once, as a column of its own: written inline into every expression that
        # reads it, the projection's generated code outgrew the JVM's 64 KB method limit and
        # Spark ran it without whole-stage code generation.
        .withColumn("__keys", keys)
        .withColumn(DUPLICATE_KEY, F.when(parsed_whole, _repeated_field(F.col("__keys"), checked)))
        .select(
            # The text reader passes bytes through unchecked (the JSON parser then turns bad
            # bytes into U+FFFD silently), so invalid UTF-8 is detected on the bytes, and the
            # stored record has them replaced to keep the quarantine table readable.
            F.make_valid_utf8(RAW).alias(RAW),
            SOURCE_FILE,
            *[field_value(f, F.col(f"__parsed.`{f}`"), tree, explode).alias(f) for f in fields],
            # A blank line parses to an all-null record, not a corrupt one; call it what it is.
            F.when(F.col("__blank"), F.lit(""))
            .when(F.col(f"__parsed.{CORRUPT}").isNull() & ~F.col("__complete"), F.col(RAW))
            .when(F.col(DUPLICATE_KEY).isNotNull(), F.col(RAW))
            .otherwise(F.col(f"__parsed.{CORRUPT}"))
            .alias(CORRUPT),
            F.col(DUPLICATE_KEY),
            F.octet_length(RAW).cast("long").alias(RECORD_BYTES),
            (~F.is_valid_utf8(RAW)).alias(BAD_UTF8),
        )
    )


#: A NaN or Infinity token (JSON has neither; Spark's from_json reads them) after a colon, a
#: bracket or a comma, up to the next separator; group 1 is what precedes it (replaced by
#: ``$10``: Java reads group 1, then a literal 0, since there is no group 10).
_NON_NUMERIC = r"([:\[,]\s*)(?:[-+]?Infinity|NaN)(?=\s*[,}\]])"


def _repeated_field(keys: Column, names: Sequence[str]) -> Column:
    """The first of ``names`` (in order) that the array of a JSON record's top-level ``keys``
    (``json_object_keys``) holds more than once, or null (also when ``keys`` is null).

    RFC 8259 (section 4) says the names in an object SHOULD be unique and that parsers differ
    on repeated ones; Spark's ``from_json`` keeps the last value and drops the other silently,
    while its own ``parse_json`` refuses the object (``spark.sql.variant.allowDuplicateKeys``
    is false by default).  Ingest quarantines such a record.  Only the fields the mapping reads
    count (a repeated field it does not read changes no event), and only at the top level.
    Listing the keys parses each record a second time: on 2 cores, normalising 2,000,000 lines
    took 21 s instead of 15 s, and the whole ingest stayed within its run-to-run noise (75.5 s,
    against 78-80 s without the check).  Searching the text for repeated names first, to spare
    most records that parse, cost more than the parse."""
    if not names:
        return F.lit(None).cast("string")
    # Built-ins with code generation only: a lambda (higher-order function) takes the projection
    # that reads the fields out of whole-stage codegen (2,000,000 lines normalised in 23 s
    # with one, 20-21 s without).
    found = [
        F.when(F.size(keys) - F.size(F.array_remove(keys, F.lit(n))) > 1, F.lit(n)) for n in names
    ]
    # The names are searched only in a record with a repeated key at all.
    return F.when(F.size(keys) > F.size(F.array_distinct(keys)), F.coalesce(*found))


#: ``__raw`` renders a Parquet row as JSON, timestamps to the microsecond (instants in UTC).
_RAW_JSON = {
    "timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX",
    "timestampNTZFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSS",
}


def _by_name(value: Column, dtype: T.DataType) -> Column:
    """``value`` with the fields of every struct in it (at any depth, inside arrays and map
    values too) in name order, so that its JSON does not depend on the column order of the
    file it came from (RFC 8785's canonical JSON orders object members by name too)."""
    if isinstance(dtype, T.StructType):
        ordered = sorted(dtype.fields, key=lambda f: f.name)
        return F.when(value.isNull(), None).otherwise(
            F.struct(*[_by_name(value[f.name], f.dataType).alias(f.name) for f in ordered])
        )
    if isinstance(dtype, T.ArrayType) and _has_struct(dtype.elementType):
        return F.transform(value, lambda e: _by_name(e, dtype.elementType))
    if isinstance(dtype, T.MapType) and _has_struct(dtype.valueType):
        return F.transform_values(value, lambda _, v: _by_name(v, dtype.valueType))
    return value


def _has_struct(dtype: T.DataType) -> bool:
    if isinstance(dtype, T.StructType):
        return True
    if isinstance(dtype, T.ArrayType):
        return _has_struct(dtype.elementType)
    if isinstance(dtype, T.MapType):
        return _has_struct(dtype.valueType)
    return False


def _read_parquet(spark: SparkSession, spec: InputSpec, paths: list[str]) -> DataFrame:
    # Columns keep their types; nanosecond timestamps (pandas' default) become timestamps.
    df = read_parquet(spark, paths, spec.options)
    fields = df.columns
    # The raw record (and so the event id of a row without a source id) names its columns in
    # name order: the merged schema's order depends on which files are read together, and a
    # file re-sent with its columns reordered holds the same records.
    record = F.struct(
        *[_by_name(F.col(f"`{c}`"), df.schema[c].dataType).alias(c) for c in sorted(fields)]
    )
    return df.select(
        F.to_json(record, _RAW_JSON).alias(RAW),
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
    "csv": read_csv,
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
