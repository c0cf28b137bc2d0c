"""The ``delta-rs`` engine: for machines where the Delta JVM jars cannot be loaded.

Spark still computes and writes the Parquet data files in parallel on its executors (into a
staging folder inside the table); the driver then moves them into place and commits them to the
Delta log with the ``deltalake`` package (``create_write_transaction``).  Only file metadata
passes through the driver, never rows.  Reads hand the current snapshot's file list to Spark's
Parquet reader.

Spark reaches the table at its configured path (``s3a://...``), the driver through delta-rs's
object store at the native one (``s3://...``, :mod:`.paths`) with ``lake.storage_options``.  On
S3 a commit is a conditional put of the next log entry (``If-None-Match``), so of two writers
of one version exactly one lands (deltalake >= 1.0; no locking provider is involved).
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, cast
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from jobs.core.lake.base import (
    ConcurrentWriteError,
    LakeError,
    TableLocation,
    Txn,
    WriteResult,
)
from jobs.core.lake.file_stats import file_stats
from jobs.core.lake.paths import Storage, location_label, reaching, require_path, spark_uris

_STAGING_DIR = "_staging"
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def read(spark: SparkSession, loc: TableLocation, storage: Storage) -> DataFrame:
    """The table's current snapshot: its files (listed by delta-rs) read by Spark.  Raises
    :class:`LakeError` when the table does not exist or its storage cannot be reached."""
    from pyspark.sql.pandas.types import from_arrow_schema

    uri = require_path(loc)
    native = storage.native(loc)
    with reaching(location_label(loc)):
        if not storage.log_exists(native):
            raise LakeError(f"table {loc.table} does not exist yet at {uri}")
        dt = storage.table(native)
        files = spark_uris(dt.file_uris(), native_root=native, spark_root=uri)
    protocol = dt.protocol()
    if protocol.min_reader_version > 1 and (protocol.reader_features or []):
        raise LakeError(
            f"{loc.table}: table uses Delta reader features {protocol.reader_features} that the "
            "delta-rs read path does not hand to Spark; use lake.engine=spark"
        )
    arrow_schema = _arrow_schema_of(dt)
    spark_schema = from_arrow_schema(arrow_schema)
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


def write(
    loc: TableLocation,
    df: DataFrame,
    *,
    mode: str,
    partitions: Mapping[str, Sequence[str | None]] | None,
    txn: Txn | None = None,
    storage: Storage,
) -> WriteResult:
    """Write ``df`` as one commit (see the module docstring).  With ``txn`` the commit carries
    that transaction identifier, happens only if the table records ``txn.version - 1`` for the
    app id, and is not rebased onto concurrent commits: a concurrent writer makes it fail with
    :class:`ConcurrentWriteError` (before any file is written, or at the commit).  Storage
    that cannot be reached raises :class:`LakeError` naming the table."""
    uri = require_path(loc)
    native = storage.native(loc)
    with reaching(location_label(loc)):
        return _write(
            loc, df, uri, native, mode=mode, partitions=partitions, txn=txn, storage=storage
        )


def _write(
    loc: TableLocation,
    df: DataFrame,
    uri: str,
    native: str,
    *,
    mode: str,
    partitions: Mapping[str, Sequence[str | None]] | None,
    txn: Txn | None,
    storage: Storage,
) -> WriteResult:
    from deltalake import CommitProperties, Transaction
    from deltalake.exceptions import CommitFailedError, DeltaError
    from deltalake.transaction import AddAction, create_table_with_add_actions

    schema = _delta_schema_for(df)
    exists = storage.log_exists(native)
    current = storage.table(native) if exists else None
    if txn is not None:
        _check_txn_predecessor(loc, current, txn)
    if current is not None:
        _check_schema(loc, current.schema(), schema)
        existing_parts = tuple(current.metadata().partition_columns)
        if existing_parts != loc.partition_by:
            raise LakeError(
                f"{loc.table}: table at {uri} is partitioned by {list(existing_parts)}, "
                f"config says {list(loc.partition_by)}"
            )

    # Paths on ``fs`` are relative to the table's folder; Spark writes at the configured path.
    fs = storage.filesystem(native)
    staging = f"{_STAGING_DIR}/{uuid.uuid4().hex}"
    writer = df.write.mode("overwrite")
    if loc.partition_by:
        writer = writer.partitionBy(*loc.partition_by)
    writer.parquet(f"{uri.rstrip('/')}/{staging}")

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
            folder = posixpath.dirname(relative)
            if folder:
                fs.create_dir(folder, recursive=True)
            fs.move(info.path, relative)
            actions.append(
                AddAction(
                    path=relative,
                    size=info.size or 0,
                    partition_values=values,
                    modification_time=int(time.time() * 1000),
                    data_change=True,
                    stats=file_stats(metadata),
                )
            )
        properties = None
        if txn is not None:
            properties = CommitProperties(
                app_transactions=[Transaction(txn.app_id, txn.version)], max_commit_retries=0
            )
        try:
            if current is None:
                create_table_with_add_actions(
                    native,
                    schema,
                    actions,
                    mode="error",
                    partition_by=list(loc.partition_by) or None,
                    storage_options=storage.delta_options(),
                    commit_properties=properties,
                )
            else:
                filters = None if partitions is None else _partition_filters(loc, partitions)
                # The snapshot read above is the commit's read version.
                current.create_write_transaction(
                    # delta-rs types this list as AddAction | RemoveAction; ours holds adds only.
                    cast(list[Any], actions),
                    mode,
                    schema,
                    partition_by=list(loc.partition_by) or None,
                    partition_filters=filters,
                    commit_properties=properties,
                )
        except CommitFailedError as exc:
            raise ConcurrentWriteError(
                f"{loc.table}: a concurrent writer committed to {uri} first ({exc}); "
                "nothing was written by this run"
            ) from exc
        except DeltaError as exc:
            if current is None and storage.log_exists(native):
                raise ConcurrentWriteError(
                    f"{loc.table}: a concurrent writer created {uri} first; nothing was written "
                    "by this run"
                ) from exc
            raise
    finally:
        if fs.get_file_info(staging).type == pafs.FileType.Directory:
            fs.delete_dir(staging)

    version = int(storage.table(native).version())
    return WriteResult(
        table=loc.table, location=uri, version=version, rows_written=rows, files_added=len(actions)
    )


def _check_txn_predecessor(loc: TableLocation, current: Any, txn: Txn) -> None:
    """Compare-and-swap on the transaction version: the snapshot this commit is based on must
    hold ``txn.version - 1`` for the app id (none for version 1), so a writer that read an
    older state than the table now has fails instead of committing on top of it."""
    have = current.transaction_version(txn.app_id) if current is not None else None
    if (have or 0) != txn.version - 1:
        raise ConcurrentWriteError(
            f"{loc.table}: expected transaction {txn.app_id!r} at version {txn.version - 1}, "
            f"the table is at {have}: a concurrent writer committed first; nothing was written "
            "by this run"
        )


def txn_version(loc: TableLocation, app_id: str, storage: Storage) -> int | None:
    """The latest version the table records for transaction application ``app_id`` (None:
    never, or no table yet); :class:`LakeError` when its storage cannot be reached."""
    native = storage.native(loc)
    with reaching(location_label(loc)):
        if not storage.log_exists(native):
            return None
        version = storage.table(native).transaction_version(app_id)
    return None if version is None else int(version)


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


def partition_text(value: Any) -> str | None:
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


def merge(
    loc: TableLocation,
    source: DataFrame,
    *,
    keys: Sequence[str],
    update_if: str | None,
    delete_unmatched_in: str | None,
    storage: Storage,
) -> WriteResult:
    """delta-rs's own ``MERGE`` (``DeltaTable.merge``), with the clauses of
    :func:`jobs.core.lake.delta_spark.merge` and the aliases ``t`` (target) and ``s``
    (source).  Unlike :func:`write`, the source's rows pass through the driver as one Arrow
    table (``DataFrame.toArrow``): delta-rs merges in the driver process, which is why the
    spark engine is the one for sources larger than the driver's memory."""
    from deltalake.exceptions import CommitFailedError

    uri = require_path(loc)
    native = storage.native(loc)
    with reaching(location_label(loc)):
        current = storage.table(native)
        _check_schema(loc, current.schema(), _delta_schema_for(source))
        rows = source.toArrow()
        on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        merger = (
            current.merge(rows, on, source_alias="s", target_alias="t")
            .when_matched_update_all(predicate=update_if)
            .when_not_matched_insert_all()
        )
        if delete_unmatched_in:
            merger = merger.when_not_matched_by_source_delete(predicate=delete_unmatched_in)
        try:
            metrics = merger.execute()
        except CommitFailedError as exc:
            raise ConcurrentWriteError(
                f"{loc.table}: a concurrent writer committed to {uri} first ({exc}); "
                "nothing was written by this run"
            ) from exc
        version = int(storage.table(native).version())
    inserted = int(metrics.get("num_target_rows_inserted", 0))
    updated = int(metrics.get("num_target_rows_updated", 0))
    return WriteResult(
        table=loc.table,
        location=uri,
        version=version,
        rows_written=inserted + updated,
        files_added=int(metrics.get("num_target_files_added", 0)),
        rows_updated=updated,
        rows_deleted=int(metrics.get("num_target_rows_deleted", 0)),
    )
