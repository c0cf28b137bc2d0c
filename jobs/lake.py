"""Delta Lake tables behind one small interface, with two engines (SPEC section 5).

* ``spark``: Spark's own Delta data source (delta-spark).  Used on Databricks and on clusters
  started with the Delta jars; supports metastore / Unity Catalog table names as well as paths.
* ``delta-rs``: for machines where the Delta JVM jars cannot be loaded.  Spark still computes and
  writes the Parquet data files in parallel on its executors (into a staging folder inside the
  table); the driver then moves them into place and commits them to the Delta log with the
  ``deltalake`` package (``create_write_transaction``).  Only file metadata passes through the
  driver, never rows.  Reads hand the current snapshot's file list to Spark's Parquet reader.

Both engines produce ordinary Delta tables that the other engine, DuckDB and polars can read.
Delta commits are atomic: a job killed before its commit leaves the previous version in place
(at worst with unreferenced files in the table folder, which ``VACUUM`` removes).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, cast
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from jobs.config import LakeConfig, TableSpec

log = logging.getLogger(__name__)

ENGINES = ("auto", "spark", "delta-rs")
_STAGING_DIR = "_staging"
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
#: Longer string statistics are truncated (and the maximum widened) to keep the log small.
_MAX_STAT_STRING = 256


class LakeError(RuntimeError):
    """A table operation cannot be carried out; the message says which table and why."""


@dataclass(frozen=True)
class TableLocation:
    """A resolved table: its key in the registry, storage path, metastore name, partitioning."""

    table: str
    path: str | None
    name: str | None
    partition_by: tuple[str, ...]

    def describe(self) -> str:
        return self.name or self.path or self.table


@dataclass(frozen=True)
class TableInfo:
    """A table as the end-of-run summary shows it."""

    location: str
    version: int
    rows: int


@dataclass(frozen=True)
class WriteResult:
    """What one committed write did."""

    table: str
    location: str
    version: int
    rows_written: int
    files_added: int


class Lake:
    """Read and write the product's Delta tables with the configured engine."""

    def __init__(self, spark: SparkSession, config: LakeConfig) -> None:
        if config.engine not in ENGINES:
            raise LakeError(f"lake.engine must be one of {ENGINES}, got {config.engine!r}")
        self.spark = spark
        self.config = config
        self.engine = resolve_engine(spark, config.engine)

    # ---------------------------------------------------------------- registry

    def location(self, table: str) -> TableLocation:
        """Resolve ``table`` through the registry in ``lake.tables``."""
        spec = self.config.tables.get(table)
        if spec is None:
            known = ", ".join(sorted(self.config.tables))
            raise LakeError(f"unknown table {table!r}; lake.tables defines: {known}")
        return _resolve(table, spec, self.config)

    # ---------------------------------------------------------------- reads

    def exists(self, table: str) -> bool:
        """Whether the table has at least one committed version."""
        loc = self.location(table)
        if self.engine == "spark":
            if loc.name:
                return bool(self.spark.catalog.tableExists(loc.name))
            return _delta_log_exists(_require_path(loc))
        return _delta_log_exists(_require_path(loc))

    def read(self, table: str) -> DataFrame:
        """The table's current snapshot as a DataFrame (lazy; nothing is collected)."""
        loc = self.location(table)
        if self.engine == "spark":
            if loc.name:
                return self.spark.read.table(loc.name)
            return self.spark.read.format("delta").load(_require_path(loc))
        return _read_delta_rs(self.spark, loc)

    def version(self, table: str) -> int:
        """The table's current version number."""
        loc = self.location(table)
        if self.engine == "spark" and loc.name:
            history = self.spark.sql(f"DESCRIBE HISTORY {loc.name} LIMIT 1").collect()
            return int(history[0]["version"])
        from deltalake import DeltaTable

        return int(DeltaTable(_require_path(loc)).version())

    def describe(self, table: str) -> TableInfo:
        """Location, current version and row count of a table (counted from the Delta log's
        per-file statistics where available, so no data is scanned)."""
        loc = self.location(table)
        if self.engine == "spark" and loc.name:
            version = self.version(table)
            return TableInfo(loc.describe(), version, int(self.read(table).count()))
        from deltalake import DeltaTable

        dt = DeltaTable(_require_path(loc))
        actions = pa.table(dt.get_add_actions(flatten=True))
        records = actions.column("num_records").to_pylist() if actions.num_rows else []
        if any(r is None for r in records):
            rows = int(self.read(table).count())
        else:
            rows = int(sum(records))
        return TableInfo(_require_path(loc), int(dt.version()), rows)

    # ---------------------------------------------------------------- writes

    def overwrite(self, table: str, df: DataFrame) -> WriteResult:
        """Replace the whole table with ``df`` in one commit (creating it if needed)."""
        return self._write(table, df, mode="overwrite", partitions=None)

    def append(self, table: str, df: DataFrame) -> WriteResult:
        """Add the rows of ``df`` to the table in one commit (creating it if needed)."""
        return self._write(table, df, mode="append", partitions=None)

    def overwrite_partitions(
        self, table: str, df: DataFrame, partitions: Mapping[str, Sequence[Any]]
    ) -> WriteResult:
        """Atomically replace exactly the given partitions with ``df``; others stay untouched.

        ``partitions`` maps a partition column to the values being replaced, e.g.
        ``{"event_date": ["2024-03-01", "2024-03-02"]}``.  Every row of ``df`` must fall inside
        those partitions; a row outside fails the write instead of silently widening it.
        """
        loc = self.location(table)
        unknown = set(partitions) - set(loc.partition_by)
        if not partitions or unknown:
            raise LakeError(
                f"{table}: overwrite_partitions needs values for partition columns "
                f"{list(loc.partition_by)}; got {sorted(partitions)}"
            )
        normalised = {
            col: [_partition_text(v) for v in values] for col, values in partitions.items()
        }
        return self._write(table, df, mode="overwrite", partitions=normalised)

    def _write(
        self,
        table: str,
        df: DataFrame,
        *,
        mode: str,
        partitions: Mapping[str, Sequence[str | None]] | None,
    ) -> WriteResult:
        loc = self.location(table)
        missing = [c for c in loc.partition_by if c not in df.columns]
        if missing:
            raise LakeError(f"{table}: DataFrame lacks partition columns {missing}")
        started = time.monotonic()
        if self.engine == "spark":
            result = _write_spark(self.spark, loc, df, mode=mode, partitions=partitions)
        else:
            result = _write_delta_rs(loc, df, mode=mode, partitions=partitions)
        log.info(
            "%s %s: %d rows in %d files -> version %d (%s, %.1fs)",
            mode if partitions is None else "overwrite_partitions",
            loc.describe(),
            result.rows_written,
            result.files_added,
            result.version,
            self.engine,
            time.monotonic() - started,
        )
        return result


