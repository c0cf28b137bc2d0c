"""The source mapping: raw fields -> ``events`` columns, each row with its quarantine reason.

Reasons are checked in a fixed order and the first failing check names a row's problem; the
README ("Bad input") lists them, and ``conf/base.yaml`` documents the mapping settings.  Pure
transforms: no file or table is read or written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import InputSpec, LookupSpec, PrivacyConfig, SourceConfig
from jobs.core.privacy import Pseudonymizer
from jobs.sources.columns import (
    AMBIGUOUS_TIME,
    BAD_UTF8,
    CORRUPT,
    DUPLICATE_KEY,
    ELEMENT,
    EXPLODE_REASON,
    MAPPABLE_COLUMNS,
    NORMALISED_COLUMNS,
    ORDER_VALUE,
    POSITION,
    RAW,
    REASON,
    RECORD_BYTES,
    REQUIRED_COLUMNS,
    SOURCE_FILE,
    SPLIT_START,
)
from jobs.sources.errors import IngestError
from jobs.sources.nested import explode_records
from jobs.sources.timestamps import nonexistent_reason, parse_timestamp

#: Characters of an oversize record kept in quarantine.
OVERSIZE_PREVIEW_CHARS = 1000
#: The record's place in its file, carried through unchanged (:mod:`.columns`).
LINEAGE_COLUMNS = (POSITION, SPLIT_START, ELEMENT, ORDER_VALUE)


def record_hash(raw: Column) -> Column:
    """The ``event_id`` of a record whose source gives none: the first 32 lowercase hex
    characters (128 bits) of the SHA-256 of the raw record as stored (user ids already
    replaced when pseudonymised).  Identical records share it; records that differ in any
    field do not."""
    return F.substring(F.sha2(raw, 256), 1, 32)


#: Price text that is a number: digits with an optional fraction and exponent.
_DECIMAL = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"


def _check_evaluates(
    raw: DataFrame, expression: str, setting: str, spec: InputSpec, source: SourceConfig
) -> T.DataType:
    """The type of the Spark SQL ``expression`` over the input's fields, or
    :class:`IngestError` naming ``setting`` when it cannot be evaluated there (a field the files
    do not have, a typo in a function), before any row is read.  The schema is asked for, so
    that Spark Connect, which analyses lazily, checks it here too."""
    try:
        return raw.select(F.expr(expression).alias("v")).schema["v"].dataType
    except AnalysisException as exc:  # also a ParseException
        raise IngestError(
            f"source {source.name!r}: {setting} {expression!r} cannot be evaluated over input "
            f"{list(spec.paths)} (fields: {_fields(raw)}): {str(exc).splitlines()[0][:200]}"
        ) from None


def normalise(
    raw: DataFrame,
    *,
    spec: InputSpec,
    source: SourceConfig,
    privacy: PrivacyConfig | None = None,
    keep_raw: bool = False,
) -> DataFrame:
    """Map raw fields onto the ``events`` columns and attach a quarantine reason (or null).

    ``raw`` is a :func:`jobs.sources.readers.read_raw` result (other readers may lack
    ``__record_bytes`` / ``__bad_utf8`` / ``__duplicate_key``).  Returns one row per event (per
    input row, or per array element with ``spec.explode``:
    :func:`jobs.sources.nested.explode_records`):
    ``__raw`` (kept for quarantined rows only unless ``keep_raw``; an oversize record as a
    preview of :data:`OVERSIZE_PREVIEW_CHARS` characters), ``__source_file``, the record's
    place in its file (:data:`LINEAGE_COLUMNS`: ``__order_value`` is ``source.order_by`` as a
    long, null when unset), the normalised columns (``event_id`` and the content columns;
    ``event_ts`` a UTC timestamp, ``price`` a double) and ``__reason``.  A valid record
    without a source event id gets :func:`record_hash` of its raw record.  With
    ``privacy.pseudonymize_user_id`` on, ``user_id`` (and the user id inside raw records) is
    replaced by its HMAC.

    Raises :class:`IngestError` when ``spec`` maps no column for a required one or maps an
    unknown column, and :class:`jobs.core.privacy.PrivacyError` when pseudonymisation has no
    usable key; both before any row is read (also when ``spec.explode`` is set on an input
    that is not JSON lines).
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
    # One row per event: an input with ``explode`` yields one per array element (.nested).
    raw = explode_records(raw, spec, max_record_bytes=source.max_record_bytes)
    types = {
        column: _check_evaluates(
            raw, expr, f"ingest.source.inputs[].columns.{column}", spec, source
        )
        for column, expr in spec.columns.items()
    }
    null_values = [v.strip() for v in source.null_values]

    def text(expression: str) -> Column:
        value = F.trim(F.expr(expression).cast("string"))
        return F.when(value.isin(null_values), None).otherwise(value)

    mapped = {
        c: (text(spec.columns[c]) if c in spec.columns else F.lit(None).cast("string"))
        for c in MAPPABLE_COLUMNS
        if c not in ("event_ts", "price")
    }
    ts_type = types["event_ts"]
    ts_raw = F.expr(spec.columns["event_ts"])
    ts_text = text(spec.columns["event_ts"])
    event_ts = parse_timestamp(ts_raw, ts_text, ts_type, source)
    price_text = text(spec.columns["price"]) if "price" in spec.columns else F.lit(None)
    price = price_text.try_cast("double")
    if not isinstance(types.get("price"), T.NumericType):
        # Text must be a decimal number: the cast also reads Java literals (19.99d, 19.99F).
        price = F.when(price_text.rlike(_DECIMAL), price)
    order_text = F.lit(None).cast("string")
    if source.order_by:
        _check_evaluates(raw, source.order_by, "ingest.source.order_by", spec, source)
        order_text = text(source.order_by)
    lineage = {
        POSITION: F.col(POSITION) if POSITION in raw.columns else F.lit(None).cast("long"),
        SPLIT_START: F.col(SPLIT_START) if SPLIT_START in raw.columns else F.lit(None),
        ELEMENT: F.col(ELEMENT) if ELEMENT in raw.columns else F.lit(0),
        ORDER_VALUE: order_text.try_cast("long"),
    }

    type_key = F.lower(mapped["event_type"])
    type_map = F.create_map(
        *[item for k, v in source.event_type_map.items() for item in (F.lit(k.lower()), F.lit(v))]
    )
    mapped_type = type_map[type_key]
    if source.unknown_event_type == "other":
        mapped_type = F.coalesce(mapped_type, F.when(type_key.isNotNull(), F.lit("other")))

    low = F.lit(source.min_event_ts).cast("timestamp")
    high = F.lit(source.max_event_ts).cast("timestamp")
    max_bytes = source.max_record_bytes
    # Readers other than read_raw's may not report record size or encoding problems.
    record_bytes = F.col(RECORD_BYTES) if RECORD_BYTES in raw.columns else F.lit(None)
    bad_utf8 = F.col(BAD_UTF8) if BAD_UTF8 in raw.columns else F.lit(False)
    repeated = F.col(DUPLICATE_KEY) if DUPLICATE_KEY in raw.columns else F.lit(None)
    # Two projections: first every value once, then checks on the named results, so each
    # expression (some are costly, e.g. timestamp parsing) is written and evaluated once.
    staged = raw.select(
        F.col(RAW),
        F.col(SOURCE_FILE),
        F.col(CORRUPT),
        record_bytes.cast("long").alias(RECORD_BYTES),
        bad_utf8.alias(BAD_UTF8),
        repeated.cast("string").alias(DUPLICATE_KEY),
        F.col(EXPLODE_REASON),
        lineage[POSITION].cast("long").alias(POSITION),
        lineage[SPLIT_START].cast("long").alias(SPLIT_START),
        lineage[ELEMENT].cast("int").alias(ELEMENT),
        lineage[ORDER_VALUE].alias(ORDER_VALUE),
        order_text.alias("__order_text"),
        *[mapped[c].alias(c) for c in ("event_id", "user_id")],
        event_ts.instant.alias("event_ts"),
        ts_text.alias("__ts_text"),
        event_ts.nonexistent.alias("__ts_gap"),
        event_ts.ambiguous.alias(AMBIGUOUS_TIME),
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
        .when(
            col(DUPLICATE_KEY).isNotNull(),
            F.concat(
                F.lit(f"duplicate key in {spec.format} record: "),
                F.substring(DUPLICATE_KEY, 1, 40),
            ),
        )
        .when(col(CORRUPT).isNotNull(), F.lit(f"malformed {spec.format} record"))
        .when(col(EXPLODE_REASON).isNotNull(), col(EXPLODE_REASON))
        .when(col("user_id").isNull(), F.lit("missing user_id"))
        # A JSON object or array where the id should be: the parser hands it over as its text.
        .when(container, F.lit("invalid user_id: object or array"))
        .when(col("__ts_text").isNull(), F.lit("missing event_ts"))
        .when(col("__ts_gap"), F.lit(nonexistent_reason(source.timezone)))
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
    if source.order_by:
        invalid = F.concat(F.lit("invalid order_by value: "), F.substring("__order_text", 1, 40))
        no_order = F.lit("missing order_by value")
        reason = reason.when(col("__order_text").isNull(), no_order)
        reason = reason.when(col(ORDER_VALUE).isNull(), invalid)
    checked = staged.select(
        RAW,
        SOURCE_FILE,
        CORRUPT,
        RECORD_BYTES,
        *LINEAGE_COLUMNS,
        *NORMALISED_COLUMNS,
        reason.alias(REASON),
        AMBIGUOUS_TIME,
    )
    # An oversize record is kept as a preview, not megabytes of text.
    preview = F.concat(
        F.substring(RAW, 1, OVERSIZE_PREVIEW_CHARS),
        F.lit(" … [truncated: "),
        col(RECORD_BYTES).cast("string"),
        F.lit(" bytes]"),
    )
    # Valid rows keep no raw record unless it is needed (to derive the id of a record without a
    # source id, or when the caller asks): they then carry no copy of it through the cache and
    # the shuffles, and Parquet rows are rendered as JSON only when rejected or hashed.
    valid = col(REASON).isNull()
    needed = F.lit(keep_raw) | col("event_id").isNull()
    kept_raw = F.when(oversize, preview).when(valid & ~needed, None).otherwise(col(RAW))
    checked = checked.withColumn(RAW, kept_raw).drop(RECORD_BYTES)
    if pseudonymizer is not None:
        checked = _pseudonymize(checked, pseudonymizer)
    # No source id: the id is the hash of the raw record as stored (pseudonymised), so identical
    # records are duplicates and records that differ in any raw field are distinct events.
    derived = F.coalesce(col("event_id"), F.when(valid, record_hash(col(RAW))))
    checked = checked.withColumn("event_id", derived)
    if not keep_raw:
        checked = checked.withColumn(RAW, F.when(valid, None).otherwise(col(RAW)))
    return checked.drop(CORRUPT)


def _fields(raw: DataFrame) -> list[str]:
    """The raw fields of a :func:`jobs.sources.readers.read_raw` result (no bookkeeping)."""
    return [c for c in raw.columns if not c.startswith("__")]


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
    replaced_columns = {RAW: F.when(raw.isNotNull(), safe_raw), "user_id": hashed}
    return Pseudonymizer.drop_key(
        keyed.select(*[replaced_columns.get(c, F.col(c)).alias(c) for c in checked.columns])
    )


def apply_lookups(
    normalised: DataFrame, lookups: Sequence[tuple[LookupSpec, DataFrame]]
) -> DataFrame:
    """Fill still-empty events columns from side files (left join, one match per key).

    ``normalised`` is a :func:`normalise` result; each lookup pairs its spec with the side file
    as read (:func:`jobs.sources.readers.read_lookup`).  Keys are compared trimmed; when a key
    has several rows, the smallest value of each column wins, so reruns agree.  Same rows and
    columns as ``normalised``.  Raises :class:`IngestError` when a lookup lacks ``join_on`` or
    ``columns``.
    """
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
