"""THE table registry: every Delta table's contract, in one place.

For each table: its columns and types, the key that identifies a row, the partition columns, the
write modes the stages use, the stage that owns it (and any other stage that writes it) and what
it is for.  :class:`jobs.core.lake.Lake` checks every write against the contract before anything
is written, and ``docs/tables.md`` is generated from here (``python -m jobs.core.tables``; a test
keeps the two equal).  Code names tables through the constants below, never by spelling a name.

Conventions for every table: ``timestamp`` columns hold UTC instants (the sessions build with
``spark.sql.session.timeZone=UTC``); every column is nullable at the storage level (as Delta
stores DataFrame schemas), and the key columns are never null in rows the pipeline writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pyspark.sql import types as T

WriteMode = Literal["overwrite", "append", "overwrite_partitions", "merge"]

EVENTS = "events"
EVENTS_QUARANTINE = "events_quarantine"
INGEST_LOG = "ingest_log"
SESSIONS = "sessions"
USER_SEQUENCES = "user_sequences"
SESSIONIZE_LOG = "sessionize_log"
EMBEDDINGS = "embeddings"
CLUSTER_ASSIGNMENTS = "cluster_assignments"
CLUSTER_CENTROIDS = "cluster_centroids"
CLUSTER_METRICS = "cluster_metrics"
CLUSTER_PROFILES = "cluster_profiles"
HISTORY_EMBEDDINGS = "history_embeddings"


class ContractError(ValueError):
    """A table name that is not in the registry."""


@dataclass(frozen=True)
class Column:
    """One column of a contract: name, Spark type and what it means."""

    name: str
    dtype: T.DataType
    doc: str = ""


@dataclass(frozen=True)
class TableContract:
    """What a table is: columns and types, key, partitions, write modes and owner."""

    name: str
    owner: str
    description: str
    columns: tuple[Column, ...]
    #: Columns that identify a row; empty for a log of records (the quarantine).
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    write_modes: tuple[WriteMode, ...] = ("overwrite",)
    #: Stages other than the owner that write this table.
    also_written_by: tuple[str, ...] = ()

    @property
    def schema(self) -> T.StructType:
        """The table's Spark schema (every field nullable, see the module docstring)."""
        return T.StructType([T.StructField(c.name, c.dtype, True) for c in self.columns])

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def mismatches(self, schema: T.StructType) -> list[str]:
        """What is wrong with writing a DataFrame of ``schema`` to this table: each missing,
        unexpected, retyped or misplaced column named, in a readable form (empty when it fits).
        Nullability is ignored; order matters, since Delta and Parquet readers see it."""
        want = {c.name: _comparable(c.dtype) for c in self.columns}
        have = {f.name: _comparable(f.dataType) for f in schema.fields}
        problems = [f"missing column {name!r}" for name in want if name not in have]
        problems += [f"unexpected column {name!r}" for name in have if name not in want]
        problems += [
            f"column {name!r} is {have[name].simpleString()}, the contract says "
            f"{want[name].simpleString()}"
            for name in want
            if name in have and have[name] != want[name]
        ]
        if not problems and list(have) != list(want):
            problems.append(
                f"columns are in the order {list(have)}, the contract's order is {list(want)}"
            )
        return problems


def _comparable(dtype: T.DataType) -> T.DataType:
    """``dtype`` with every nested field and element marked nullable."""
    if isinstance(dtype, T.StructType):
        return T.StructType(
            [T.StructField(f.name, _comparable(f.dataType), True) for f in dtype.fields]
        )
    if isinstance(dtype, T.ArrayType):
        return T.ArrayType(_comparable(dtype.elementType), True)
    if isinstance(dtype, T.MapType):
        return T.MapType(_comparable(dtype.keyType), _comparable(dtype.valueType), True)
    return dtype


def _c(name: str, dtype: T.DataType, doc: str = "") -> Column:
    return Column(name, dtype, doc)


_S, _L, _D, _I = T.StringType(), T.LongType(), T.DoubleType(), T.IntegerType()
_TS, _DATE, _B = T.TimestampType(), T.DateType(), T.BooleanType()

