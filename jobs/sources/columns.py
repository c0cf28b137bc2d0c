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
#: Size of the record in bytes (a JSON line or CSV row; null when the reader cannot tell).
RECORD_BYTES = "__record_bytes"
#: The record is not valid UTF-8.
BAD_UTF8 = "__bad_utf8"
