"""``ingest`` stage: raw clickstream files -> Delta ``events`` (bronze) + ``events_quarantine``.

A source mapping (``ingest.source`` in config) says how each raw file's fields become the
``events`` contract, so public datasets ingest by configuration alone.  Every input record ends
in exactly one place: kept in ``events``, removed as a duplicate, or quarantined with a reason;
the stage checks ``input = kept + duplicates + quarantined`` before it reports success.

Pure transforms (no I/O): :func:`normalise`, :func:`deduplicate`, :func:`to_events`,
:func:`to_quarantine`.  Only :func:`run` / :func:`main` read files and write tables.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import AppConfig, InputSpec, LookupSpec, SourceConfig
from jobs.lake import Lake

log = logging.getLogger(__name__)

EVENT_TYPES = ("view", "add_to_cart", "remove_from_cart", "purchase", "search", "other")
REQUIRED_COLUMNS = ("user_id", "event_ts", "event_type")
OPTIONAL_COLUMNS = (
    "event_id",
    "item_id",
    "category",
    "brand",
    "price",
    "query",
    "source_session_id",
)
MAPPABLE_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
#: The normalised record: what "the same event" means for content deduplication and hashing.
CONTENT_COLUMNS = (
    "user_id",
    "event_ts",
    "event_type",
    "item_id",
    "category",
    "brand",
    "price",
    "query",
    "source_session_id",
)
#: Column order of a normalised row (before the bookkeeping columns).
NORMALISED_COLUMNS = ("event_id", *CONTENT_COLUMNS)

EVENTS_SCHEMA = T.StructType(
    [
        T.StructField("event_id", T.StringType()),
        T.StructField("user_id", T.StringType()),
        T.StructField("event_ts", T.TimestampType()),
        T.StructField("event_type", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("category", T.StringType()),
        T.StructField("brand", T.StringType()),
        T.StructField("price", T.DoubleType()),
        T.StructField("query", T.StringType()),
        T.StructField("source_session_id", T.StringType()),
        T.StructField("event_date", T.DateType()),
        T.StructField("ingest_run_id", T.StringType()),
    ]
)
QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("raw", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("source_file", T.StringType()),
        T.StructField("ingest_run_id", T.StringType()),
        T.StructField("quarantined_at", T.TimestampType()),
    ]
)

# Internal bookkeeping columns carried next to the raw fields; the double underscore keeps them
# apart from any field name a real dataset uses.
RAW = "__raw"
SOURCE_FILE = "__source_file"
CORRUPT = "__corrupt"
REASON = "__reason"


class IngestError(RuntimeError):
    """The input cannot be ingested at all (missing files, unusable mapping)."""


@dataclass(frozen=True)
class IngestCounts:
    """Where every input record went; ``reconciles`` is the stage's accounting check."""

    input_rows: int
    kept: int
    duplicates_removed: int
    quarantined: int
    quarantine_reasons: Mapping[str, int] = field(default_factory=dict)

    @property
    def reconciles(self) -> bool:
        return self.input_rows == self.kept + self.duplicates_removed + self.quarantined

    def line(self) -> str:
        verdict = "OK" if self.reconciles else "MISMATCH"
        return (
            f"reconciliation {verdict}: input {self.input_rows:,} = kept {self.kept:,} + "
            f"duplicates {self.duplicates_removed:,} + quarantined {self.quarantined:,}"
        )


# ==================================================================== reading raw files


