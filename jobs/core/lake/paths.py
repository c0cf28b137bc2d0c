"""Storage paths: local folders, ``file:`` URIs and object-store URIs, in one place.

A configured location has two spellings:

* the **configured** one, which Spark uses as it is (``s3a://``, ``abfss://``, ``gs://``,
  ``dbfs:/``, ``file:``, a local or ``/Volumes/...`` path): Spark's own connectors decide;
* the **native** one, which the Python side (delta-rs, DuckDB and polars through delta-rs, the
  file moves of the delta-rs engine) reaches through delta-rs's object store
  (:func:`native_uri`): ``s3a://`` and ``s3n://`` become ``s3://``, ``file:`` URIs and local
  paths become absolute local paths, ``dbfs:/x`` becomes the driver's ``/dbfs/x`` mount.

:class:`Storage` opens both tables (``deltalake.DeltaTable``) and files (a ``pyarrow``
file system rooted at a location) with ``lake.storage_options`` (delta-rs object-store keys,
e.g. ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``); credentials come from the
environment (``AWS_ACCESS_KEY_ID``..., Azure and GCP variables) as delta-rs reads them.
Unreachable locations raise :class:`LakeError` naming the table or setting, never a raw
object-store error.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from jobs.core.lake.base import LakeError, TableLocation

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
#: Hadoop's S3 connectors; delta-rs and pyarrow know the bucket as ``s3://``.
_S3_ALIASES = frozenset({"s3a", "s3n"})
#: Object stores delta-rs reaches (AWS S3 and compatibles, Google Cloud Storage, Azure).
OBJECT_STORE_SCHEMES = frozenset({"s3", "s3a", "s3n", "gs", "abfs", "abfss", "az", "azure", "adl"})
#: Where a Databricks driver mounts DBFS as local files.
DBFS_MOUNT = "/dbfs"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Bytes per write when uploading a file.
_CHUNK = 16 * 1024 * 1024


def scheme_of(path: str) -> str:
    """The URI scheme of ``path`` in lower case (``s3a``, ``file``, ``dbfs``...); ``""`` for a
    local path (one-letter "schemes" are Windows drive letters, so local too)."""
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else ""


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``scheme:...``) rather than a local path."""
    return scheme_of(path) != ""


def is_local(path: str) -> bool:
    """Whether ``path`` is on this machine's file system: a plain path or a ``file:`` URI."""
    return scheme_of(path) in ("", "file")


def native_uri(path: str, *, where: str) -> str:
    """``path`` as delta-rs and the Python side spell it (see the module docstring).

    ``where`` names the table or setting for errors, e.g. ``"lake.root"``.  Raises
    :class:`LakeError` for a scheme the Python side cannot reach, a URI without a bucket or
    container, a ``file:`` URI of another host, or a ``dbfs:/`` path where no ``/dbfs`` mount
    exists (anywhere but a Databricks driver).
    """
    scheme = scheme_of(path)
    if not scheme:
        return os.path.abspath(path)
    parsed = urlparse(path)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise LakeError(f"{where}: {path} names host {parsed.netloc!r}; use file:///<path>")
        return os.path.abspath(unquote(parsed.path))
    if scheme == "dbfs":
        if parsed.netloc:
            raise LakeError(f"{where}: {path} is not a DBFS path; write dbfs:/<path>")
        if not os.path.isdir(DBFS_MOUNT):
            raise LakeError(
                f"{where}: {path} is a DBFS path, which the Python side (delta-rs, DuckDB, "
                f"polars) reaches only through the {DBFS_MOUNT} mount of a Databricks driver, "
                "and there is none here; use lake.engine=spark, a /Volumes/... path or the "
                "storage's own URI (s3://, abfss://, gs://) with lake.storage_options"
            )
        return f"{DBFS_MOUNT}/{parsed.path.lstrip('/')}".rstrip("/")
    if scheme not in OBJECT_STORE_SCHEMES:
        known = ", ".join(f"{s}://" for s in sorted(OBJECT_STORE_SCHEMES))
        raise LakeError(
            f"{where}: {path} uses the scheme {scheme}:, which delta-rs cannot reach; use a "
            f"local or /Volumes/... path, file:, dbfs:/ (on Databricks) or one of {known}"
        )
    if not parsed.netloc:
        raise LakeError(
            f"{where}: {path} names no bucket or container; write {scheme}://<bucket>/..."
        )
    native = "s3" + path[len(scheme) :] if scheme in _S3_ALIASES else path
    return native.rstrip("/")


