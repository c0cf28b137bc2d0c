"""Types shared by the Lake API and its engines."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.core.errors import PipelineError


@dataclass(frozen=True)
class Txn:
    """A Delta transaction identifier (``txn`` action): an application id and its version.

    The table remembers the latest version per application id (:meth:`Lake.txn_version`).  A
    write carrying ``Txn(app, v)`` commits only when the table holds ``v - 1`` for ``app`` (none
    for ``v = 1``), and two concurrent commits of one application id conflict: the later one
    fails with :class:`ConcurrentWriteError` instead of both landing (Delta protocol,
    "Transaction Identifiers").  Writers use it to make overlapping runs safe.
    """

    app_id: str
    version: int


class LakeError(PipelineError):
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
    #: Rows the commit wrote from the source (for a merge: inserted plus updated).
    rows_written: int
    files_added: int
    #: Merges only: rows of the target that the source replaced, and rows deleted.
    rows_updated: int = 0
    rows_deleted: int = 0


class ConcurrentWriteError(LakeError):
    """Another writer committed to the table between this writer's read and its commit."""
