"""Which files of a table readers read: the read side of what publish/ commits.

Every table lookalike publishes is an Apache Iceberg table at its location. After each commit the
driver writes ``<location>/metadata/version-hint.text`` naming the current metadata file (the
convention of Iceberg's file-system tables: pyiceberg's ``StaticTable`` and DuckDB's
``iceberg_scan`` read it), so a reader that has the location alone finds the current snapshot; the
catalog names the same metadata file for readers that go by name (Athena, Spark, Trino).

Also accepted wherever a table is read, each read as it is and named in the log:

- a table an earlier lookalike published (versions in ``.<name>.versions/``, the current one behind a
  symbolic link at the location, or named by ``<location>/_LATEST`` on S3 and HDFS); the first run
  that publishes the table carries it over (publish/outputs.py);
- a directory of plain Parquet files written by another tool (or by an older lookalike).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field

from lookalike.config import S3Config
from lookalike.errors import InputError, storage_failure
from lookalike.io.storage import StorageError, storage_for
from lookalike.io.uris import file_uri, is_hadoop, is_s3, local_path

log = logging.getLogger(__name__)

HINT = "metadata/version-hint.text"
LATEST = "_LATEST"  # an earlier lookalike's pointer to the current version on S3 and HDFS
LEGACY_SUMMARY = "_lookalike_summary.json"
# Snapshot summary properties lookalike writes with each commit.
SUMMARY_PROPERTY = "lookalike.summary"
RUN_PROPERTY = "lookalike.run-id"
# Small files only: the hint, a pointer, a summary.
_TEXT_MAX_BYTES = 16 * 1024**2
# Not part of a plain Parquet table (as for Spark and pyarrow.dataset): _SUCCESS, _temporary/, .crc.
HIDDEN_PREFIXES = (".", "_")


@dataclass(frozen=True)
class Current:
    """The current content of a table: its data files (URIs, in path order) and what it is."""

    location: str
    files: tuple[str, ...]
    format: str  # "iceberg" | "lookalike-versions" (an earlier lookalike's layout) | "parquet"
    version: str | None = None  # the snapshot id (iceberg) or the version directory's name
    snapshot_id: int | None = None
    summary: dict | None = field(default=None, repr=False)  # the run summary lookalike wrote with it
    metadata: str | None = None  # iceberg: the current metadata file
    # iceberg: file -> (lowest, highest) item_id, from the manifests (what a point lookup prunes by)
    id_bounds: dict = field(default_factory=dict, repr=False, compare=False)


def file_io_properties(s3: S3Config | None) -> dict[str, str]:
    """pyiceberg's FileIO settings for tables' files: the S3 endpoint and region lookalike uses, so
    that metadata and data go to the same place as every other object the jobs touch."""
    props: dict[str, str] = {"py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO"}
    if s3 is not None and s3.endpoint_url:
        props["s3.endpoint"] = s3.endpoint_url
    region = s3.region if s3 is not None else os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION"))
    if region:
        props["s3.region"] = region
    return props


def read_text(uri: str, s3: S3Config | None) -> str | None:
    """The small text file at ``uri``; None when there is none."""
    try:
        return storage_for(uri, s3).read(uri, _TEXT_MAX_BYTES).decode("utf-8")
    except StorageError as exc:
        if exc.kind in ("not_found", "is_directory"):
            return None
        raise storage_failure(InputError, f"cannot read {uri}: {exc.message}", exc) from None


def current(path: str, s3: S3Config | None = None) -> Current | None:
    """What a reader of the table at ``path`` reads now; None when there is no table there."""
    path = path.rstrip("/") or path
    found = iceberg_table(path, s3)
    if found is not None:
        return found
    legacy = legacy_version(path, s3)
    if legacy is not None:
        where, version = legacy
        log.info("%s is a table an earlier lookalike published (version %s); reading it as it is", path, version)
        summary = _json(read_text(f"{where}/{LEGACY_SUMMARY}", s3), where)
        return Current(path, tuple(_parquet_files(where, s3)), "lookalike-versions", version, None, summary)
    files = _parquet_files(path, s3)
    if any(f.rpartition("/")[0].endswith("/metadata") and f.endswith(".metadata.json") for f in files):
        # An Iceberg table whose hint is missing (its writing failed, or another writer made it).
        metadata = max((f for f in files if f.endswith(".metadata.json")), key=_metadata_number)
        log.info("%s has no %s; reading its newest metadata file %s", path, HINT, metadata)
        return _iceberg(path, metadata, s3)
    if not files:
        return None
    return Current(path, tuple(files), "parquet", summary=_json(read_text(f"{path}/{LEGACY_SUMMARY}", s3), path))


def table_files(path: str, s3: S3Config | None = None) -> tuple:
    """(pyarrow file system, the current data files' paths in it in path order, their item_id
    bounds) of the table at ``path``, for readers without Spark (io/tables.py). FileNotFoundError
    when there is no table."""
    from lookalike.io import arrowfs

    found = current(path, s3)
    if found is None:
        raise FileNotFoundError(path)
    if not found.files:
        return arrowfs.filesystem(path, s3)[0], [], {}
    filesystem = arrowfs.filesystem(found.files[0], s3)[0]
    bounds = {arrowfs.path_in(f): b for f, b in found.id_bounds.items()}
    return filesystem, [arrowfs.path_in(f) for f in found.files], bounds


def iceberg_table(path: str, s3: S3Config | None = None):
    """``Current`` of the Iceberg table at ``path`` as its version hint names it; None without one."""
    hint = read_text(f"{path}/{HINT}", s3)
    if hint is None or not hint.strip():
        return None
    name = hint.strip()
    if not name.endswith(".metadata.json"):
        name = f"v{name}.metadata.json" if name.isdigit() else f"{name}.metadata.json"
    return _iceberg(path, f"{path}/metadata/{name}", s3)


def _iceberg(path: str, metadata: str, s3: S3Config | None) -> Current:
    table = static_table(metadata, s3)
    snapshot = table.current_snapshot()
    if snapshot is None:
        return Current(path, (), "iceberg", metadata=metadata)
    try:
        # Every live data file, empty ones too (a scan plan skips files without rows, but an
        # empty table's one file is what gives its readers the schema).
        entries = [
            entry.data_file
            for manifest in snapshot.manifests(table.io)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
        ]
    except Exception as exc:
        raise _unreadable(path, exc) from None
    files = sorted(f.file_path for f in entries)
    properties = dict(snapshot.summary.additional_properties) if snapshot.summary else {}
    summary = _json(properties.get(SUMMARY_PROPERTY), metadata)
    bounds = _id_bounds(table, entries)
    return Current(
        path, tuple(files), "iceberg", str(snapshot.snapshot_id), snapshot.snapshot_id, summary, metadata, bounds
    )


def _id_bounds(table, data_files) -> dict:
    """file -> (lowest, highest) item_id as the manifests hold them (a string bound may be cut
    short: the lower one to a prefix, the upper one rounded up, so both still bracket the ids)."""
    try:
        field_id = table.schema().find_field("item_id").field_id
    except ValueError:
        return {}
    bounds = {}
    for data_file in data_files:
        low = (data_file.lower_bounds or {}).get(field_id)
        high = (data_file.upper_bounds or {}).get(field_id)
        if low is not None and high is not None:
            bounds[data_file.file_path] = (
                bytes(low).decode("utf-8", "replace"),
                bytes(high).decode("utf-8", "replace"),
            )
    return bounds


def static_table(metadata: str, s3: S3Config | None = None):
    """The Iceberg table whose metadata file is ``metadata``, read without a catalog."""
    from pyiceberg.table import StaticTable

    try:
        return StaticTable.from_metadata(metadata, properties=file_io_properties(s3))
    except Exception as exc:
        raise _unreadable(metadata, exc) from None


def _unreadable(where: str, exc: Exception) -> Exception:
    from lookalike.errors import InputUnavailableError
    from lookalike.io import arrowfs
    from lookalike.io.redact import redact

    text = " ".join(str(exc).split())[:300]
    error = InputUnavailableError if arrowfs.is_transient(text) else InputError
    return error(f"cannot read the Iceberg table metadata at {where}: {type(exc).__name__}: {redact(text)}")


def legacy_version(path: str, s3: S3Config | None = None) -> tuple[str, str] | None:
    """(directory, version id) of the current version of a table an earlier lookalike published at
    ``path``, or left beside it when this lookalike carried it over; None when there is none."""
    if is_s3(path) or is_hadoop(path):
        text = read_text(f"{path}/{LATEST}", s3)
        if text is None:
            text = read_text(legacy_pointer(path), s3)
        target = (text or "").strip().rstrip("/")
        parent, _, name = path.rpartition("/")
        if target and target.rpartition("/")[0] == f"{parent}/.{name}.versions":
            return target, target.rpartition("/")[2]
        return None
    local = os.path.abspath(os.path.expanduser(local_path(path)))
    parent, name = os.path.split(local)
    for link in (local, legacy_pointer(local)):
        if os.path.islink(link):
            target = os.path.realpath(link)
            if os.path.dirname(target) == os.path.realpath(os.path.join(parent, f".{name}.versions")):
                shown = file_uri(target) if path.startswith("file://") else target
                return shown, os.path.basename(target)
    return None


def legacy_pointer(path: str) -> str:
    """Where publishing moves an earlier lookalike's pointer when it carries the table over: beside
    the location, so the location holds the Iceberg table alone and the old version stays findable."""
    parent, separator, name = path.rstrip("/").rpartition("/")
    return f"{parent}{separator}.{name}.legacy"


def _parquet_files(uri: str, s3: S3Config | None) -> list[str]:
    """The Parquet data files under ``uri`` (or ``uri`` itself when it is a file), in path order."""
    base = uri.rstrip("/") + "/"
    try:
        entries = list(storage_for(uri, s3).list(uri))
    except StorageError as exc:
        if exc.kind == "not_found":
            return []
        raise storage_failure(InputError, f"cannot list {uri}: {exc.message}", exc) from None
    if len(entries) == 1 and entries[0].key == uri.rstrip("/").rpartition("/")[2]:
        return [entries[0].uri]  # uri is the file itself
    return sorted(
        e.uri for e in entries if not any(part.startswith(HIDDEN_PREFIXES) for part in e.uri[len(base) :].split("/"))
    )


def _text(bound) -> str:
    return bytes(bound).decode("utf-8", "replace")


def _metadata_number(uri: str) -> int:
    """The version a metadata file's name starts with (``00003-<uuid>.metadata.json``, ``v3.metadata.json``)."""
    digits = re.match(r"v?(\d+)", uri.rpartition("/")[2])
    return int(digits.group(1)) if digits else -1


def _json(text: str | None, where: str) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("the run summary at %s is not valid JSON; ignoring it", where)
        return None
    return value if isinstance(value, dict) else None
