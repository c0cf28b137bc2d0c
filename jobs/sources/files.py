"""The raw files an ingest run reads, and the ``ingest_log`` rows that record them.

``ingest_log`` is the incremental watermark: a file whose (path, size, modification time) it
lists has been ingested; a new or changed file has not (README, "Daily incremental runs").
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.core.config import InputSpec
from jobs.core.tables import INGEST_LOG, contract_of
from jobs.sources.readers import existing_paths

#: A file version as ``ingest_log`` records it: (path, size in bytes, modification time).
FileVersion = tuple[str, int, datetime]


@dataclass(frozen=True)
class InputFile:
    """One raw file as the file system lists it; (path, size, modified) identifies a version."""

    #: Index of the input (``ingest.source.inputs``) that covers the file.
    spec_index: int
    path: str
    #: Bytes.
    size: int
    modified: datetime

    @property
    def version(self) -> FileVersion:
        return (self.path, self.size, self.modified)


def list_input_files(spark: SparkSession, inputs: Sequence[InputSpec]) -> list[InputFile]:
    """Every file the configured inputs cover, with size and modification time, sorted by
    input then path.

    Listed through Spark's ``binaryFile`` source (only metadata columns are selected, so no file
    content is read) so that the paths are spelled exactly as ``_metadata.file_path`` spells them
    when the files are read, on any file system Spark can read.  Empty files hold no records and
    Spark lists none of them.  Raises :class:`jobs.sources.errors.IngestError` when a local
    path does not exist.
    """
    listed: list[InputFile] = []
    for index, spec in enumerate(inputs):
        paths = existing_paths(spec.paths)
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


def logged_versions(ingest_log: DataFrame) -> set[FileVersion]:
    """The file versions an ``ingest_log`` table lists (collected to the driver)."""
    return {
        (r["source_file"], int(r["file_size"]), r["file_modified"])
        for r in ingest_log.select("source_file", "file_size", "file_modified").collect()
    }


def unseen_files(files: Sequence[InputFile], seen: Collection[FileVersion]) -> list[InputFile]:
    """The files whose version is not in ``seen``: new files, or files changed in size or
    modification time since they were logged.  Order kept."""
    return [f for f in files if f.version not in seen]


def to_ingest_log(
    spark: SparkSession,
    files: Sequence[InputFile],
    rows_per_file: Mapping[str, tuple[int, int]],
    *,
    run_id: str,
    mode: str,
) -> DataFrame:
    """``ingest_log`` rows: one per raw file read by this run, with its record counts.

    ``rows_per_file`` maps a file's path to (input rows, quarantined rows); a file missing from
    it (no records) is logged with zero counts.  ``ingested_at`` is now.
    """
    columns = contract_of(INGEST_LOG).schema.fields
    schema = T.StructType([f for f in columns if f.name != "ingested_at"])
    rows = [
        (run_id, mode, f.path, f.size, f.modified, *rows_per_file.get(f.path, (0, 0)))
        for f in files
    ]
    return spark.createDataFrame(rows, schema).withColumn("ingested_at", F.current_timestamp())
