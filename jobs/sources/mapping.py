"""The source mapping: raw fields -> ``events`` columns, each row with its quarantine reason.

Reasons are checked in a fixed order and the first failing check names a row's problem; the
README ("Bad input") lists them, and ``conf/base.yaml`` documents the mapping settings.  Pure
transforms: no file or table is read or written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.core.config import InputSpec, LookupSpec, PrivacyConfig, SourceConfig
from jobs.core.privacy import Pseudonymizer
from jobs.sources.columns import (
    BAD_UTF8,
    CORRUPT,
    MAPPABLE_COLUMNS,
    NORMALISED_COLUMNS,
    RAW,
    REASON,
    RECORD_BYTES,
    REQUIRED_COLUMNS,
    SOURCE_FILE,
)
from jobs.sources.errors import IngestError
from jobs.sources.timestamps import parse_timestamp

#: Characters of an oversize record kept in quarantine.
OVERSIZE_PREVIEW_CHARS = 1000


def normalise(
    raw: DataFrame,
    *,
    spec: InputSpec,
    source: SourceConfig,
    privacy: PrivacyConfig | None = None,
) -> DataFrame:
    """Map raw fields onto the ``events`` columns and attach a quarantine reason (or null).

    ``raw`` is a :func:`jobs.sources.readers.read_raw` result (other readers may lack
    ``__record_bytes`` / ``__bad_utf8``).  Returns one row per input row: ``__raw`` (kept for
    quarantined rows only; an oversize record as a preview of
    :data:`OVERSIZE_PREVIEW_CHARS` characters), ``__source_file``, the normalised columns
    (``event_id`` and the content columns; ``event_ts`` a UTC timestamp, ``price`` a double)
    and ``__reason``.  With ``privacy.pseudonymize_user_id`` on, ``user_id`` (and the user id
    inside quarantined raw records) is replaced by its HMAC.

    Raises :class:`IngestError` when ``spec`` maps no column for a required one or maps an
    unknown column, and :class:`jobs.core.privacy.PrivacyError` when pseudonymisation has no
    usable key; both before any row is read.
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
    event_ts = parse_timestamp(ts_raw, ts_text, ts_type, source)
    price_text = text(spec.columns["price"]) if "price" in spec.columns else F.lit(None)
    price = price_text.try_cast("double")

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
