"""Parquet inputs with column types Spark does not read as they are: nanosecond timestamps.

pandas' ``DataFrame.to_parquet`` (pyarrow's default since Parquet format 2.6) writes datetimes
as ``INT64 TIMESTAMP(NANOS)``: ``isAdjustedToUTC=true`` for time-zone-aware columns, ``false``
for naive ones.  Spark rejects the type (``[PARQUET_TYPE_ILLEGAL]``; its
``spark.sql.legacy.parquet.nanosAsLong`` only turns such columns into bare numbers).  Here they
are read as their INT64 values, through a schema given to that one read (no session setting
changes), and become timestamps to the microsecond: UTC-adjusted ones ``timestamp`` instants,
the others ``timestamp_ntz`` wall-clock time, exactly as Spark reads the same columns in
micro- or milliseconds.  Which columns they are, and whether they are UTC-adjusted, comes from
each file's footer (the Parquet logical type, read with pyarrow on the driver).

Any other Parquet type Spark cannot read fails with an :class:`IngestError` naming the file and
saying what to change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.core.lake.paths import Storage, is_local, native_uri
from jobs.sources.errors import IngestError

#: What to do about a column Spark cannot read, for the error message.
_REWRITE = (
    "rewrite the file with microsecond timestamps, e.g. pandas "
    "df.to_parquet(path, coerce_timestamps='us', allow_truncated_timestamps=True) or pyarrow "
    "pq.write_table(table, path, coerce_timestamps='us', allow_truncated_timestamps=True)"
)
#: The Spark setting that makes schema inference report nanosecond timestamps as INT64.
_NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
#: Reader options that choose files (passed to the listing too).
_FILE_OPTIONS = ("pathGlobFilter", "recursiveFileLookup", "modifiedBefore", "modifiedAfter")


def read_parquet(
    spark: SparkSession, paths: Sequence[str], options: Mapping[str, str]
) -> DataFrame:
    """The Parquet files at ``paths`` as Spark reads them, with nanosecond timestamp columns
    (``INT64 TIMESTAMP(NANOS)``, top level) as ``timestamp`` (UTC-adjusted) or
    ``timestamp_ntz`` (not adjusted) values, truncated to the microsecond.

    Raises :class:`IngestError` when the paths hold no Parquet data file (e.g. a folder with
    only ``_SUCCESS``), and naming the file when a column has a type Spark cannot read and
    this cannot convert (a nanosecond timestamp inside a struct or list, files that store one
    column in different units, any other type Spark rejects), or when a file's footer cannot be
    read on the driver (local paths, and the object stores delta-rs reaches with the endpoint
    and credentials of the environment: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``...), or
    when the files disagree on a column's type.

    Unless ``options`` says otherwise, the schema is merged over every file
    (``mergeSchema``): a column that only later files hold is read too, and a file whose
    types differ from the others' is found before any row is read, not halfway through.
    """
    options = {"mergeSchema": "true", **options}
    reader = spark.read.options(**options)
    try:
        return reader.parquet(*paths)
    except Exception as exc:  # Spark raises AnalysisException; Spark Connect its own type
        text = str(exc)
        if "UNABLE_TO_INFER_SCHEMA" in text:
            # A folder with no Parquet data file (only _SUCCESS, or nothing yet).
            raise IngestError(
                f"input {list(paths)} holds no records (no Parquet data files)"
            ) from None
        if "CANNOT_MERGE" in text or "Failed to merge" in text:
            raise IngestError(
                f"input {list(paths)}: the Parquet files disagree on a column's type "
                f"({_merge_conflict(text)}); rewrite them with one schema"
            ) from exc
        if "PARQUET_TYPE_ILLEGAL" not in text:
            raise
        illegal = _illegal_type(exc)
    files = _list_files(spark, paths, options)
    nanos = _nanos_columns(files)
    if not nanos:
        raise _unreadable(spark, files, options, illegal)
    try:
        inference = spark.newSession()
    except Exception as exc:  # Spark Connect has no separate sessions
        raise IngestError(
            f"input {list(paths)}: nanosecond timestamps in {sorted(nanos)} cannot be read "
            f"through this Spark session ({type(exc).__name__}); {_REWRITE}"
        ) from exc
    for key, value in spark.conf.getAll.items():
        if key.startswith(("spark.sql.parquet.", "spark.sql.legacy.parquet.")):
            inference.conf.set(key, value)
    inference.conf.set(_NANOS_AS_LONG, "true")
    try:
        schema = inference.read.options(**dict(options)).parquet(*paths).schema
    except Exception as exc:
        if "PARQUET_TYPE_ILLEGAL" not in str(exc):
            raise
        raise _unreadable(spark, files, options, _illegal_type(exc)) from exc
    df = reader.schema(schema).parquet(*paths)
    return df.select(
        *[
            nanos_to_timestamp(F.col(f"`{c}`"), utc_adjusted=nanos[c]).alias(c)
            if c in nanos
            else F.col(f"`{c}`")
            for c in df.columns
        ]
    )


def nanos_to_timestamp(nanos: Column, *, utc_adjusted: bool) -> Column:
    """Nanoseconds since the epoch (a long) -> ``timestamp`` when ``utc_adjusted`` (an
    instant), else ``timestamp_ntz`` (wall-clock time); floored to the microsecond, exactly
    (integer arithmetic: a double would lose precision at this magnitude)."""
    micros = F.floor(nanos.cast("decimal(20,0)") / F.lit(1000)).cast("long")
    instant = F.timestamp_micros(micros)
    # The session time zone is UTC (jobs.core.session), so the cast keeps the wall-clock fields.
    return instant if utc_adjusted else instant.cast("timestamp_ntz")


def _list_files(spark: SparkSession, paths: Sequence[str], options: Mapping[str, str]) -> list[str]:
    """The files Spark reads for ``paths``, as it spells them (metadata only)."""
    chosen = {k: v for k, v in options.items() if k in _FILE_OPTIONS}
    listing = spark.read.format("binaryFile").options(**chosen).load(list(paths))
    return sorted(r["path"] for r in listing.select("path").collect())


def _nanos_columns(files: Sequence[str]) -> dict[str, bool]:
    """Top-level columns stored as nanosecond timestamps, each with its ``isAdjustedToUTC``,
    from every file's footer.  Raises :class:`IngestError` naming the file for one nested in a
    struct or list, or a column stored as nanoseconds in one file and otherwise in another."""
    found: dict[str, tuple[bool, str]] = {}
    units: dict[str, tuple[str, str]] = {}
    for path in files:
        for name, (unit, adjusted, nested) in _timestamp_columns(path).items():
            if unit == "nanoseconds" and nested:
                raise IngestError(
                    f"cannot read Parquet input file {path}: column {name!r} holds nanosecond "
                    f"timestamps inside a struct or list, which Spark cannot read; {_REWRITE}"
                )
            if nested:
                continue
            seen_unit, seen_in = units.setdefault(name, (unit, path))
            if seen_unit != unit:
                raise IngestError(
                    f"cannot read Parquet input file {path}: column {name!r} is stored in "
                    f"{unit} there but in {seen_unit} in {seen_in}; rewrite the files with one "
                    "timestamp unit (microseconds: coerce_timestamps='us')"
                )
            if unit == "nanoseconds":
                previous = found.setdefault(name, (adjusted, path))
                if previous[0] != adjusted:
                    raise IngestError(
                        f"cannot read Parquet input file {path}: column {name!r} is "
                        f"isAdjustedToUTC={str(adjusted).lower()} there but "
                        f"{str(previous[0]).lower()} in {previous[1]}; write every file with "
                        "the same kind of timestamp (all time-zone-aware, or all naive)"
                    )
    return {name: adjusted for name, (adjusted, _) in found.items()}


def _timestamp_columns(path: str) -> dict[str, tuple[str, bool, bool]]:
    """``{column: (unit, isAdjustedToUTC, nested)}`` for the timestamp columns of one Parquet
    file's footer (``unit``: milliseconds, microseconds or nanoseconds; nested columns are
    named by their dotted path)."""
    import pyarrow.parquet as pq

    try:
        # Spark's spelling (s3a://, file:...) as delta-rs's object store reaches it; its
        # endpoint and credentials come from the environment (AWS_ENDPOINT_URL, ...).
        native = native_uri(path, where=f"Parquet input file {path}")
        if is_local(native):
            source = pq.ParquetFile(native)
        else:
            folder, _, name = native.rpartition("/")
            source = pq.ParquetFile(name, filesystem=Storage().filesystem(folder))
        schema = source.schema
        top = {f.name for f in source.schema_arrow if not _is_nested(f.type)}
    except Exception as exc:
        raise IngestError(
            f"cannot read the footer of Parquet input file {path} on the driver "
            f"({type(exc).__name__}: {exc}) to convert its nanosecond timestamps; {_REWRITE}"
        ) from exc
    columns: dict[str, tuple[str, bool, bool]] = {}
    for index in range(len(schema)):
        column = schema.column(index)
        info = json.loads(column.logical_type.to_json() or "{}") if column.logical_type else {}
        if info.get("Type") == "Timestamp":
            adjusted = bool(info.get("isAdjustedToUTC"))
            columns[column.path] = (str(info.get("timeUnit")), adjusted, column.path not in top)
    return columns


def _is_nested(arrow_type: object) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_nested(arrow_type))


def _merge_conflict(text: str) -> str:
    """What Spark says about two files' types that cannot be merged."""
    match = re.search(r"Failed to merge incompatible data types [^.]*", text)
    return match.group(0).strip() if match else "Spark cannot merge their schemas"


def _illegal_type(exc: BaseException) -> str:
    """The type Spark names in a ``[PARQUET_TYPE_ILLEGAL]`` error (its first line)."""
    text = str(exc)
    start = text.find("Illegal Parquet type:")
    if start < 0:
        return "a Parquet type Spark cannot read"
    return text[start:].splitlines()[0].split(" SQLSTATE")[0].strip().rstrip(".")


def _unreadable(
    spark: SparkSession, files: Sequence[str], options: Mapping[str, str], illegal: str
) -> IngestError:
    """An :class:`IngestError` naming the first file whose schema Spark rejects."""
    culprit = None
    for path in files:
        try:
            spark.read.options(**dict(options)).parquet(path)
        except Exception as exc:
            if "PARQUET_TYPE_ILLEGAL" in str(exc):
                culprit, illegal = path, _illegal_type(exc)
                break
    where = f"file {culprit}" if culprit else f"files {list(files)[:5]}"
    return IngestError(
        f"cannot read Parquet input {where}: {illegal}; rewrite the column with a type Spark "
        "reads (Spark docs, 'Parquet Files': strings, numbers, booleans, dates, timestamps in "
        "milli- or microseconds, structs, lists, maps) or leave it out of the file"
    )
