"""The product's Delta tables: :class:`Lake` (read, write, describe) over two engines."""

from jobs.core.lake.api import Lake, resolve_engine
from jobs.core.lake.base import (
    ConcurrentWriteError,
    LakeError,
    TableInfo,
    TableLocation,
    Txn,
    WriteResult,
)
from jobs.core.lake.paths import table_uri_for_display

__all__ = [
    "ConcurrentWriteError",
    "Lake",
    "LakeError",
    "TableInfo",
    "TableLocation",
    "Txn",
    "WriteResult",
    "resolve_engine",
    "table_uri_for_display",
]
