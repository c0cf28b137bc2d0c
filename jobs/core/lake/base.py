"""Types shared by the Lake API and its engines."""

from __future__ import annotations

from dataclasses import dataclass


class LakeError(RuntimeError):
    """A table operation cannot be carried out; the message says which table and why."""


@dataclass(frozen=True)
class TableLocation:
    """A resolved table: its key in the registry, storage path, metastore name, partitioning."""

    table: str
    path: str | None
    name: str | None
    partition_by: tuple[str, ...]

    def describe(self) -> str:
        return self.name or self.path or self.table


@dataclass(frozen=True)
class TableInfo:
    """A table as the end-of-run summary shows it."""

    location: str
    version: int
    rows: int


@dataclass(frozen=True)
class WriteResult:
    """What one committed write did."""

    table: str
    location: str
    version: int
    rows_written: int
    files_added: int
