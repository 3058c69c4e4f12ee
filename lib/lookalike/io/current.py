"""Which version of a published table a reader reads: the read side of the version layout.

publish/ writes each run's table into ``<dir>/.<name>.versions/<run_id>/`` and switches readers to
it (publish/layouts.py describes the layout and does the switching); anything that reads a table
(the tools' io/tables.py, users' Spark jobs through ``lookalike.publish.resolve``) follows the
switch with :func:`resolve`. It lives here, below publish/, so that readers need nothing that
writes.

    local:    <dir>/<name> -> .<name>.versions/<run_id>   a relative symlink
    s3, hdfs: <dir>/<name>/_LATEST                         the current version's URI
"""

from __future__ import annotations

import os
import time

from lookalike.config import S3Config
from lookalike.errors import OutputError, storage_failure
from lookalike.io.local import LocalStorage
from lookalike.io.storage import Storage, StorageError, storage_for
from lookalike.io.uris import file_uri, is_hadoop, is_s3, local_path, split_s3

LATEST = "_LATEST"
# Small files only: the pointer, a lock, a summary.
_TEXT_MAX_BYTES = 16 * 1024**2


def read_text(storage: Storage, uri: str) -> str | None:
    """The small text file at ``uri``; None when there is none."""
    try:
        return storage.read(uri, _TEXT_MAX_BYTES).decode("utf-8")
    except StorageError as exc:
        if exc.kind == "not_found":
            return None
        raise OutputError(f"cannot read {uri}: {exc.message}") from None


def checked(what: str, uri: str, operation, *args):
    """``operation(*args)``, its StorageError an OutputError that says what could not be done."""
    try:
        return operation(*args)
    except StorageError as exc:
        raise storage_failure(OutputError, f"cannot {what} {uri}: {exc.message}", exc) from None


class LocalVersions:
    """A local output: versions are sibling directories, the output path is a symlink to one."""

    def __init__(self, path: str):
        self.shown = path
        self.path = os.path.abspath(os.path.expanduser(local_path(path))).rstrip("/")
        self.parent, self.name = os.path.split(self.path)
        if not self.name:
            raise OutputError(f"output path {path!r} has no name; use a directory such as output/embeddings")
        self.versions = os.path.join(self.parent, f".{self.name}.versions")
        self.storage: Storage = LocalStorage()

    def version_path(self, version: str) -> str:
        return os.path.join(self.versions, version)

    def current(self) -> str | None:
        if not os.path.islink(self.path):
            return None
        target = os.path.realpath(self.path)
        if os.path.dirname(target) != os.path.realpath(self.versions):
            return None
        return os.path.basename(target)

    def read_location(self) -> str:
        if self.current() is None:
            return self.shown
        real = os.path.realpath(self.path)
        return file_uri(real) if self.shown.startswith("file://") else real

    def versions_list(self) -> list[str]:
        return sorted(os.listdir(self.versions)) if os.path.isdir(self.versions) else []


class PointerVersions:
    """An output on S3 or HDFS: no atomic directory rename there, so a small pointer object
    ``<path>/_LATEST`` names the current version and is written after the version is complete."""

    def __init__(self, path: str, storage: Storage):
        self.shown = path
        self.path = path.rstrip("/")
        if is_s3(self.path) and not split_s3(self.path)[1]:
            raise OutputError(f"output {path!r} is a bucket; use a prefix such as s3://bucket/lookalike/embeddings")
        self.parent, _, self.name = self.path.rpartition("/")
        self.versions = f"{self.parent}/.{self.name}.versions"
        self.pointer = f"{self.path}/{LATEST}"
        self.storage = storage

    def version_path(self, version: str) -> str:
        return f"{self.versions}/{version}"

    def _pointed(self) -> str | None:
        text = read_text(self.storage, self.pointer)
        return text.strip().rstrip("/") if text and text.strip() else None

    def current(self) -> str | None:
        target = self._pointed()
        if target is None or target.rpartition("/")[0] != self.versions:
            return None
        return target.rpartition("/")[2]

    def read_location(self) -> str:
        return self._pointed() or self.shown

    def versions_list(self) -> list[str]:
        return checked("list", self.versions, self.storage.list_dirs, self.versions)


def versions_for(path: str, s3: S3Config | None = None) -> LocalVersions | PointerVersions:
    if is_s3(path) or is_hadoop(path):
        return PointerVersions(path, storage_for(path, s3))
    return LocalVersions(path)


def resolve(path: str, s3: S3Config | None = None) -> str:
    """The location readers should read for the current version of the table at ``path``.

    Local outputs resolve to the version directory behind the symlink (so that a read started now
    keeps one version even if a run publishes meanwhile); S3/HDFS outputs to the URI in
    ``_LATEST``. A path without a published version (older layout, or missing) is returned as is.
    """
    versions = versions_for(path, s3)
    target = versions.read_location()
    if target == versions.shown and isinstance(versions, PointerVersions) and is_hadoop(path):
        # HDFS replaces the pointer in two steps: versions without a pointer means we looked in
        # between; look again.
        for _ in range(10):
            if not versions.versions_list():
                break
            time.sleep(0.2)
            target = versions.read_location()
            if target != versions.shown:
                break
    return target


def current_version(path: str, s3: S3Config | None = None) -> str | None:
    """The version id (the run id of the run that published it) at ``path``; None if none."""
    return versions_for(path, s3).current()
