"""Column names ingest works with: the mappable ``events`` columns and the bookkeeping columns.

The types and order of the tables themselves are in :mod:`jobs.core.tables` (``docs/tables.md``).
"""

from __future__ import annotations

#: Columns every input must map: a record without one of them is quarantined.
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
#: The ``events`` columns a source mapping (``ingest.source.inputs[].columns``) may fill.
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

# Internal bookkeeping columns carried next to the raw fields; the double underscore keeps them
# apart from any field name a real dataset uses.
#: The record as written (text), kept for quarantined rows only once normalised.
RAW = "__raw"
#: The file the record came from, as Spark's ``_metadata.file_path`` spells it.
SOURCE_FILE = "__source_file"
#: Set (to the record's text, or "" for a blank line) when the record could not be parsed.
CORRUPT = "__corrupt"
#: Why the row is quarantined; null for a valid row.
REASON = "__reason"
#: A field the mapping reads that a JSON record holds more than once at its top level (the record
#: is then malformed: a parser keeps one of the values); null otherwise, and for other formats.
DUPLICATE_KEY = "__duplicate_key"
#: Size of the record in bytes (a JSON line or CSV row; null when the reader cannot tell).
RECORD_BYTES = "__record_bytes"
#: The record is not valid UTF-8.
BAD_UTF8 = "__bad_utf8"
#: The record's position in its file (long): its row index there, from 0 in file order, the same
#: however Spark splits and packs the files (full and incremental runs agree).  Until
#: :func:`jobs.sources.readers.resolve_positions` runs, text formats hold the row index within
#: the Spark partition here and the split's start in :data:`SPLIT_START`.
POSITION = "__position"
#: Index of the event within its record (int): 0, or the array index when a record holding an
#: array of events was exploded.
ELEMENT = "__element"
#: Byte offset of the file split a text record was read from (null for Parquet); dropped by
#: :func:`jobs.sources.readers.resolve_positions`.
SPLIT_START = "__split_start"
#: The value of ``ingest.source.order_by`` (long), when set: the within-file tie order.
ORDER_VALUE = "__order_value"
#: The tie order within a file (long): ``ORDER_VALUE`` when configured, else
#: position x 65536 + element; becomes ``events.source_order``.
SOURCE_ORDER = "__source_order"
#: Where deduplication put a row: one of the labels in :mod:`jobs.sources.dedup`.
LABEL = "__label"
#: Why exploding a record produced no event from it or from one of its elements (no elements,
#: not an array, an element that is not an object); null otherwise.
EXPLODE_REASON = "__explode_reason"
#: The event time was wall-clock time that occurs twice in ``ingest.source.timezone`` (clocks
#: turned back); resolved by :data:`jobs.sources.timestamps.AMBIGUOUS_RULE` and counted.
AMBIGUOUS_TIME = "__ambiguous_time"

#: Elements per record in ``events.source_order`` (``position x 65536 + element``): an element
#: beyond the first 65,536 of its record's array is quarantined, not given another's order.
ELEMENTS_PER_RECORD = 65536