def read_raw(spark: SparkSession, spec: InputSpec) -> DataFrame:
    """Read one input's files with every field as text, plus the raw record and its file.

    Returns the raw fields as columns next to ``__raw`` (the record as written, or a faithful
    rendering of it for Parquet), ``__source_file`` and ``__corrupt`` (set for unparseable
    records).
    """
    paths = _existing_paths(spec.paths)
    fmt = spec.format.lower()
    if fmt in ("jsonl", "json", "ndjson"):
        fields = sorted(_referenced_fields(spec.columns.values()))
        schema = T.StructType(
            [T.StructField(f, T.StringType()) for f in fields]
            + [T.StructField(CORRUPT, T.StringType())]
        )
        text = spark.read.options(**dict(spec.options)).text(paths)
        parsed = F.from_json(
            "value", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
        )
        blank = F.trim(F.col(RAW)) == ""
        return text.select(
            F.col("value").alias(RAW),
            F.col("_metadata.file_path").alias(SOURCE_FILE),
            parsed.alias("__parsed"),
        ).select(
            RAW,
            SOURCE_FILE,
            *[F.col(f"__parsed.`{f}`").alias(f) for f in fields],
            # A blank line parses to an all-null record, not a corrupt one; call it what it is.
            F.when(blank, F.lit("")).otherwise(F.col(f"__parsed.{CORRUPT}")).alias(CORRUPT),
        )
    if fmt == "csv":
        options = {"header": "true", **dict(spec.options)}
        header = spark.read.options(**options).csv(paths).columns
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
        rendered = F.to_csv(F.struct(*[F.col(f"`{c}`") for c in header]), {"sep": sep})
        return df.select(
            F.coalesce(F.col(CORRUPT), rendered).alias(RAW),
            F.col("_metadata.file_path").alias(SOURCE_FILE),
            *[F.col(f"`{c}`") for c in header],
            F.col(CORRUPT),
        )
    if fmt == "parquet":
        df = spark.read.options(**dict(spec.options)).parquet(*paths)
        fields = df.columns
        return df.select(
            F.to_json(F.struct(*[F.col(f"`{c}`") for c in fields])).alias(RAW),
            F.col("_metadata.file_path").alias(SOURCE_FILE),
            *[F.col(f"`{c}`") for c in fields],
            F.lit(None).cast("string").alias(CORRUPT),
        )
    raise IngestError(f"unsupported input format {spec.format!r}; use jsonl, csv or parquet")


def read_lookup(spark: SparkSession, spec: LookupSpec) -> DataFrame:
    """Read a side file (e.g. item -> category) with every field as text."""
    paths = _existing_paths((spec.path,))
    fmt = spec.format.lower()
    if fmt == "csv":
        return spark.read.options(**{"header": "true", **dict(spec.options)}).csv(paths)
    if fmt == "parquet":
        return spark.read.options(**dict(spec.options)).parquet(*paths)
    if fmt in ("jsonl", "json", "ndjson"):
        return spark.read.options(**dict(spec.options)).json(paths)
    raise IngestError(f"unsupported lookup format {spec.format!r}")


def _existing_paths(paths: Sequence[str]) -> list[str]:
    """Fail early, naming the path, when a local input does not exist."""
    if not paths:
        raise IngestError("ingest input has no paths configured")
    for path in paths:
        if "://" in path or any(ch in path for ch in "*?["):
            continue
        if not Path(path).exists():
            raise IngestError(f"input path does not exist: {path}")
    return list(paths)


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_IDENTIFIER = re.compile(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)")


def _referenced_fields(expressions: Iterable[str]) -> set[str]:
    """Names an expression may read from a JSON record (over-approximated, which is harmless:
    a name that is really a function or keyword just becomes an unused all-null field)."""
    names: set[str] = set()
    for expression in expressions:
        stripped = _QUOTED.sub("''", expression)
        for quoted, bare in _IDENTIFIER.findall(stripped):
            names.add(quoted or bare)
    return names


# ==================================================================== pure transforms