# ==================================================================== engine choice


def resolve_engine(spark: SparkSession, requested: str) -> str:
    """Pick ``spark`` or ``delta-rs`` for ``requested`` (``auto`` decides and logs why)."""
    if requested == "delta-rs":
        return "delta-rs"
    available, reason = delta_spark_available(spark)
    if requested == "spark":
        if not available:
            raise LakeError(
                f"lake.engine=spark but Spark's Delta data source is not usable: {reason}. "
                "Start Spark with the Delta jars (e.g. --packages io.delta:delta-spark_2.13:4.0.1 "
                "plus the Delta session extension and catalog) or set lake.engine=delta-rs."
            )
        return "spark"
    engine = "spark" if available else "delta-rs"
    log.info("lake.engine=auto chose %s (%s)", engine, reason)
    return engine


def delta_spark_available(spark: SparkSession) -> tuple[bool, str]:
    """Whether this session can use Delta through Spark, and a human-readable reason."""
    jvm = getattr(getattr(spark, "sparkContext", None), "_jvm", None) if _has_jvm(spark) else None
    if jvm is None:
        # Spark Connect (Databricks serverless, DBR shared clusters) exposes no JVM; those
        # platforms ship Delta as their default table format.
        return True, "Spark Connect session: Delta is the platform's native format"
    try:
        jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension")
    except Exception:
        return False, "Delta jars are not on the session's classpath"
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "DeltaSparkSessionExtension" not in extensions:
        return False, "Delta jars present but spark.sql.extensions lacks DeltaSparkSessionExtension"
    return True, "Delta data source and session extension are loaded"


def _has_jvm(spark: SparkSession) -> bool:
    try:
        return spark.sparkContext is not None
    except Exception:  # Spark Connect raises on sparkContext access
        return False


# ==================================================================== locations