#: One event inside a session's ``events`` array, in time order.
SESSION_EVENT = T.StructType(
    [
        T.StructField("ts", _TS),
        T.StructField("event_type", _S),
        T.StructField("item_id", _S),
        T.StructField("category", _S),
        T.StructField("brand", _S),
        T.StructField("price", _D),
    ]
)
#: One event inside a user's ``events`` array: a session event plus its session id.
USER_EVENT = T.StructType([*SESSION_EVENT.fields, T.StructField("session_id", _S)])

#: One of a segment's most frequent values: rank 1.., its share of the segment's events and its
#: lift (share in the segment / share in the whole population).
TOP_VALUE = T.StructType(
    [
        T.StructField("rank", _I),
        T.StructField("value", _S),
        T.StructField("share", _D),
        T.StructField("lift", _D),
    ]
)

_COUNTS = (
    _c("n_events", _L, "events (all of them, also when `events` is truncated)"),
    _c("n_views", _L),
    _c("n_add_to_cart", _L),
    _c("n_purchases", _L),
)

_CONTRACTS: tuple[TableContract, ...] = (
    TableContract(
        EVENTS,
        owner="ingest",
        description="Clean, deduplicated events (bronze): one row per distinct event.",
        columns=(
            _c(
                "event_id",
                _S,
                "source id, or a hash of the raw record when the source has none (identical "
                "records are duplicates; records differing in any field are distinct events)",
            ),
            _c("user_id", _S, "HMAC-SHA256 hex when privacy.pseudonymize_user_id is on"),
            _c("event_ts", _TS, "UTC instant"),
            _c("event_type", _S, "view, add_to_cart, remove_from_cart, purchase, search, other"),
            _c("item_id", _S),
            _c("category", _S),
            _c("brand", _S),
            _c("price", _D),
            _c("query", _S, "search text"),
            _c("source_session_id", _S, "the source's own session id, when it has one"),
            _c("source_file", _S, "the raw file the event was read from (lineage)"),
            _c(
                "source_order",
                _L,
                "order within source_file: ingest.source.order_by's value, else the record's "
                "row index x 65536 + its index in an exploded array; events are ordered by "
                "(event_ts, source_file, source_order, event_id)",
            ),
            _c("event_date", _DATE, "UTC date of event_ts"),
            _c("ingest_run_id", _S, "the ingest run that added the row"),
        ),
        key=("event_id",),
        partition_by=("event_date",),
        write_modes=("overwrite", "append"),
    ),
    TableContract(
        EVENTS_QUARANTINE,
        owner="ingest",
        description="Input records that were not kept, each with the reason.",
        columns=(
            _c("raw", _S, "the record as read (user ids replaced when pseudonymised)"),
            _c("reason", _S, "why it was quarantined, e.g. `missing event_ts`"),
            _c("source_file", _S),
            _c("ingest_run_id", _S),
            _c("quarantined_at", _TS),
        ),
        key=(),
        write_modes=("overwrite", "append"),
    ),
    TableContract(
        INGEST_LOG,
        owner="ingest",
        description="Raw files each ingest run read (the incremental watermark).",
        columns=(
            _c("ingest_run_id", _S),
            _c("mode", _S, "full | incremental"),
            _c("source_file", _S),
            _c("file_size", _L, "bytes"),
            _c("file_modified", _TS),
            _c("input_rows", _L, "records read from the file"),
            _c("quarantined_rows", _L),
            _c("ingested_at", _TS),
        ),
        key=("ingest_run_id", "source_file"),
        write_modes=("overwrite", "append"),
    ),
    TableContract(
        SESSIONS,
        owner="sessionize",
        description="One row per session: bounds, counts, bot flag and the event sequence.",
        columns=(
            _c("session_id", _S, "hash of user, session start and the rule version"),
            _c("user_id", _S),
            _c("session_start", _TS),
            _c("session_end", _TS),
            _c("duration_s", _D, "seconds from first to last event"),
            *_COUNTS,
            _c("revenue", _D, "sum of purchase prices, added in event order (run-independent)"),
            _c("is_bot", _B, "the user exceeded a rate or daily-count limit"),
            _c("events", T.ArrayType(SESSION_EVENT), "the last `max_events` events, in order"),
            _c("session_date", _DATE, "date of session_start in sessionize.timezone"),
        ),
        key=("session_id",),
        partition_by=("session_date",),
        write_modes=("overwrite", "overwrite_partitions"),
    ),
    TableContract(
        USER_SEQUENCES,
        owner="sessionize",
        description="One row per user: totals and the last events across sessions.",
        columns=(
            _c("user_id", _S),
            _c("n_sessions", _L),
            _c("first_seen", _TS),
            _c("last_seen", _TS),
            *_COUNTS,
            _c("revenue", _D, "the sessions' revenue, added in session order (run-independent)"),
            _c("is_bot", _B),
            _c("events", T.ArrayType(USER_EVENT), "the last `max_events` events, in order"),
        ),
        key=("user_id",),
        # merge: incremental sessionize upserts the users whose sessions changed.
        write_modes=("overwrite", "merge"),
    ),
    TableContract(
        SESSIONIZE_LOG,
        owner="sessionize",
        description="Which ingest runs each sessionize run covered (the incremental watermark).",
        columns=(
            _c("run_id", _S),
            _c("mode", _S, "full | incremental"),
            _c("ingest_run_ids", T.ArrayType(_S)),
            _c("window_start", _DATE, "first session_date recomputed (incremental)"),
            _c("partitions_rewritten", _L),
            _c("sessions_written", _L),
            _c("sessionized_at", _TS),
        ),
        key=("run_id",),
        write_modes=("overwrite", "append"),
    ),
    TableContract(
        EMBEDDINGS,
        owner="embed",
        description="One vector per user (or session) per model version.",
        columns=(
            _c("unit", _S, "user | session"),
            _c("id", _S, "user_id or session_id"),
            _c("user_id", _S),
            _c("embedding", T.ArrayType(T.FloatType()), "L2-normalised vector"),
            _c("content_hash", _S, "hash of the rendered sequence (incremental embed)"),
            _c("model_name", _S),
            _c("model_version", _S, "weights digest and encoder settings"),
            _c("run_id", _S),
            _c("embedded_at", _TS),
        ),
        key=("unit", "model_version", "id"),
        partition_by=("unit", "model_version"),
        # merge: incremental embed replaces the vectors whose sequence changed.
        write_modes=("overwrite_partitions", "merge"),
    ),
    TableContract(
        CLUSTER_ASSIGNMENTS,
        owner="cluster",
        description="The segment of every clustered user (or session) per cluster run.",
        columns=(
            _c("run_id", _S),
            _c("unit", _S),
            _c("id", _S),
            _c("user_id", _S),
            _c("cluster_id", _I),
            _c("distance", _D, "Euclidean distance to the assigned centroid"),
        ),
        key=("run_id", "id"),
        partition_by=("run_id",),
        write_modes=("overwrite_partitions",),
    ),
    TableContract(
        CLUSTER_CENTROIDS,
        owner="cluster",
        description="The k centroids of each cluster run.",
        columns=(
            _c("run_id", _S),
            _c("cluster_id", _I),
            _c("centroid", T.ArrayType(T.FloatType())),
            _c("size", _L, "rows assigned"),
        ),
        key=("run_id", "cluster_id"),
        partition_by=("run_id",),
        write_modes=("overwrite_partitions",),
    ),
    TableContract(
        CLUSTER_METRICS,
        owner="cluster",
        also_written_by=("evaluate",),
        description="Metric history: one row per run, method, metric, k and backend.",
        columns=(
            _c("run_id", _S),
            _c("method", _S, "embedding or a baseline"),
            _c("metric", _S),
            _c("value", _D),
            _c("k", _I),
            _c("unit", _S),
            _c("model_version", _S),
            _c("backend", _S, "cpu | gpu"),
            _c("sample_size", _L, "rows the value rests on"),
            _c("created_at", _TS),
        ),
        key=("run_id", "method", "metric", "k", "unit", "model_version", "backend"),
        partition_by=("run_id",),
        write_modes=("overwrite_partitions",),
    ),
    TableContract(
        CLUSTER_PROFILES,
        owner="evaluate",
        description="One row per segment for analysts: size, funnel rates, top values.",
        columns=(
            _c("run_id", _S),
            _c("cluster_id", _I),
            _c("size", _L),
            _c("share", _D, "size / all clustered rows"),
            _c(
                "conversion_rate",
                _D,
                "share of members (users; sessions when embed.unit is session) with a purchase",
            ),
            _c("cart_rate", _D, "share of members with an add-to-cart"),
            _c("mean_events_per_session", _D, "mean over members of their sessions' events"),
            _c("mean_session_duration_s", _D, "mean over members, seconds"),
            _c("top_categories", T.ArrayType(TOP_VALUE), "most frequent, with share and lift"),
            _c("top_brands", T.ArrayType(TOP_VALUE)),
            _c("top_items", T.ArrayType(TOP_VALUE)),
            _c("representative_ids", T.ArrayType(_S), "ids nearest the centroid"),
            _c(
                "stability_jaccard",
                _D,
                "mean best Jaccard with a segment of bootstrap refits (clusterboot): "
                "< 0.5 dissolved, >= 0.75 stable; null when not measured",
            ),
        ),
        key=("run_id", "cluster_id"),
        partition_by=("run_id",),
        write_modes=("overwrite_partitions",),
    ),
    TableContract(
        HISTORY_EMBEDDINGS,
        owner="evaluate",
        description=(
            "The backtest's vectors of rendered histories, per model version and text: a later "
            "evaluate of the same model reuses them instead of encoding the same history again."
        ),
        columns=(
            _c("model_version", _S, "as embeddings.model_version"),
            _c("content_hash", _S, "hash of the rendered history, as embeddings.content_hash"),
            _c("embedding", T.ArrayType(T.FloatType()), "L2-normalised vector"),
            _c("run_id", _S, "the evaluate run that encoded it"),
            _c("embedded_at", _TS),
        ),
        key=("model_version", "content_hash"),
        partition_by=("model_version",),
        # merge: new texts are inserted; a text already there keeps its vector.
        write_modes=("merge",),
    ),
)

