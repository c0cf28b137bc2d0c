"""Raw timestamps (text, epoch numbers, native timestamps) -> UTC instants."""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import SourceConfig

#: Text that is an epoch number: digits, an optional fraction and exponent (``1.7092872E12``).
_EPOCH = r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$"
#: Text that ends in an explicit offset, hence an absolute instant.
_OFFSET = r"([Zz]|[+-]\d{2}:?\d{2})$"
#: Epoch magnitudes (about year 33,658) below which conversion to a timestamp cannot overflow.
_EPOCH_LIMIT = {"s": 1e12, "ms": 1e15, "us": 1e18}
_UTC_NAMES = ("UTC", "Z", "ETC/UTC")


def parse_timestamp(raw: Column, text: Column, dtype: T.DataType, source: SourceConfig) -> Column:
    """A timestamp column (UTC instant) from a raw timestamp; null where it cannot be parsed.

    ``raw`` is the mapped expression as read, ``text`` its trimmed text (null for a missing
    value) and ``dtype`` the type of ``raw``.  Native timestamps and dates are cast; numbers and
    numeric text are epochs in ``source.timestamp_unit`` (s, ms or us); other text is parsed
    with ``source.timestamp_format`` when set, else as ISO-8601.  Wall-clock text (no offset, no
    epoch) is read in ``source.timezone``.  An epoch too large to convert (beyond about year
    33,000) becomes year 9999 (or year 1 when negative), which the range check rejects.
    """
    unit = source.timestamp_unit

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
    local_zone = source.timezone.upper() not in _UTC_NAMES
    if local_zone and not isinstance(dtype, (T.TimestampType, T.NumericType)):
        # The zone applies only to wall-clock text: epochs and text with an offset are absolute.
        absolute = text.rlike(_EPOCH) | text.rlike(_OFFSET)
        if source.timestamp_format:
            absolute = F.lit(False)
        parsed = F.when(absolute, parsed).otherwise(F.to_utc_timestamp(parsed, source.timezone))
    return parsed
