"""Delta Lake tables behind one small interface, with two engines.

* ``spark`` (:mod:`.delta_spark`): Spark's own Delta data source (delta-spark), on Databricks
  and on clusters started with the Delta jars; metastore / Unity Catalog names or paths.
* ``delta-rs`` (:mod:`.delta_rs`): Spark writes the Parquet files, the ``deltalake`` package
  commits them; for machines where the Delta JVM jars cannot be loaded.

Every write is checked against the table's contract in :mod:`jobs.core.tables` (columns and
types, partitioning, allowed write modes) before anything is written.  Both engines produce
ordinary Delta tables that the other engine, DuckDB and polars can read.  Delta commits are
atomic: a job killed before its commit leaves the previous version in place (at worst with
unreferenced files in the table folder, which ``VACUUM`` removes).

Locations may be local paths or URIs (``s3a://``, ``abfss://``, ``gs://``, ``dbfs:/``,
``file:``); Spark uses them as configured, the Python side through :mod:`.paths` with
``lake.storage_options``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from jobs.core.config import LakeConfig, TableSpec
from jobs.core.lake import delta_rs, delta_spark
from jobs.core.lake.base import (
    ConcurrentWriteError,
    LakeError,
    TableInfo,
    TableLocation,
    Txn,
    WriteResult,
)
from jobs.core.lake.delta_rs import partition_text
from jobs.core.lake.paths import Storage, is_uri, location_label, reaching, require_path
from jobs.core.tables import TABLES, TableContract

log = logging.getLogger("jobs.lake")

_LOGGED_CHOICES: set[tuple[str, str]] = set()

__all__ = ["Lake", "LakeError", "TableInfo", "TableLocation", "WriteResult", "resolve_engine"]


class Lake:
    """Read and write the product's Delta tables with the configured engine."""

    def __init__(
        self,
        spark: SparkSession,
        config: LakeConfig,
        *,
        contracts: Mapping[str, TableContract] = TABLES,
    ) -> None:
        """``contracts``: the tables this lake knows (the product's registry; tests and other
        products pass their own)."""
        self.spark = spark
        self.config = config
        self.contracts = contracts
        #: Tables and files as the Python side (delta-rs) reaches them.
        self.storage = Storage(config.storage_options)
        self.engine = resolve_engine(spark, config.engine)

    # ---------------------------------------------------------------- registry

    def location(self, table: str) -> TableLocation:
        """Resolve ``table``: its contract (docs/tables.md) and its place in ``lake.tables``."""
        spec = self.config.tables.get(table, TableSpec())
        return _resolve(self.contract(table), spec, self.config)

    def _path_location(self, table: str) -> TableLocation:
        """``table``'s location with its storage path (from the metastore for a table known
        only by name on the spark engine)."""
        loc = self.location(table)
        if loc.path or not (self.engine == "spark" and loc.name):
            return loc
        detail = self.spark.sql(f"DESCRIBE DETAIL {loc.name}").first()
        path = None if detail is None else str(detail["location"])
        return TableLocation(loc.table, path, loc.name, loc.partition_by)

    def contract(self, table: str) -> TableContract:
        """The contract of ``table``; :class:`LakeError` names the known tables."""
        try:
            return self.contracts[table]
        except KeyError:
            known = ", ".join(self.contracts)
            raise LakeError(f"unknown table {table!r}; the tables are {known}") from None

    # ---------------------------------------------------------------- reads

    def exists(self, table: str) -> bool:
        """Whether the table has at least one committed version.  :class:`LakeError` when its
        location cannot be reached (bad URI, missing bucket, no credentials)."""
        loc = self.location(table)
        if self.engine == "spark" and loc.name:
            return bool(self.spark.catalog.tableExists(loc.name))
        if self._spark_only(loc):
            try:
                self.spark.sql(f"DESCRIBE HISTORY {_delta_path(loc)} LIMIT 1").collect()
            except Exception:  # not a Delta table (yet) at that path
                return False
            return True
        native = self.storage.native(loc)
        with self._reaching(loc):
            return self.storage.log_exists(native)

    def read(self, table: str) -> DataFrame:
        """The table's current snapshot as a DataFrame (lazy; nothing is collected)."""
        loc = self.location(table)
        if self.engine == "spark":
            if loc.name:
                return self.spark.read.table(loc.name)
            return self.spark.read.format("delta").load(require_path(loc))
        return delta_rs.read(self.spark, loc, self.storage)

    def version(self, table: str) -> int:
        """The table's current version number."""
        loc = self.location(table)
        if self.engine == "spark" and (loc.name or self._spark_only(loc)):
            target = loc.name or _delta_path(loc)
            history = self.spark.sql(f"DESCRIBE HISTORY {target} LIMIT 1").collect()
            return int(history[0]["version"])
        native = self.storage.native(loc)
        with self._reaching(loc):
            return int(self.storage.table(native).version())

    def describe(self, table: str) -> TableInfo:
        """Location, current version and row count of a table (counted from the Delta log's
        per-file statistics where available, so no data is scanned)."""
        loc = self.location(table)
        if self.engine == "spark" and (loc.name or self._spark_only(loc)):
            version = self.version(table)
            return TableInfo(loc.describe(), version, int(self.read(table).count()))
        native = self.storage.native(loc)
        with self._reaching(loc):
            dt = self.storage.table(native)
            actions = pa.table(dt.get_add_actions(flatten=True))
        records = actions.column("num_records").to_pylist() if actions.num_rows else []
        if any(r is None for r in records):
            rows = int(self.read(table).count())
        else:
            rows = int(sum(records))
        return TableInfo(require_path(loc), int(dt.version()), rows)

    # ---------------------------------------------------------------- writes

    def overwrite(self, table: str, df: DataFrame, *, txn: Txn | None = None) -> WriteResult:
        """Replace the whole table with ``df`` in one commit (creating it if needed).

        With ``txn`` the commit carries that transaction identifier and fails with
        :class:`ConcurrentWriteError` when another writer committed since this one read.
        """
        return self._write(table, df, mode="overwrite", partitions=None, txn=txn)

    def append(self, table: str, df: DataFrame, *, txn: Txn | None = None) -> WriteResult:
        """Add the rows of ``df`` to the table in one commit (creating it if needed); ``txn``
        as for :meth:`overwrite`."""
        return self._write(table, df, mode="append", partitions=None, txn=txn)

    def txn_version(self, table: str, app_id: str) -> int | None:
        """The latest transaction version the table records for ``app_id`` (None: never)."""
        return delta_rs.txn_version(self._path_location(table), app_id, self.storage)

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
            col: [partition_text(v) for v in values] for col, values in partitions.items()
        }
        return self._write(table, df, mode="overwrite", partitions=normalised)

    def merge(
        self,
        table: str,
        source: DataFrame,
        *,
        update_if: str | None = None,
        delete_unmatched_in: Mapping[str, Sequence[Any]] | None = None,
    ) -> WriteResult:
        """Delta ``MERGE`` of ``source`` into the table on the table's key, in one commit.

        Target rows whose key ``source`` holds are replaced by the source row (only where the
        SQL condition ``update_if`` holds, written with the aliases ``t`` for the target and
        ``s`` for the source, e.g. ``"t.content_hash <> s.content_hash"``); source rows with a
        new key are inserted.  ``delete_unmatched_in`` maps partition columns to values, like
        :meth:`overwrite_partitions`: target rows in those partitions that ``source`` lacks are
        deleted (``WHEN NOT MATCHED BY SOURCE``), so ``source`` is then the partitions' whole
        new content.  Only the files holding touched rows are rewritten, and the commit's
        metrics (``DESCRIBE HISTORY``) say how many rows were inserted, updated and deleted.
        A missing table is created with the source's rows.  ``source`` must match the
        contract; raises :class:`LakeError` otherwise and :class:`ConcurrentWriteError` when
        another writer committed to the table first.
        """
        contract = self.contract(table)
        if "merge" not in contract.write_modes:
            raise LakeError(
                f"{table}: merge is not a write mode of this table "
                f"(allowed: {', '.join(contract.write_modes)}; docs/tables.md)"
            )
        if not self.exists(table):
            # MERGE into an empty table inserts every source row and deletes nothing.
            return self._write(table, source, mode="overwrite", partitions=None, merging=True)
        loc = self.location(table)
        problems = contract.mismatches(source.schema)
        if problems:
            raise LakeError(
                f"{table}: the merge source does not match the table contract "
                "(docs/tables.md): " + "; ".join(problems)
            )
        scope = None
        if delete_unmatched_in is not None:
            unknown = set(delete_unmatched_in) - set(loc.partition_by)
            if not delete_unmatched_in or unknown:
                raise LakeError(
                    f"{table}: delete_unmatched_in needs values for partition columns "
                    f"{list(loc.partition_by)}; got {sorted(delete_unmatched_in)}"
                )
            scope = _target_predicate(delete_unmatched_in)
        started = time.monotonic()
        if self.engine == "spark":
            result = delta_spark.merge(
                self.spark,
                loc,
                source,
                keys=contract.key,
                update_if=update_if,
                delete_unmatched_in=scope,
            )
        else:
            result = delta_rs.merge(
                loc,
                source,
                keys=contract.key,
                update_if=update_if,
                delete_unmatched_in=scope,
                storage=self.storage,
            )
        log.info(
            "merge %s: %d inserted, %d updated, %d deleted -> version %d (%s, %.1fs)",
            loc.describe(),
            result.rows_written - result.rows_updated,
            result.rows_updated,
            result.rows_deleted,
            result.version,
            self.engine,
            time.monotonic() - started,
        )
        return result

    def _write(
        self,
        table: str,
        df: DataFrame,
        *,
        mode: str,
        partitions: Mapping[str, Sequence[str | None]] | None,
        txn: Txn | None = None,
        merging: bool = False,
    ) -> WriteResult:
        loc = self.location(table)
        contract = self.contract(table)
        operation = "overwrite_partitions" if partitions is not None else mode
        if not merging and operation not in contract.write_modes:
            raise LakeError(
                f"{table}: {operation} is not a write mode of this table "
                f"(allowed: {', '.join(contract.write_modes)}; docs/tables.md)"
            )
        problems = contract.mismatches(df.schema)
        if problems:
            raise LakeError(
                f"{table}: the write does not match the table contract (docs/tables.md): "
                + "; ".join(problems)
            )
        started = time.monotonic()
        if self.engine == "spark":
            if txn is not None and (self.txn_version(table, txn.app_id) or 0) != txn.version - 1:
                # delta-spark would skip a version it already holds without a word; the
                # delta-rs engine makes the same check on the commit's own snapshot.
                raise ConcurrentWriteError(
                    f"{table}: expected transaction {txn.app_id!r} at version "
                    f"{txn.version - 1}: a concurrent writer committed first"
                )
            result = delta_spark.write(
                self.spark, loc, df, mode=mode, partitions=partitions, txn=txn
            )
        else:
            result = delta_rs.write(
                loc, df, mode=mode, partitions=partitions, txn=txn, storage=self.storage
            )
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

    def _spark_only(self, loc: TableLocation) -> bool:
        """A path the spark engine reaches but the Python side (delta-rs) cannot, e.g.
        ``hdfs://`` or ``dbfs:/`` off Databricks: table metadata then comes from Spark SQL."""
        if self.engine != "spark" or not loc.path:
            return False
        try:
            self.storage.native(loc)
        except LakeError:
            return True
        return False

    @staticmethod
    def _reaching(loc: TableLocation) -> AbstractContextManager[None]:
        return reaching(location_label(loc))