def spark_uris(files: Sequence[str], *, native_root: str, spark_root: str) -> list[str]:
    """Spark's spelling of ``files`` that delta-rs listed under ``native_root`` (a table's
    ``dt.file_uris()``): the ``native_root`` prefix becomes ``spark_root`` (``s3://b/t/x`` ->
    ``s3a://b/t/x``, ``/dbfs/t/x`` -> ``dbfs:/t/x``); files elsewhere (absolute paths in the
    log) only get their ``s3://`` scheme back as the table's S3 connector spells it."""
    native = native_root.rstrip("/") + "/"
    spark = spark_root.rstrip("/") + "/"
    spark_scheme = scheme_of(spark_root)
    out: list[str] = []
    for uri in files:
        if uri.startswith(native):
            out.append(spark + uri[len(native) :])
        elif spark_scheme in _S3_ALIASES and scheme_of(uri) == "s3":
            out.append(spark_scheme + uri[2:])
        else:
            out.append(uri)
    return out


def table_uri_for_display(uri: str) -> str:
    """A path as people paste it into delta-rs / DuckDB (file URIs shown as plain paths)."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def require_path(loc: TableLocation) -> str:
    """The table's configured storage path; :class:`LakeError` when it has only a name."""
    if not loc.path:
        raise LakeError(
            f"{loc.table}: the delta-rs engine needs a storage path (lake.root or "
            f"lake.tables.{loc.table}.path); metastore names need lake.engine=spark"
        )
    return loc.path


def location_label(loc: TableLocation) -> str:
    """How errors name a table's location setting."""
    return f"table {loc.table} (lake.root or lake.tables.{loc.table}.path)"


@dataclass(frozen=True)
class Storage:
    """Tables and files at configured locations, opened with ``lake.storage_options``."""

    #: delta-rs object-store options (``AWS_ENDPOINT_URL``, ``AZURE_STORAGE_ACCOUNT_NAME``...).
    options: Mapping[str, str] = field(default_factory=dict)

    def native(self, loc: TableLocation) -> str:
        """The table's native URI (:func:`native_uri`); :class:`LakeError` as there."""
        return native_uri(require_path(loc), where=location_label(loc))

    def delta_options(self) -> dict[str, str] | None:
        """``storage_options`` for ``deltalake`` calls (None when none are configured)."""
        return dict(self.options) or None

    def table(self, native: str) -> Any:
        """``deltalake.DeltaTable`` at ``native`` (a native URI) with the storage options."""
        from deltalake import DeltaTable

        return DeltaTable(native, storage_options=self.delta_options())

    def filesystem(self, native: str) -> pafs.FileSystem:
        """A ``pyarrow`` file system whose paths are relative to ``native`` (a native URI):
        pyarrow's local one for local paths, delta-rs's object store (same options and
        credentials as its tables) for object stores."""
        if is_local(native):
            return pafs.SubTreeFileSystem(native, pafs.LocalFileSystem())
        return pafs.PyFileSystem(_handler_class()(native, self.delta_options()))

    def log_exists(self, native: str) -> bool:
        """Whether ``native`` holds a Delta log (``_delta_log/``)."""
        info = self.filesystem(native).get_file_info("_delta_log")
        return bool(info.type == pafs.FileType.Directory)

    def clear_dir(self, native: str) -> None:
        """Delete every file under the folder ``native`` (none there is fine)."""
        fs = self.filesystem(native)
        listed = fs.get_file_info(pafs.FileSelector("", recursive=True, allow_not_found=True))
        for info in listed:
            if info.type == pafs.FileType.File:
                fs.delete_file(info.path)

    def upload_dir(self, local: Path, native: str) -> list[str]:
        """Copy every file under the local folder ``local`` to the folder ``native`` (same
        relative paths, existing objects replaced); returns the relative paths, sorted."""
        fs = self.filesystem(native)
        copied: list[str] = []
        for source in sorted(p for p in local.rglob("*") if p.is_file()):
            relative = source.relative_to(local).as_posix()
            if "/" in relative:
                fs.create_dir(relative.rpartition("/")[0], recursive=True)
            with source.open("rb") as data, fs.open_output_stream(relative) as sink:
                while chunk := data.read(_CHUNK):
                    sink.write(chunk)
            copied.append(relative)
        return copied