def _resolve(table: str, spec: TableSpec, config: LakeConfig) -> TableLocation:
    path = spec.path
    if path is None and config.root:
        path = f"{config.root.rstrip('/')}/{table}"
    name = spec.name
    if name is None and config.catalog_schema:
        name = f"{config.catalog_schema}.{table}"
    if path is not None and "://" not in path and not path.startswith("dbfs:"):
        path = os.path.abspath(path)
    return TableLocation(table=table, path=path, name=name, partition_by=tuple(spec.partition_by))


def _require_path(loc: TableLocation) -> str:
    if not loc.path:
        raise LakeError(
            f"{loc.table}: the delta-rs engine needs a storage path (lake.root or "
            f"lake.tables.{loc.table}.path); metastore names need lake.engine=spark"
        )
    return loc.path


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def _delta_log_exists(uri: str) -> bool:
    fs, root = _filesystem(uri)
    info = fs.get_file_info(f"{root}/_delta_log")
    return bool(info.type == pafs.FileType.Directory)


# ==================================================================== spark engine


def _write_spark(
    spark: SparkSession,
    loc: TableLocation,
    df: DataFrame,
    *,
    mode: str,
    partitions: Mapping[str, Sequence[str | None]] | None,
) -> WriteResult:
    writer = df.write.format("delta").mode(mode)
    if loc.partition_by:
        writer = writer.partitionBy(*loc.partition_by)
    if partitions is not None:
        writer = writer.option("replaceWhere", _sql_predicate(partitions))
    if loc.name:
        if loc.path:
            writer = writer.option("path", loc.path)
        writer.saveAsTable(loc.name)
        target = loc.name
    else:
        writer.save(_require_path(loc))
        target = f"delta.`{loc.path}`"
    last = spark.sql(f"DESCRIBE HISTORY {target} LIMIT 1").collect()[0]
    metrics = last["operationMetrics"] or {}
    return WriteResult(
        table=loc.table,
        location=loc.describe(),
        version=int(last["version"]),
        rows_written=int(metrics.get("numOutputRows", 0)),
        files_added=int(metrics.get("numFiles", metrics.get("numAddedFiles", 0))),
    )


def _sql_predicate(partitions: Mapping[str, Sequence[str | None]]) -> str:
    clauses = []
    for col, values in partitions.items():
        present = [v for v in values if v is not None]
        parts = []
        if present:
            quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in present)
            parts.append(f"`{col}` IN ({quoted})")
        if len(present) != len(values):
            parts.append(f"`{col}` IS NULL")
        clauses.append("(" + " OR ".join(parts) + ")")
    return " AND ".join(clauses)


# ==================================================================== delta-rs engine


def _read_delta_rs(spark: SparkSession, loc: TableLocation) -> DataFrame:
    from deltalake import DeltaTable
    from pyspark.sql.pandas.types import from_arrow_schema

    uri = _require_path(loc)
    if not _delta_log_exists(uri):
        raise LakeError(f"table {loc.table} does not exist yet at {uri}")
    dt = DeltaTable(uri)
    protocol = dt.protocol()
    if protocol.min_reader_version > 1 and (protocol.reader_features or []):
        raise LakeError(
            f"{loc.table}: table uses Delta reader features {protocol.reader_features} that the "
            "delta-rs read path does not hand to Spark; use lake.engine=spark"
        )
    arrow_schema = _arrow_schema_of(dt)
    spark_schema = from_arrow_schema(arrow_schema)
    files = dt.file_uris()
    if not files:
        return spark.createDataFrame([], spark_schema)
    partition_cols = list(dt.metadata().partition_columns)
    reader = spark.read.schema(spark_schema)
    if partition_cols:
        # Partition values live in hive-style folder names (Delta's default layout, written by
        # both engines); basePath lets Spark derive them with the types of the table schema.
        reader = reader.option("basePath", uri)
    return reader.parquet(*files).select(*[f.name for f in spark_schema.fields])


def _arrow_schema_of(dt: Any) -> pa.Schema:
    schema = dt.schema().to_arrow()
    return pa.schema(schema) if not isinstance(schema, pa.Schema) else schema


def _delta_schema_for(df: DataFrame) -> Any:
    """Delta schema of ``df``, all fields nullable (as delta-spark stores DataFrame schemas)."""
    from deltalake import Schema
    from pyspark.sql.pandas.types import to_arrow_schema

    return Schema.from_arrow(to_arrow_schema(_as_nullable(df.schema)))


