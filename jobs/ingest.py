"""``ingest`` stage: raw clickstream files -> Delta ``events`` (bronze) + ``events_quarantine``.

A source mapping (``ingest.source`` in config) says how each raw file's fields become the
``events`` contract, so public datasets ingest by configuration alone.  Every input record ends
in exactly one place: kept in ``events``, removed as a duplicate, or quarantined with a reason;
the stage checks ``input = kept + duplicates + quarantined`` before it reports success.

Pure transforms (no I/O): :func:`normalise`, :func:`deduplicate`, :func:`to_events`,
:func:`to_quarantine`.  Only :func:`run` / :func:`main` read files and write tables.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import reduce
from pathlib import Path
from typing import ParamSpec, TypeVar

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import AppConfig, InputSpec, LookupSpec, PrivacyConfig, SourceConfig
from jobs.lake import Lake, WriteResult
from jobs.privacy import Pseudonymizer

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
RECORD_BYTES = "__record_bytes"
BAD_UTF8 = "__bad_utf8"
#: Characters of an oversize record kept in quarantine.
OVERSIZE_PREVIEW_CHARS = 1000


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


_FAILED_READ = re.compile(r"Encountered error while reading file (\S+?)\.?(?=\s|$)", re.M)
_CAUSE = re.compile(r"^Caused by: ([\w.$]+)(?:: (.*?))?(?=\n\s+at |\n\s+\.\.\. |\Z)", re.M | re.S)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def unreadable_file_error(exc: BaseException) -> IngestError | None:
    """An :class:`IngestError` naming the raw file that Spark failed to read (a cut-off gzip, a
    CSV file whose header differs from the others), or None when ``exc`` is something else.

    Such failures reach Python as a Py4J error whose first line names only the Spark call; the
    file and the cause are inside the Java message.
    """
    text = str(exc)
    match = _FAILED_READ.search(text)
    if match is None:
        return None
    detail = ""
    causes = _CAUSE.findall(text)
    if causes:
        name, message = causes[-1]
        detail = f": {name.rsplit('.', 1)[-1]}: {' '.join(message.split())}"[:400]
    return IngestError(
        f"cannot read input file {match.group(1)}{detail} (a truncated or corrupt file? "
        "replace or remove it and rerun)"
    )


def names_unreadable_files(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator: a raw file Spark cannot read fails the stage with an :class:`IngestError`
    naming it, not a Java stack trace.  Corrupt files are deliberately not skipped
    (``ignoreCorruptFiles`` would drop their rows without a trace)."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return function(*args, **kwargs)
        except IngestError:
            raise
        except Exception as exc:
            error = unreadable_file_error(exc)
            if error is None:
                raise
            raise error from exc

    return wrapper


def _reading(action: Callable[[], _R]) -> _R:
    """Run a Spark action over raw files, naming the file when one cannot be read."""
    return names_unreadable_files(action)()


def read_raw(spark: SparkSession, spec: InputSpec, *, allow_empty: bool = False) -> DataFrame:
    """Read one input's files with every field as text, plus the raw record and its file.

    Returns the raw fields as columns next to ``__raw`` (the record as written, or a faithful
    rendering of it for Parquet), ``__source_file``, ``__corrupt`` (set for unparseable
    records), ``__record_bytes`` (size of a JSON line or CSV row; null for Parquet) and
    ``__bad_utf8`` (the record is not valid UTF-8).

    An input that holds no record at all fails with :class:`IngestError` unless
    ``allow_empty``: a full refresh would otherwise replace ``events`` with an empty table.
    Empty files next to non-empty ones simply contribute no rows.
    """
    paths = _existing_paths(spec.paths)
    fmt = spec.format.lower()
    if fmt in ("jsonl", "json", "ndjson"):
        raw = _read_jsonl(spark, spec, paths)
    elif fmt == "csv":
        raw = _read_csv(spark, spec, paths)
    elif fmt == "parquet":
        df = spark.read.options(**dict(spec.options)).parquet(*paths)
        fields = df.columns
        raw = df.select(
            F.to_json(F.struct(*[F.col(f"`{c}`") for c in fields])).alias(RAW),
            F.col("_metadata.file_path").alias(SOURCE_FILE),
            *[F.col(f"`{c}`") for c in fields],
            F.lit(None).cast("string").alias(CORRUPT),
            F.lit(None).cast("long").alias(RECORD_BYTES),
            F.lit(False).alias(BAD_UTF8),
        )
    else:
        raise IngestError(f"unsupported input format {spec.format!r}; use jsonl, csv or parquet")
    if not allow_empty and _reading(raw.isEmpty):
        raise IngestError(f"input {list(paths)} holds no records (empty files?)")
    return raw


def _read_jsonl(spark: SparkSession, spec: InputSpec, paths: list[str]) -> DataFrame:
    fields = sorted(_referenced_fields(spec.columns.values()))
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
    header = _reading(lambda: spark.read.options(**options).csv(paths).columns)
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


_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def _existing_paths(paths: Sequence[str]) -> list[str]:
    """Fail early, naming the path, when a local input does not exist."""
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


def normalise(
    raw: DataFrame,
    *,
    spec: InputSpec,
    source: SourceConfig,
    privacy: PrivacyConfig | None = None,
) -> DataFrame:
    """Map raw fields onto the ``events`` columns and attach a quarantine reason (or null).

    One output row per input row; reasons are checked in a fixed order and the first failing
    check names the row's problem.  With ``privacy.pseudonymize_user_id`` on, ``user_id`` (and
    the user id inside quarantined raw records) is replaced by its HMAC; a missing key fails
    here, before any row is read.
    """
    pseudonymizer = Pseudonymizer.from_config(privacy, raw.sparkSession)
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
    max_bytes = source.max_record_bytes
    # Readers other than read_raw's may not report record size or encoding problems.
    record_bytes = F.col(RECORD_BYTES) if RECORD_BYTES in raw.columns else F.lit(None)
    bad_utf8 = F.col(BAD_UTF8) if BAD_UTF8 in raw.columns else F.lit(False)
    # Two projections: first every value once, then checks on the named results, so each
    # expression (some are costly, e.g. timestamp parsing) is written and evaluated once.
    staged = raw.select(
        F.col(RAW),
        F.col(SOURCE_FILE),
        F.col(CORRUPT),
        record_bytes.cast("long").alias(RECORD_BYTES),
        bad_utf8.alias(BAD_UTF8),
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
    oversize = col(RECORD_BYTES) > max_bytes
    user = col("user_id")
    container = (user.startswith("{") & user.endswith("}")) | (
        user.startswith("[") & user.endswith("]")
    )
    reason = (
        F.when(oversize, F.lit(f"oversize record (> {max_bytes} bytes)"))
        .when(col(BAD_UTF8), F.lit("invalid utf-8"))
        .when(col(CORRUPT) == "", F.lit("empty record"))
        .when(col(CORRUPT).isNotNull(), F.lit(f"malformed {spec.format} record"))
        .when(col("user_id").isNull(), F.lit("missing user_id"))
        # A JSON object or array where the id should be: the parser hands it over as its text.
        .when(container, F.lit("invalid user_id: object or array"))
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
    checked = staged.select(
        RAW, SOURCE_FILE, CORRUPT, RECORD_BYTES, *NORMALISED_COLUMNS, reason.alias(REASON)
    )
    # Only quarantined rows keep their raw record: valid rows then carry no copy of it through
    # the cache and the shuffles, and Parquet rows are rendered as JSON only when rejected.  An
    # oversize record is kept as a preview, not megabytes of text.
    preview = F.concat(
        F.substring(RAW, 1, OVERSIZE_PREVIEW_CHARS),
        F.lit(" … [truncated: "),
        col(RECORD_BYTES).cast("string"),
        F.lit(" bytes]"),
    )
    kept_raw = F.when(col(REASON).isNull(), None).when(oversize, preview).otherwise(col(RAW))
    checked = checked.withColumn(RAW, kept_raw).drop(RECORD_BYTES)
    if pseudonymizer is not None:
        checked = _pseudonymize(checked, pseudonymizer)
    return checked.drop(CORRUPT)


def _pseudonymize(checked: DataFrame, pseudonymizer: Pseudonymizer) -> DataFrame:
    """Replace ``user_id`` by its HMAC, and the raw id inside quarantined records too.

    A quarantined record keeps its text, with each occurrence of the id as a whole token
    replaced by the HMAC, only when the id can be located: the record parsed and its user id
    appears in it verbatim, and nowhere else afterwards.  Otherwise (unparseable records, ids
    absent or derived by an expression or escaped in the raw text) the record is redacted to
    ``<redacted: N characters, hmac-sha256 H>``, because its raw id could be anywhere in it.
    """
    keyed = pseudonymizer.with_key(checked)
    user, raw = F.col("user_id"), F.col(RAW)
    hashed = pseudonymizer.hmac(user)
    word = r"[\p{L}\p{N}_.-]"
    token = F.concat(F.lit(rf"(?<!{word})\Q"), user, F.lit(rf"\E(?!{word})"))
    replaced = F.regexp_replace(raw, token, hashed)
    located = (
        F.col(CORRUPT).isNull() & user.isNotNull() & raw.contains(user) & ~user.contains(r"\E")
    )
    redacted = F.format_string(
        "<redacted: %d characters, hmac-sha256 %s>", F.length(raw), pseudonymizer.hmac(raw)
    )
    safe_raw = F.when(located & ~replaced.contains(user), replaced).otherwise(redacted)
    return Pseudonymizer.drop_key(
        keyed.select(
            F.when(raw.isNotNull(), safe_raw).alias(RAW),
            SOURCE_FILE,
            CORRUPT,
            *[hashed.alias(c) if c == "user_id" else F.col(c) for c in NORMALISED_COLUMNS],
            REASON,
        )
    )


def _parse_timestamp(raw: Column, text: Column, dtype: T.DataType, source: SourceConfig) -> Column:
    """Turn a raw timestamp (text, epoch number or native timestamp) into a UTC timestamp."""
    unit = source.timestamp_unit
    if unit not in ("s", "ms", "us"):
        raise IngestError("ingest.source.timestamp_unit must be s, ms or us")

    def from_epoch(number: Column) -> Column:
        value = number.try_cast("double")
        if unit == "s":
            converted = F.timestamp_seconds(value)
        else:
            # Through double, so exponent notation (1.7092872E12) parses too.
            whole = value.cast("bigint")
            converted = F.timestamp_millis(whole) if unit == "ms" else F.timestamp_micros(whole)
        # Beyond about year 33,000 the conversion overflows, an error under ANSI mode; such an
        # epoch is garbage, so it becomes a time the range check rejects.
        return (
            F.when(F.isnan(value), None)
            .when(F.abs(value) < _EPOCH_LIMIT[unit], converted)
            .when(value > 0, F.to_timestamp(F.lit("9999-12-31T00:00:00Z")))
            .otherwise(F.to_timestamp(F.lit("0001-01-01T00:00:00Z")))
        )

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
#: Epoch magnitudes (about year 33,658) below which conversion to a timestamp cannot overflow.
_EPOCH_LIMIT = {"s": 1e12, "ms": 1e15, "us": 1e18}


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


INGEST_MODES = ("full", "incremental")


@dataclass(frozen=True)
class InputFile:
    """One raw file as the file system lists it; (path, size, modified) identifies a version."""

    spec_index: int
    path: str
    size: int
    modified: datetime


def list_input_files(spark: SparkSession, inputs: Sequence[InputSpec]) -> list[InputFile]:
    """Every file the configured inputs cover, with size and modification time.

    Listed through Spark's ``binaryFile`` source (only metadata columns are selected, so no file
    content is read) so that the paths are spelled exactly as ``_metadata.file_path`` spells them
    when the files are read, on any file system Spark can read.  Empty files hold no records and
    Spark lists none of them.
    """
    listed: list[InputFile] = []
    for index, spec in enumerate(inputs):
        paths = _existing_paths(spec.paths)
        rows = (
            spark.read.format("binaryFile")
            .load(paths)
            .select("path", "length", "modificationTime")
            .collect()
        )
        listed.extend(
            InputFile(index, r["path"], int(r["length"]), r["modificationTime"]) for r in rows
        )
    return sorted(listed, key=lambda f: (f.spec_index, f.path))


def drop_already_ingested(batch: DataFrame, *, existing: DataFrame) -> DataFrame:
    """Remove rows of a deduplicated batch that ``existing`` events already hold: the same
    ``event_id``, or the same normalised content under another id (incremental ingest).

    Pass as ``existing`` the event_date partitions the batch touches: identical content means an
    identical ``event_ts``, hence the same partition, so the content check needs no others.
    """
    by_id = batch.join(existing.select("event_id"), "event_id", "left_anti")
    hashed = existing.select(content_hash(*CONTENT_COLUMNS).alias("__content"))
    return (
        by_id.withColumn("__content", content_hash(*CONTENT_COLUMNS))
        .join(hashed, "__content", "left_anti")
        .drop("__content")
    )


def to_ingest_log(
    spark: SparkSession,
    files: Sequence[InputFile],
    rows_per_file: Mapping[str, tuple[int, int]],
    *,
    run_id: str,
    mode: str,
) -> DataFrame:
    """``ingest_log`` rows: one per raw file read by this run, with its record counts."""
    schema = T.StructType(
        [
            T.StructField("ingest_run_id", T.StringType()),
            T.StructField("mode", T.StringType()),
            T.StructField("source_file", T.StringType()),
            T.StructField("file_size", T.LongType()),
            T.StructField("file_modified", T.TimestampType()),
            T.StructField("input_rows", T.LongType()),
            T.StructField("quarantined_rows", T.LongType()),
        ]
    )
    rows = [
        (run_id, mode, f.path, f.size, f.modified, *rows_per_file.get(f.path, (0, 0)))
        for f in files
    ]
    return spark.createDataFrame(rows, schema).withColumn("ingested_at", F.current_timestamp())


@names_unreadable_files
def run(spark: SparkSession, lake: Lake, config: AppConfig, *, run_id: str) -> IngestCounts:
    """Read the configured inputs and write ``events``, ``events_quarantine`` and ``ingest_log``.

    ``ingest.mode=full`` replaces ``events`` and ``events_quarantine`` as a whole from every
    configured file, so a rerun over the same input leaves identical tables.

    ``ingest.mode=incremental`` reads only files that ``ingest_log`` does not list with the same
    size and modification time, appends the events not already in ``events`` (same id or same
    content) and their quarantined records.  ``ingest_log`` is written last: a run killed before
    it leaves the files unlisted, so the next run reads them again; their events are then found
    in ``events`` and counted as duplicates, and their quarantine rows are replaced, not repeated.
    """
    source = config.ingest.source
    mode = config.ingest.mode
    if mode not in INGEST_MODES:
        raise IngestError(f"ingest.mode must be one of {INGEST_MODES}, got {mode!r}")
    if not source.inputs:
        raise IngestError(f"source {source.name!r} configures no inputs")
    files = list_input_files(spark, source.inputs)
    incremental = mode == "incremental" and lake.exists("ingest_log")
    if incremental:
        seen = {
            (r["source_file"], int(r["file_size"]), r["file_modified"])
            for r in lake.read("ingest_log")
            .select("source_file", "file_size", "file_modified")
            .collect()
        }
        files = [f for f in files if (f.path, f.size, f.modified) not in seen]
        log.info("incremental ingest: %d new or changed files", len(files))
        if not files:
            counts = IngestCounts(input_rows=0, kept=0, duplicates_removed=0, quarantined=0)
            log.info("no new input files; %s", counts.line())
            return counts
    lookups = [(spec, read_lookup(spark, spec)) for spec in source.lookups]
    parts = []
    for index, spec in enumerate(source.inputs):
        chosen = tuple(f.path for f in files if f.spec_index == index)
        if incremental and not chosen:
            continue
        read_spec = dataclasses.replace(spec, paths=chosen) if incremental else spec
        # privacy: pseudonymises user_id when privacy.pseudonymize_user_id is on.
        raw = read_raw(spark, read_spec, allow_empty=incremental)
        parts.append(normalise(raw, spec=spec, source=source, privacy=config.privacy))
    normalised = reduce(DataFrame.unionByName, parts)
    if lookups:
        normalised = apply_lookups(normalised, lookups)
    normalised = normalised.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        tally = normalised.groupBy(SOURCE_FILE, REASON).count().collect()
        by_reason: dict[str | None, int] = {}
        by_file: dict[str, tuple[int, int]] = {}
        for row in tally:
            n, reason, path = int(row["count"]), row[REASON], row[SOURCE_FILE]
            by_reason[reason] = by_reason.get(reason, 0) + n
            total, bad = by_file.get(path, (0, 0))
            by_file[path] = (total + n, bad + (n if reason is not None else 0))
        input_rows = sum(by_reason.values())
        valid = by_reason.get(None, 0)
        reasons = {k: v for k, v in by_reason.items() if k is not None}
        quarantined_rows = to_quarantine(normalised, run_id=run_id)
        batch = valid_rows(normalised).transform(deduplicate)
        if incremental:
            quarantine = _append_quarantine(lake, quarantined_rows, [f.path for f in files])
            if lake.exists("events"):
                dates = [
                    r["d"]
                    for r in batch.select(F.to_date("event_ts").alias("d")).distinct().collect()
                ]
                existing = lake.read("events").where(F.col("event_date").isin(dates))
                batch = batch.transform(drop_already_ingested, existing=existing)
            events = lake.append("events", batch.transform(to_events, run_id=run_id))
        else:
            quarantine = lake.overwrite("events_quarantine", quarantined_rows)
            events = lake.overwrite("events", batch.transform(to_events, run_id=run_id))
    finally:
        normalised.unpersist()
    counts = IngestCounts(
        input_rows=input_rows,
        kept=events.rows_written,
        duplicates_removed=valid - events.rows_written,
        quarantined=quarantine.rows_written,
        quarantine_reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
    )
    for reason, n in counts.quarantine_reasons.items():
        log.info("quarantined %d rows: %s", n, reason)
    log.info(counts.line())
    if not counts.reconciles or counts.quarantined != sum(counts.quarantine_reasons.values()):
        raise IngestError(f"row accounting failed: {counts.line()}")
    # Last, so that a run killed before this point is redone by the next incremental run.
    ingest_log = to_ingest_log(spark, files, by_file, run_id=run_id, mode=mode)
    if incremental:
        lake.append("ingest_log", ingest_log)
    else:
        lake.overwrite("ingest_log", ingest_log)
    return counts


def _append_quarantine(lake: Lake, rows: DataFrame, files: Sequence[str]) -> WriteResult:
    """Append quarantined rows; rows an earlier, interrupted run left for the same files are
    replaced in the same commit so that a retry never repeats them."""
    if lake.exists("events_quarantine"):
        current = lake.read("events_quarantine")
        stale = current.where(F.col("source_file").isin(list(files)))
        if stale.limit(1).count():
            log.info("replacing quarantine rows an interrupted run left for these files")
            kept = current.where(~F.col("source_file").isin(list(files)))
            result = lake.overwrite("events_quarantine", kept.unionByName(rows))
            new_rows = result.rows_written - kept.count()
            return dataclasses.replace(result, rows_written=new_rows)
    return lake.append("events_quarantine", rows)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``spark-submit jobs/ingest.py --conf conf/local.yaml``."""
    from jobs.cli import run_stage

    return run_stage("ingest", argv)


if __name__ == "__main__":
    sys.exit(main())
