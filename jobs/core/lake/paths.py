"""Path and URI helpers: local paths and ``scheme://`` URIs through one pyarrow file system."""

from __future__ import annotations

from urllib.parse import urlparse

import pyarrow.fs as pafs

from jobs.core.lake.base import LakeError, TableLocation


def require_path(loc: TableLocation) -> str:
    if not loc.path:
        raise LakeError(
            f"{loc.table}: the delta-rs engine needs a storage path (lake.root or "
            f"lake.tables.{loc.table}.path); metastore names need lake.engine=spark"
        )
    return loc.path


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def delta_log_exists(uri: str) -> bool:
    fs, root = filesystem(uri)
    info = fs.get_file_info(f"{root}/_delta_log")
    return bool(info.type == pafs.FileType.Directory)


def table_uri_for_display(uri: str) -> str:
    """A path as people paste it into delta-rs / DuckDB (file URIs shown as plain paths)."""
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme == "file" else uri