class Outbox:
    """A local folder whose files end up at ``target``, a configured folder path or URI
    (``evaluate.report_dir``...), for writers that only write local files (plots, CSV).

    A local ``target`` (plain path, ``file:``, ``dbfs:/`` through the driver's mount) is
    written in place; an object-store one is staged in a temporary folder that
    :meth:`publish` uploads with the storage options and that leaving the ``with`` block
    removes.  Raises :class:`LakeError` naming ``where`` for a target that cannot be reached.
    """

    def __init__(self, storage: Storage, target: str, *, where: str) -> None:
        self.storage = storage
        self.target = target.rstrip("/") or target
        self.where = where
        self.native = native_uri(target, where=where)
        self._staging = None if is_local(self.native) else tempfile.mkdtemp(prefix="segments-")
        if self._staging is not None:
            self.local = Path(self._staging)
        else:
            self.local = Path(target) if not is_uri(target) else Path(self.native)

    @property
    def staged(self) -> bool:
        """Whether the files are staged locally and uploaded by :meth:`publish`."""
        return self._staging is not None

    def publish(self) -> None:
        """Upload the staged files (nothing to do for a local target)."""
        if self._staging is not None:
            with reaching(f"{self.where} ({self.target})"):
                self.storage.upload_dir(self.local, self.native)

    def shown(self, name: str) -> str:
        """Where file ``name`` of the folder ends up, as configured (for logs and summaries)."""
        return str(self.local / name) if self._staging is None else f"{self.target}/{name}"

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)


@contextmanager
def reaching(what: str) -> Iterator[None]:
    """Turn an ``OSError`` from the storage (unreachable endpoint, missing bucket, denied
    credentials) into a :class:`LakeError` naming ``what`` (a table and its settings)."""
    try:
        yield
    except LakeError:
        raise
    except OSError as exc:
        raise LakeError(
            f"{what}: storage error ({storage_error_text(exc)}); check the location, "
            "lake.storage_options (endpoint, region) and the credentials in the environment"
        ) from exc


def storage_error_text(exc: BaseException, limit: int = 400) -> str:
    """An object-store error on one line: delta-rs nests causes over many lines."""
    lines = [_ANSI.sub("", line).strip(" ↳") for line in str(exc).splitlines()]
    text = " / ".join(line for line in lines if line)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _BytesSink:
    """delta-rs's output stream takes ``bytes``; pyarrow hands it buffers."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def write(self, data: Any) -> int:
        return int(self.raw.write(bytes(memoryview(data))))

    def close(self) -> None:
        self.raw.close()

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    def flush(self) -> None:
        """Nothing to do: the object is uploaded on close."""

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return int(self.raw.tell())


@cache
def _handler_class() -> type:
    """deltalake's pyarrow handler with two of its calls fixed (deltalake 1.6): writes through
    pyarrow, and ``delete_dir_contents`` with pyarrow's arguments.  Built on first use, so that
    importing this module does not import deltalake."""
    from deltalake.fs import DeltaStorageHandler

    class ObjectStoreHandler(DeltaStorageHandler):
        def open_output_stream(self, path: str, metadata: Any = None) -> pa.PythonFile:
            sink = _BytesSink(self._handler.open_output_stream(path, metadata))
            return pa.PythonFile(sink, mode="w")

        def delete_dir_contents(
            self, path: str, missing_dir_ok: bool = False, *, accept_root_dir: bool = False
        ) -> None:
            self._handler.delete_dir_contents(
                path=path, accept_root_dir=accept_root_dir, missing_dir_ok=missing_dir_ok
            )

    return ObjectStoreHandler