def _as_nullable(dtype: T.DataType) -> Any:
    if isinstance(dtype, T.StructType):
        return T.StructType(
            [T.StructField(f.name, _as_nullable(f.dataType), True) for f in dtype.fields]
        )
    if isinstance(dtype, T.ArrayType):
        return T.ArrayType(_as_nullable(dtype.elementType), True)
    if isinstance(dtype, T.MapType):
        return T.MapType(dtype.keyType, _as_nullable(dtype.valueType), True)
    return dtype


def _write_delta_rs(
    loc: TableLocation,
    df: DataFrame,
    *,
    mode: str,
    partitions: Mapping[str, Sequence[str | None]] | None,
) -> WriteResult:
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction, create_table_with_add_actions

    uri = _require_path(loc)
    schema = _delta_schema_for(df)
    exists = _delta_log_exists(uri)
    if exists:
        current = DeltaTable(uri)
        _check_schema(loc, current.schema(), schema)
        existing_parts = tuple(current.metadata().partition_columns)
        if existing_parts != loc.partition_by:
            raise LakeError(
                f"{loc.table}: table at {uri} is partitioned by {list(existing_parts)}, "
                f"config says {list(loc.partition_by)}"
            )

    fs, root = _filesystem(uri)
    staging = f"{root}/{_STAGING_DIR}/{uuid.uuid4().hex}"
    writer = df.write.mode("overwrite")
    if loc.partition_by:
        writer = writer.partitionBy(*loc.partition_by)
    staging_uri = staging if "://" not in uri else uri.split("://")[0] + "://" + staging
    writer.parquet(staging_uri)

    try:
        actions: list[AddAction] = []
        rows = 0
        for info in fs.get_file_info(pafs.FileSelector(staging, recursive=True)):
            if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
                continue
            relative = info.path[len(staging) + 1 :]
            values = _partition_values_from_path(relative, loc.partition_by)
            if partitions is not None:
                _check_inside(loc, values, partitions)
            metadata = pq.read_metadata(info.path, filesystem=fs)
            if metadata.num_rows == 0:
                # Spark writes an empty file for each empty task; the log does not need them.
                continue
            rows += metadata.num_rows
            fs.create_dir(f"{root}/{os.path.dirname(relative)}".rstrip("/"), recursive=True)
            fs.move(info.path, f"{root}/{relative}")
            actions.append(
                AddAction(
                    path=relative,
                    size=info.size or 0,
                    partition_values=values,
                    modification_time=int(time.time() * 1000),
                    data_change=True,
                    stats=_file_stats(metadata),
                )
            )
        if not exists:
            create_table_with_add_actions(
                uri, schema, actions, mode="error", partition_by=list(loc.partition_by) or None
            )
        else:
            filters = None if partitions is None else _partition_filters(loc, partitions)
            DeltaTable(uri).create_write_transaction(
                # delta-rs types this list as AddAction | RemoveAction; ours holds adds only.
                cast(list[Any], actions),
                mode,
                schema,
                partition_by=list(loc.partition_by) or None,
                partition_filters=filters,
            )
    finally:
        if fs.get_file_info(staging).type == pafs.FileType.Directory:
            fs.delete_dir(staging)

    version = int(DeltaTable(uri).version())
    return WriteResult(
        table=loc.table, location=uri, version=version, rows_written=rows, files_added=len(actions)
    )


def _check_schema(loc: TableLocation, current: Any, incoming: Any) -> None:
    """Schema enforcement: the write must match the table's columns and types exactly."""
    have = {f.name: json.dumps(f.to_json()) for f in current.fields}
    want = {f.name: json.dumps(f.to_json()) for f in incoming.fields}
    if have == want and [f.name for f in current.fields] == [f.name for f in incoming.fields]:
        return
    missing = sorted(set(have) - set(want))
    extra = sorted(set(want) - set(have))
    changed = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    raise LakeError(
        f"{loc.table}: schema of the write does not match the table at {loc.path} "
        f"(missing {missing}, unexpected {extra}, type changed {changed}, or column order "
        "differs). Delta refuses silent schema changes; migrate or remove the table first."
    )


def _partition_values_from_path(
    relative: str, partition_by: Sequence[str]
) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for segment in relative.split("/")[:-1]:
        key, sep, raw = segment.partition("=")
        if sep and key in partition_by:
            text = unquote(raw)
            values[key] = None if text == _HIVE_NULL else text
    missing = [c for c in partition_by if c not in values]
    if missing:
        raise LakeError(f"staged file {relative} lacks partition folders for {missing}")
    return values


