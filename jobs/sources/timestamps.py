"""Raw timestamps (text, epoch numbers, typed columns) -> UTC instants.

A raw value either names its instant or is wall-clock time.  Absolute: epoch numbers (and
numeric text), text that carries a zone or offset (``Z``, ``+01``, ``+0100``, ``+01:00``,
``UTC``, ``GMT``, ``UTC+01:00``, a region id such as ``Europe/Berlin``, a short id such as
``PST``), text parsed with a ``timestamp_format`` whose pattern has zone letters, and
UTC-adjusted timestamp columns (Parquet ``isAdjustedToUTC=true``).  Wall-clock: text without a
zone, timestamp-without-time-zone columns and date columns; only these are read in
``ingest.source.timezone``.

Wall-clock time in a zone with daylight saving can name no instant (the spring gap) or two (the
autumn repeat).  The first is flagged ``nonexistent`` and quarantined with
:func:`nonexistent_reason`; the second is resolved as Spark's ``to_utc_timestamp`` resolves it
(:data:`AMBIGUOUS_RULE`, java.time's ``ZonedDateTime.ofLocal`` rule) and flagged ``ambiguous``
so the ingest stage can count it.  The checks are Spark expressions over the zone rules Spark
ships (``from_utc_timestamp`` / ``to_utc_timestamp``), no Python UDF.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.errors import IllegalArgumentException, SparkUpgradeException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import ConfigError, SourceConfig
from jobs.sources.columns import AMBIGUOUS_TIME, REASON

#: Text that is an epoch number: digits, an optional fraction and exponent (``1.7092872E12``).
_EPOCH = r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$"
#: Text Spark's timestamp cast reads with a zone: after the seconds (and any fraction) comes a
#: zone id or offset, which starts with a letter or a sign (Spark docs, "cast string to
#: timestamp": ``[h]h:[m]m:[s]s.[ms][us][zone_id]``).  tests/test_timestamps.py holds the
#: forms it must tell apart, each with the instant Spark's parser gives.
_ZONED_TEXT = r"\d:\d{1,2}(\.\d*)?\s*[A-Za-z+-]"
#: A time without a date, which Spark's cast would silently date today.
_TIME_ONLY = r"^T?\d{1,2}:"
#: Pattern letters that parse a zone or offset (Spark docs, "Datetime patterns").
_ZONE_LETTERS = frozenset("VzOXxZ")
#: Quoted pattern literals that are UTC designators.
_UTC_LITERALS = frozenset({"Z", "UTC", "GMT"})
#: A fixed offset other than UTC, for telling zoned from wall-clock text by parsing it twice.
_PROBE_ZONE = "+01:00"
#: Epoch magnitudes (about year 33,658) below which conversion to a timestamp cannot overflow.
_EPOCH_LIMIT = {"s": 1e12, "ms": 1e15, "us": 1e18}
_UTC_NAMES = ("UTC", "Z", "ETC/UTC")
_DAY_US = 86_400 * 1_000_000
#: Wall-clock times outside these are not moved into the source zone (see parse_timestamp).
_LOWEST, _HIGHEST = "0001-01-03 00:00:00", "9999-12-29 00:00:00"

#: How a wall-clock time that occurs twice (clocks turned back) becomes an instant: Spark's
#: ``to_utc_timestamp`` (java.time ``ZonedDateTime.ofLocal``) takes the earlier offset.
AMBIGUOUS_RULE = "the earlier instant (the offset in force before the clocks went back)"


#: Spark's guide to its datetime patterns (the letters ``timestamp_format`` may use).
PATTERN_GUIDE = "https://spark.apache.org/docs/latest/sql-ref-datetime-pattern.html"


def check_timestamp_format(spark: SparkSession, source: SourceConfig) -> None:
    """Raise :class:`ConfigError` naming ``ingest.source.timestamp_format`` when Spark's parser
    refuses the pattern (an unknown letter, a week-based field, an unclosed quote, too many
    letters); nothing when it is unset or valid.

    Spark checks a pattern only when it parses the first value with it, so a bad one would
    fail the ingest halfway with a Java error: this one-row query runs the same parser
    (``try_to_timestamp``, as :func:`parse_timestamp` uses) before any input is read.  It
    works the same under Spark Connect."""
    pattern = source.timestamp_format
    if pattern is None:
        return
    probe = F.try_to_timestamp(F.lit("2024-03-01 10:00:00"), F.lit(pattern))
    try:
        spark.range(1).select(probe).collect()
    except (IllegalArgumentException, SparkUpgradeException) as exc:
        if "PARSE_DATETIME_BY_NEW_PARSER" in str(exc):
            # spark.sql.legacy.timeParserPolicy=EXCEPTION (Spark 3's default, kept by some
            # platform sessions): the pattern is valid, only the probe text does not match it.
            return
        raise ConfigError(
            f"ingest.source.timestamp_format={pattern!r} is not a pattern Spark can parse: "
            f"{_pattern_problem(str(exc))} (pattern letters: {PATTERN_GUIDE})"
        ) from None


def _pattern_problem(message: str) -> str:
    """The lines of Spark's error that say what is wrong with the pattern, without its error
    class preamble, the SQLSTATE and the advice to switch to the legacy parser."""
    kept = []
    # Spark Connect appends the server's Java stack trace to the message.
    for line in message.split("JVM stacktrace:")[0].splitlines():
        line = line.split(" SQLSTATE:")[0].strip()
        if "You may get a different result" in line or "legacy" in line.lower():
            continue
        if line.startswith("2) You can form a valid datetime pattern") or not line:
            continue
        kept.append(line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line)
    return " ".join(kept) or message.strip()


def nonexistent_reason(zone: str) -> str:
    """The quarantine reason for wall-clock text that names no instant in ``zone`` (a time the
    clocks skipped when daylight saving started).  Stable per source, so reasons group."""
    return f"nonexistent local time in {zone} (DST gap)"


@dataclass(frozen=True)
class ParsedTimestamp:
    """What :func:`parse_timestamp` makes of one raw value (all three are Spark columns)."""

    #: The UTC instant (``timestamp``); null where the value cannot be parsed.
    instant: Column
    #: Boolean: wall-clock time that does not exist in the zone (a DST gap); quarantine it.
    nonexistent: Column
    #: Boolean: wall-clock time that occurs twice in the zone; resolved by :data:`AMBIGUOUS_RULE`.
    ambiguous: Column


def parse_timestamp(
    raw: Column, text: Column, dtype: T.DataType, source: SourceConfig
) -> ParsedTimestamp:
    """A UTC instant from a raw timestamp, with the daylight-saving flags of wall-clock time.

    ``raw`` is the mapped expression as read, ``text`` its trimmed text (null for a missing
    value) and ``dtype`` the type of ``raw``.  ``timestamp`` columns are instants;
    ``timestamp_ntz`` and ``date`` columns are wall-clock time; numbers and numeric text are
    epochs in ``source.timestamp_unit`` (s, ms or us); other text is parsed with
    ``source.timestamp_format`` when set, else as ISO-8601 / Spark's cast (a time without a
    date is unparseable).  Text with a zone or offset is absolute; see the module docstring.
    Wall-clock values are read in ``source.timezone``.  An epoch too large to convert (beyond
    about year 33,000) becomes year 9999 (or year 1 when negative), which the range check
    rejects.
    """
    parsed, absolute = _parse(raw, text, dtype, source)
    zone = source.timezone
    if zone.upper() in _UTC_NAMES:
        return ParsedTimestamp(parsed, F.lit(False), F.lit(False))
    # ``parsed`` holds wall-clock fields as if in UTC; the zone's rules make them an instant.
    local = F.to_utc_timestamp(parsed, zone)
    # A skipped time comes back moved by the gap; a repeated time is also reached from the
    # instant that the offset in force a day later gives (transitions are far more than a day
    # apart in every zone of the tz database).
    nonexistent = F.from_utc_timestamp(local, zone) != parsed
    later = F.timestamp_micros(F.unix_micros(local) + F.lit(_DAY_US))
    later_offset = F.unix_micros(F.from_utc_timestamp(later, zone)) - F.unix_micros(later)
    other = F.timestamp_micros(F.unix_micros(parsed) - later_offset)
    ambiguous = (other != local) & (F.from_utc_timestamp(other, zone) == parsed)
    # Far outside any plausible event time (which the range check rejects anyway) the zone
    # arithmetic could overflow, an error under ANSI mode: such values stay as parsed.
    inside = parsed.between(F.lit(_LOWEST).cast("timestamp"), F.lit(_HIGHEST).cast("timestamp"))
    wall = parsed.isNotNull() & ~absolute & inside
    return ParsedTimestamp(
        instant=F.when(absolute | ~inside, parsed).otherwise(local),
        nonexistent=F.when(wall, nonexistent).otherwise(F.lit(False)),
        ambiguous=F.when(wall & ~nonexistent, ambiguous).otherwise(F.lit(False)),
    )


def count_ambiguous(normalised: DataFrame, source: SourceConfig) -> int:
    """Rows of a :func:`jobs.sources.mapping.normalise` result (read with ``source``) that
    passed every check and whose wall-clock time was ambiguous, resolved by
    :data:`AMBIGUOUS_RULE`.  One Spark action; none when ``source.timezone`` is UTC."""
    if source.timezone.upper() in _UTC_NAMES:
        return 0
    return normalised.where(F.col(REASON).isNull() & F.col(AMBIGUOUS_TIME)).count()


def _parse(
    raw: Column, text: Column, dtype: T.DataType, source: SourceConfig
) -> tuple[Column, Column]:
    """``(value, absolute)``: the parsed timestamp (wall-clock fields read as UTC where the
    value names no zone) and whether it named its instant."""
    if isinstance(dtype, T.TimestampType):
        return raw, F.lit(True)
    if isinstance(dtype, (T.TimestampNTZType, T.DateType)):
        return raw.cast("timestamp_ntz").cast("timestamp"), F.lit(False)
    if isinstance(dtype, T.NumericType):
        return _from_epoch(raw, source.timestamp_unit), F.lit(True)
    pattern = source.timestamp_format
    if pattern is not None:
        # The pattern decides alone: digits-only text such as 20240301100000 is not an epoch.
        return F.try_to_timestamp(text, F.lit(pattern)), _pattern_zoned(text, pattern)
    epoch = text.rlike(_EPOCH)
    as_cast = F.try_to_timestamp(text)
    # Only text the cast cannot read is rewritten (CASE and COALESCE evaluate lazily).
    iso = _iso_forms(text)
    parsed = F.when(text.rlike(_TIME_ONLY), None).otherwise(
        F.coalesce(as_cast, F.try_to_timestamp(iso))
    )
    value = F.when(epoch, _from_epoch(text, source.timestamp_unit)).otherwise(parsed)
    zoned = F.when(as_cast.isNotNull(), text.rlike(_ZONED_TEXT)).otherwise(iso.rlike(_ZONED_TEXT))
    return value, epoch | zoned


def _iso_forms(text: Column) -> Column:
    """ISO-8601 (and RFC 3339) forms Spark's timestamp cast does not read, rewritten to ones it
    does: the basic format (``20240301T100000Z``), a lower-case ``t`` or ``z``, a decimal
    comma (``10:00:00,123``) and a zoned time without seconds (``10:00Z``, ``10:00+01:00``;
    the cast reads ``10:00`` without a zone already)."""
    date_time = r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2})"
    rewritten = F.regexp_replace(
        text, r"^(\d{4})(\d{2})(\d{2})[Tt](\d{2})(\d{2})(\d{2})", "$1-$2-$3T$4:$5:$6"
    )
    rewritten = F.regexp_replace(rewritten, r"^(\d{4}-\d{2}-\d{2})t", "$1T")
    rewritten = F.regexp_replace(rewritten, r"(\d)z$", "$1Z")
    rewritten = F.regexp_replace(rewritten, date_time + r"(:\d{2}),(\d)", "$1T$2$3.$4")
    return F.regexp_replace(rewritten, date_time + r"(Z|[+-]\d{2}(:?\d{2})?)$", "$1T$2:00$3")


def _pattern_zoned(text: Column, pattern: str) -> Column:
    """Whether ``text``, parsed with ``pattern``, names its zone: always when the pattern has a
    zone letter outside quotes and optional sections, never when it has none, and otherwise
    (a zone in an optional section, ``[XXX]``) as Spark's parser finds: the value does not
    move when the default zone does."""
    required, optional = _zone_letters(pattern)
    if required:
        return F.lit(True)
    if not optional:
        return F.lit(False)
    options = {"timestampFormat": pattern, "enableDateTimeParsingFallback": "false"}
    record = F.to_json(F.struct(text.alias("t")))
    as_utc, as_probe = (
        F.from_json(record, "t TIMESTAMP", {**options, "timeZone": default})["t"]
        for default in ("UTC", _PROBE_ZONE)
    )
    return F.coalesce(as_utc == as_probe, F.lit(False))


def _zone_letters(pattern: str) -> tuple[bool, bool]:
    """``(required, optional)``: whether a Spark datetime ``pattern`` parses a zone outside
    optional sections, and inside one.  Text in single quotes is literal (``''`` is a quote);
    a literal ``'Z'``, ``'UTC'`` or ``'GMT'`` outside optional sections counts as a zone, since
    the text it matches names UTC (``yyyy-MM-dd'T'HH:mm:ss'Z'``)."""
    required = optional = False
    literal: list[str] | None = None
    depth = 0
    for char in pattern:
        if char == "'":
            if literal is None:
                literal = []
            else:
                required |= not depth and "".join(literal).strip() in _UTC_LITERALS
                literal = None
        elif literal is not None:
            literal.append(char)
        elif char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char in _ZONE_LETTERS:
            if depth:
                optional = True
            else:
                required = True
    return required, optional


#: Microseconds per epoch unit.
_MICROS_PER = {"s": 1_000_000, "ms": 1_000, "us": 1}


def _from_epoch(number: Column, unit: str) -> Column:
    """A timestamp from an epoch number (or numeric text) in ``unit`` (s, ms or us), to the
    microsecond: a fraction of the unit is kept down to the microsecond (``1709287200123.456``
    ms is ``...00.123456``), a finer one dropped (rounded down, as for nanoseconds).

    Converted through a decimal, which reads numeric text exactly (exponent notation such as
    ``1.7092872E12`` included); a double would round 16-digit microsecond counts."""
    value = number.try_cast("double")  # the range checks below
    exact = number.try_cast("decimal(38,9)")
    micros = F.floor(exact * F.lit(_MICROS_PER[unit])).try_cast("bigint")
    converted = F.timestamp_micros(micros)
    # Beyond about year 33,000 the conversion overflows, an error under ANSI mode; such an
    # epoch is garbage, so it becomes a time the range check rejects.
    return (
        F.when(F.isnan(value), None)
        .when(F.abs(value) < _EPOCH_LIMIT[unit], converted)
        .when(value > 0, F.to_timestamp(F.lit("9999-12-31T00:00:00Z")))
        .otherwise(F.to_timestamp(F.lit("0001-01-01T00:00:00Z")))
    )