#: Every table by name, in pipeline order.
TABLES: Mapping[str, TableContract] = {c.name: c for c in _CONTRACTS}


def contract_of(name: str) -> TableContract:
    """The contract of table ``name``; :class:`ContractError` names the tables that exist."""
    try:
        return TABLES[name]
    except KeyError:
        raise ContractError(
            f"unknown table {name!r}; the tables are {', '.join(TABLES)} (docs/tables.md)"
        ) from None


def tables_written_by(stage: str) -> tuple[str, ...]:
    """Tables that ``stage`` owns or also writes, in pipeline order."""
    return tuple(c.name for c in _CONTRACTS if c.owner == stage or stage in c.also_written_by)


def render_markdown(contracts: Sequence[TableContract] = _CONTRACTS) -> str:
    """``docs/tables.md``: the contract of every table, generated from this module."""
    lines = [
        "# Tables",
        "",
        "<!-- Generated by `python -m jobs.core.tables > docs/tables.md` from",
        "     jobs/core/tables.py; a test keeps this file equal to the registry. -->",
        "",
        "Every table is a Delta table under `lake.root` (`<root>/<table>`), or at the path or",
        "metastore name set in `lake.tables.<table>`. Timestamps are UTC instants. Every",
        "write is checked against the contract below before anything is written: a missing,",
        "unexpected or retyped column fails the write, naming the table and the column.",
        "Write modes: `overwrite` replaces the table, `append` adds rows,",
        "`overwrite_partitions` replaces whole partitions (`replaceWhere` on the spark engine),",
        "`merge` is a Delta `MERGE` on the key (incremental runs: only changed rows are",
        "rewritten, and `DESCRIBE HISTORY` counts the rows inserted, updated and deleted).",
        "",
        "| table | owner | key | partitioned by | write modes |",
        "|---|---|---|---|---|",
    ]
    for c in contracts:
        owners = ", ".join((c.owner, *c.also_written_by))
        lines.append(
            f"| [`{c.name}`](#{c.name}) | {owners} | {', '.join(c.key) or '-'} | "
            f"{', '.join(c.partition_by) or '-'} | {', '.join(c.write_modes)} |"
        )
    for c in contracts:
        lines += ["", f"## {c.name}", "", c.description, ""]
        lines += ["| column | type | meaning |", "|---|---|---|"]
        for col in c.columns:
            lines.append(f"| `{col.name}` | `{col.dtype.simpleString()}` | {col.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_markdown())