def _partition_filters(
    loc: TableLocation, partitions: Mapping[str, Sequence[str | None]]
) -> list[tuple[str, str, Any]]:
    """delta-rs partition filters selecting exactly ``partitions`` (AND across columns).

    delta-rs matches the null partition only with ``= ''``; a null mixed with other values of
    the same column cannot be expressed as one conjunctive filter, so it is refused.
    """
    filters: list[tuple[str, str, Any]] = []
    for col, values in partitions.items():
        present = [v for v in values if v is not None]
        if len(present) == len(values):
            filters.append((col, "in", present))
        elif not present:
            filters.append((col, "=", ""))
        else:
            raise LakeError(
                f"{loc.table}: overwrite the null partition of {col} in a separate call from "
                f"its other values {present}"
            )
    return filters


def _comparable(text: str | None) -> str | None:
    """Partition text in one canonical form (Spark writes ``2024-03-01 10:00:00`` where
    Delta writes ``2024-03-01 10:00:00.000000``)."""
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        return text


def _check_inside(
    loc: TableLocation,
    values: Mapping[str, str | None],
    partitions: Mapping[str, Sequence[str | None]],
) -> None:
    for col, allowed in partitions.items():
        if _comparable(values.get(col)) not in {_comparable(v) for v in allowed}:
            raise LakeError(
                f"{loc.table}: overwrite_partitions for {col} in {list(allowed)} got rows with "
                f"{col}={values.get(col)!r}; refusing to write outside the replaced partitions"
            )


def _partition_text(value: Any) -> str | None:
    """Delta's string form of a partition value (dates ISO, timestamps with a space)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _file_stats(metadata: pq.FileMetaData) -> str:
    """Delta per-file statistics (numRecords, nullCount, min/max) from a Parquet footer.

    Only top-level primitive columns get statistics; Parquet numbers its columns by leaf, so
    each is found by its leaf path rather than by its position among top-level fields.
    """
    null_count: dict[str, int] = {}
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    for leaf in range(metadata.num_columns):
        name = metadata.schema.column(leaf).path
        if "." in name:  # a field inside a struct, list or map
            continue
        nulls = 0
        lo: Any = None
        hi: Any = None
        complete = True
        try:
            for rg in range(metadata.num_row_groups):
                stats = metadata.row_group(rg).column(leaf).statistics
                if stats is None or not stats.has_null_count:
                    complete = False
                    break
                nulls += stats.null_count
                if stats.has_min_max:
                    lo = stats.min if lo is None else min(lo, stats.min)
                    hi = stats.max if hi is None else max(hi, stats.max)
        except (pa.ArrowNotImplementedError, TypeError):
            continue  # e.g. decimals: pyarrow cannot extract their statistics
        if not complete:
            continue
        null_count[name] = nulls
        lo_json, hi_json = _stat_json(lo, floor=True), _stat_json(hi, floor=False)
        if lo_json is not None and hi_json is not None:
            mins[name] = lo_json
            maxs[name] = hi_json
    return json.dumps(
        {
            "numRecords": metadata.num_rows,
            "minValues": mins,
            "maxValues": maxs,
            "nullCount": null_count,
        }
    )


def _stat_json(value: Any, *, floor: bool) -> Any:
    """A statistic as Delta's JSON wants it, widened (never narrowed) where precision is lost."""
    if value is None or isinstance(value, (bytes, Decimal)):
        return None
    if isinstance(value, datetime):
        # Delta keeps timestamp statistics at millisecond precision: round outward so that the
        # range still covers every row.
        value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        micros = value.microsecond % 1000
        if micros and not floor:
            value += timedelta(microseconds=1000 - micros)
        elif micros:
            value -= timedelta(microseconds=micros)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        if len(value) <= _MAX_STAT_STRING:
            return value
        # A prefix is a valid lower bound; the prefix followed by the highest code point is a
        # valid upper bound.  Leaving the column out instead would make delta-rs skip the file
        # on any filter over that column.
        prefix = value[:_MAX_STAT_STRING]
        return prefix if floor else prefix + "\U0010ffff"
    if isinstance(value, float) and value != value:  # NaN has no order
        return None
    return value


def table_uri_for_display(uri: str) -> str:
    """A path as people paste it into delta-rs / DuckDB (file URIs shown as plain paths)."""
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme == "file" else uri