def _target_predicate(partitions: Mapping[str, Sequence[Any]]) -> str:
    """``partitions`` as a predicate on the merge target (alias ``t``) that Spark SQL and
    delta-rs (DataFusion) both parse."""
    clauses = []
    for col, values in partitions.items():
        if not col.isidentifier():
            raise LakeError(f"merge scope column {col!r} is not a plain column name")
        texts = [partition_text(v) for v in values]
        present = ["'" + v.replace("'", "''") + "'" for v in texts if v is not None]
        parts = [f"t.{col} IN ({', '.join(present)})"] if present else []
        if len(present) != len(texts):
            parts.append(f"t.{col} IS NULL")
        clauses.append("(" + " OR ".join(parts) + ")")
    return " AND ".join(clauses)


def _delta_path(loc: TableLocation) -> str:
    return f"delta.`{require_path(loc)}`"


def resolve_engine(spark: SparkSession, requested: str) -> str:
    """Pick ``spark`` or ``delta-rs`` for ``requested`` (``auto`` decides and logs why)."""
    if requested == "delta-rs":
        return "delta-rs"
    available, reason = delta_spark.delta_spark_available(spark)
    if requested == "spark":
        if not available:
            raise LakeError(
                f"lake.engine=spark but Spark's Delta data source is not usable: {reason}. "
                "Start Spark with the Delta jars (e.g. --packages io.delta:delta-spark_2.13:4.0.1 "
                "plus the Delta session extension and catalog) or set lake.engine=delta-rs."
            )
        return "spark"
    engine = "spark" if available else "delta-rs"
    # Once per process at INFO: every stage of a pipeline builds its own Lake.
    level = logging.DEBUG if (engine, reason) in _LOGGED_CHOICES else logging.INFO
    _LOGGED_CHOICES.add((engine, reason))
    log.log(level, "lake.engine=auto chose %s (%s)", engine, reason)
    return engine


def _resolve(contract: TableContract, spec: TableSpec, config: LakeConfig) -> TableLocation:
    table = contract.name
    path = spec.path
    if path is None and config.root:
        path = f"{config.root.rstrip('/')}/{table}"
    name = spec.name
    if name is None and config.catalog_schema:
        name = f"{config.catalog_schema}.{table}"
    if path is not None and not is_uri(path):
        # URIs (s3a://, dbfs:/, file:...) are kept as written: Spark uses them as they are.
        path = os.path.abspath(path)
    return TableLocation(table=table, path=path, name=name, partition_by=contract.partition_by)