def normalise(raw: DataFrame, *, spec: InputSpec, source: SourceConfig) -> DataFrame:
    """Map raw fields onto the ``events`` columns and attach a quarantine reason (or null).

    One output row per input row; reasons are checked in a fixed order and the first failing
    check names the row's problem.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in spec.columns]
    if missing:
        raise IngestError(
            f"source {source.name!r}: input {list(spec.paths)} maps no column for {missing}"
        )
    unknown = sorted(set(spec.columns) - set(MAPPABLE_COLUMNS))
    if unknown:
        raise IngestError(
            f"source {source.name!r}: cannot map {unknown}; mappable columns: {MAPPABLE_COLUMNS}"
        )
    null_values = [v.strip() for v in source.null_values]

    def text(expression: str) -> Column:
        value = F.trim(F.expr(expression).cast("string"))
        return F.when(value.isin(null_values), None).otherwise(value)

    mapped = {
        c: (text(spec.columns[c]) if c in spec.columns else F.lit(None).cast("string"))
        for c in MAPPABLE_COLUMNS
        if c not in ("event_ts", "price")
    }
    ts_type = raw.select(F.expr(spec.columns["event_ts"]).alias("t")).schema["t"].dataType
    ts_raw = F.expr(spec.columns["event_ts"])
    ts_text = text(spec.columns["event_ts"])
    event_ts = _parse_timestamp(ts_raw, ts_text, ts_type, source)
    price_text = text(spec.columns["price"]) if "price" in spec.columns else F.lit(None)
    price = price_text.try_cast("double")

    type_key = F.lower(mapped["event_type"])
    type_map = F.create_map(
        *[item for k, v in source.event_type_map.items() for item in (F.lit(k.lower()), F.lit(v))]
    )
    mapped_type = type_map[type_key]
    if source.unknown_event_type == "other":
        mapped_type = F.coalesce(mapped_type, F.when(type_key.isNotNull(), F.lit("other")))
    elif source.unknown_event_type != "quarantine":
        raise IngestError("ingest.source.unknown_event_type must be 'quarantine' or 'other'")
    bad_targets = sorted(set(source.event_type_map.values()) - set(EVENT_TYPES))
    if bad_targets:
        raise IngestError(f"event_type_map targets {bad_targets} are not among {EVENT_TYPES}")

    low = F.lit(source.min_event_ts).cast("timestamp")
    high = F.lit(source.max_event_ts).cast("timestamp")
    # Two projections: first every value once, then checks on the named results, so each
    # expression (some are costly, e.g. timestamp parsing) is written and evaluated once.
    staged = raw.select(
        F.col(RAW),
        F.col(SOURCE_FILE),
        F.col(CORRUPT),
        *[mapped[c].alias(c) for c in ("event_id", "user_id")],
        event_ts.alias("event_ts"),
        ts_text.alias("__ts_text"),
        mapped["event_type"].alias("__type_text"),
        mapped_type.alias("event_type"),
        *[mapped[c].alias(c) for c in ("item_id", "category", "brand")],
        price.alias("price"),
        price_text.alias("__price_text"),
        *[mapped[c].alias(c) for c in ("query", "source_session_id")],
    )
    col = F.col
    reason = (
        F.when(col(CORRUPT) == "", F.lit("empty record"))
        .when(col(CORRUPT).isNotNull(), F.lit(f"malformed {spec.format} record"))
        .when(col("user_id").isNull(), F.lit("missing user_id"))
        .when(col("__ts_text").isNull(), F.lit("missing event_ts"))
        .when(
            col("event_ts").isNull(),
            F.concat(F.lit("unparseable event_ts: "), F.substring("__ts_text", 1, 40)),
        )
        .when((col("event_ts") < low) | (col("event_ts") >= high), F.lit("event_ts out of range"))
        .when(col("__type_text").isNull(), F.lit("missing event_type"))
        .when(
            col("event_type").isNull(),
            F.concat(F.lit("unknown event_type: "), F.substring("__type_text", 1, 40)),
        )
        .when(col("__price_text").isNotNull() & col("price").isNull(), F.lit("invalid price"))
        .when(F.isnan("price") | (F.abs("price") == float("inf")), F.lit("invalid price"))
        .when(col("price") < 0, F.lit("negative price"))
    )
    checked = staged.select(RAW, SOURCE_FILE, *NORMALISED_COLUMNS, reason.alias(REASON))
    # Only quarantined rows keep their raw record: valid rows then carry no copy of it through
    # the cache and the shuffles, and Parquet rows are rendered as JSON only when rejected.
    return checked.withColumn(RAW, F.when(F.col(REASON).isNotNull(), F.col(RAW)))


def _parse_timestamp(raw: Column, text: Column, dtype: T.DataType, source: SourceConfig) -> Column:
    """Turn a raw timestamp (text, epoch number or native timestamp) into a UTC timestamp."""
    unit = source.timestamp_unit
    if unit not in ("s", "ms", "us"):
        raise IngestError("ingest.source.timestamp_unit must be s, ms or us")

    def from_epoch(number: Column) -> Column:
        if unit == "s":
            return F.timestamp_seconds(number.try_cast("double"))
        # Through double, so exponent notation (1.7092872E12) parses too.
        whole = number.try_cast("double").cast("bigint")
        return F.timestamp_millis(whole) if unit == "ms" else F.timestamp_micros(whole)

    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        parsed = raw.cast("timestamp")
    elif isinstance(dtype, T.NumericType):
        parsed = from_epoch(raw)
    elif source.timestamp_format:
        parsed = F.try_to_timestamp(text, F.lit(source.timestamp_format))
    else:
        parsed = F.when(text.rlike(_EPOCH), from_epoch(text)).otherwise(F.try_to_timestamp(text))
    local_zone = source.timezone.upper() not in ("UTC", "Z", "ETC/UTC")
    if local_zone and not isinstance(dtype, (T.TimestampType, T.NumericType)):
        # The zone applies only to wall-clock text: epochs and text with an offset are absolute.
        absolute = text.rlike(_EPOCH) | text.rlike(r"([Zz]|[+-]\d{2}:?\d{2})$")
        if source.timestamp_format:
            absolute = F.lit(False)
        parsed = F.when(absolute, parsed).otherwise(F.to_utc_timestamp(parsed, source.timezone))
    return parsed


_EPOCH = r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$"


def apply_lookups(
    normalised: DataFrame, lookups: Sequence[tuple[LookupSpec, DataFrame]]
) -> DataFrame:
    """Fill still-empty events columns from side files (left join, one match per key)."""
    result = normalised
    for index, (spec, table) in enumerate(lookups):
        if not spec.join_on or not spec.columns:
            raise IngestError(f"lookup {spec.path}: join_on and columns are both required")
        prefix = f"__lk{index}_"
        keys = list(spec.join_on.items())
        side = table.select(
            *[F.trim(F.col(f"`{src}`")).alias(prefix + tgt) for tgt, src in keys],
            *[
                F.col(f"`{src}`").cast("string").alias(prefix + tgt)
                for tgt, src in spec.columns.items()
            ],
        )
        # One match per key keeps the join 1:1; the smallest value wins, so reruns agree.
        key_cols = [prefix + tgt for tgt, _ in keys]
        side = side.groupBy(*key_cols).agg(
            *[F.min(prefix + tgt).alias(prefix + tgt) for tgt in spec.columns]
        )
        condition = reduce(
            lambda a, b: a & b, [result[tgt] == side[prefix + tgt] for tgt, _ in keys]
        )
        joined = result.join(side, condition, "left")
        result = joined.select(
            *[
                F.coalesce(F.col(c), F.col(prefix + c)).alias(c) if c in spec.columns else F.col(c)
                for c in result.columns
            ]
        )
    return result


def content_hash(*columns: str) -> Column:
    """A deterministic 128-bit hex digest of the given columns (nulls distinct from '')."""
    parts = [F.coalesce(F.col(c).cast("string"), F.lit("\u0000")) for c in columns]
    return F.substring(F.sha2(F.concat_ws("\u001f", *parts), 256), 1, 32)


def deduplicate(valid: DataFrame) -> DataFrame:
    """Remove duplicate events deterministically.

    First by ``event_id`` (a missing source id becomes the hash of the normalised record),
    keeping the smallest record; then records whose normalised content is identical under
    different ids, keeping the smallest id.  Output: one row per event, the ``events`` columns
    without the run columns.
    """
    with_id = valid.withColumn(
        "event_id", F.coalesce(F.col("event_id"), content_hash(*CONTENT_COLUMNS))
    )
    by_id = (
        with_id.groupBy("event_id")
        .agg(F.min(F.struct(*CONTENT_COLUMNS)).alias("r"))
        .select("event_id", *[F.col(f"r.{c}").alias(c) for c in CONTENT_COLUMNS])
    )
    return by_id.groupBy(*CONTENT_COLUMNS).agg(F.min("event_id").alias("event_id"))


def to_events(deduplicated: DataFrame, *, run_id: str) -> DataFrame:
    """Shape deduplicated rows into the ``events`` contract (UTC ``event_date`` partition)."""
    return deduplicated.select(
        *[
            F.col(f.name)
            for f in EVENTS_SCHEMA.fields
            if f.name not in ("event_date", "ingest_run_id")
        ],
        F.to_date("event_ts").alias("event_date"),
        F.lit(run_id).alias("ingest_run_id"),
    )


def to_quarantine(normalised: DataFrame, *, run_id: str) -> DataFrame:
    """Rows that failed a check, in the ``events_quarantine`` contract."""
    return normalised.where(F.col(REASON).isNotNull()).select(
        F.col(RAW).alias("raw"),
        F.col(REASON).alias("reason"),
        F.col(SOURCE_FILE).alias("source_file"),
        F.lit(run_id).alias("ingest_run_id"),
        F.current_timestamp().alias("quarantined_at"),
    )


def valid_rows(normalised: DataFrame) -> DataFrame:
    """Rows that passed every check."""
    return normalised.where(F.col(REASON).isNull())


# ==================================================================== the job


def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> IngestCounts:
    """Read the configured inputs and write ``events`` and ``events_quarantine``.

    Both tables are replaced as a whole (a full refresh over the configured inputs), so a rerun
    over the same input leaves identical tables.
    """
    source = config.ingest.source
    if not source.inputs:
        raise IngestError(f"source {source.name!r} configures no inputs")
    lookups = [(spec, read_lookup(spark, spec)) for spec in source.lookups]
    parts = [normalise(read_raw(spark, spec), spec=spec, source=source) for spec in source.inputs]
    normalised = reduce(DataFrame.unionByName, parts)
    if lookups:
        normalised = apply_lookups(normalised, lookups)
    normalised = normalised.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        by_reason = {
            row[REASON]: int(row["count"]) for row in normalised.groupBy(REASON).count().collect()
        }
        input_rows = sum(by_reason.values())
        valid = by_reason.pop(None, 0)
        quarantine = lake.overwrite("events_quarantine", to_quarantine(normalised, run_id=run_id))
        events = lake.overwrite(
            "events",
            valid_rows(normalised).transform(deduplicate).transform(to_events, run_id=run_id),
        )
    finally:
        normalised.unpersist()
    counts = IngestCounts(
        input_rows=input_rows,
        kept=events.rows_written,
        duplicates_removed=valid - events.rows_written,
        quarantined=quarantine.rows_written,
        quarantine_reasons=dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
    )
    for reason, n in counts.quarantine_reasons.items():
        log.info("quarantined %d rows: %s", n, reason)
    log.info(counts.line())
    if not counts.reconciles or counts.quarantined != sum(counts.quarantine_reasons.values()):
        raise IngestError(f"row accounting failed: {counts.line()}")
    return counts


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/ingest.py --conf conf/local.yaml``."""
    from jobs.cli import run_stage

    return run_stage("ingest", argv)


if __name__ == "__main__":
    sys.exit(main())
