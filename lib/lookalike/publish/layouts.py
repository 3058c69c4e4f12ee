"""Where the versions of one output live, and how readers are switched to a new one.

Layout of an output ``<dir>/<name>`` (a local path, s3:// or hdfs:// URI):

    <dir>/.<name>.versions/<run_id>/   one complete version per run: Parquet + _lookalike_summary.json
    <dir>/.<name>.lock                 exists while a run writes <name>: host, pid, run id, start time
    local:    <dir>/<name> -> .<name>.versions/<run_id>   a relative symlink, replaced by rename(2)
    s3, hdfs: <dir>/<name>/_LATEST                         the current version's URI, written last

Tables written by earlier releases are in this layout; it must not change.

The local layout stays a symlink switched by rename(2) rather than a pointer file through the
storage layer: that is what lets any local reader (Spark, pandas, a shell) keep reading
``<dir>/<name>`` as a plain directory, and it is a publish semantic, not a storage operation, so it
lives here. Object stores have no symlinks or atomic directory renames; there the pointer object is
written through the storage layer (io/storage.py).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import shutil

from lookalike.config import S3Config
from lookalike.errors import OutputError
from lookalike.io.current import LATEST, LocalVersions, PointerVersions, read_text
from lookalike.io.current import checked as _checked
from lookalike.io.storage import Storage, storage_for
from lookalike.io.uris import is_hadoop, is_s3

log = logging.getLogger(__name__)

SUMMARY = "_lookalike_summary.json"


class _Layout:
    """What both layouts do the same way through their storage: the lock file and the summary.
    A layout sets ``storage``, ``lock`` and ``version_path``."""

    storage: Storage
    lock: str

    def version_path(self, version: str) -> str:
        raise NotImplementedError

    def put_text(self, version: str, name: str, text: str) -> None:
        target = f"{self.version_path(version).rstrip('/')}/{name}"
        _checked("write", target, self.storage.write, target, text.encode("utf-8"))

    def lock_create(self, text: str) -> bool:
        return _checked("create the lock", self.lock, self.storage.create_exclusive, self.lock, text.encode("utf-8"))

    def lock_read(self) -> str | None:
        return read_text(self.storage, self.lock)

    def lock_delete(self) -> None:
        _checked("remove the lock", self.lock, self.storage.delete, self.lock)


class LocalLayout(LocalVersions, _Layout):
    """A local output: versions are sibling directories, the output path is a symlink to one
    (finding the current one: io/current.py)."""

    def __init__(self, path: str):
        super().__init__(path)
        self.lock = os.path.join(self.parent, f".{self.name}.lock")

    def check(self) -> None:
        if os.path.islink(self.path):
            if self.current() is None:
                raise OutputError(
                    f"output {self.shown} is a symbolic link to {os.readlink(self.path)}, which lookalike "
                    f"did not make; remove the link or choose another output path"
                )
        elif os.path.isdir(self.path):
            names = sorted(os.listdir(self.path))
            foreign = [n for n in names if not _table_file(os.path.join(self.path, n))]
            if foreign or SUMMARY not in names:
                shown = foreign or names
                holds = f"it holds {', '.join(shown[:3])}{' ...' if len(shown) > 3 else ''}" if shown else "it is empty"
                raise OutputError(
                    f"output {self.shown} is a directory lookalike did not write ({holds}); lookalike "
                    f"never writes into, moves or deletes what it did not write: choose a path that "
                    f"does not exist yet, or move the directory away"
                )
            log.warning(
                "output %s is a plain directory from an older layout; it becomes the previous "
                "version (%s/legacy-...) when this run publishes",
                self.shown,
                self.versions,
            )
        elif os.path.lexists(self.path):
            raise OutputError(
                f"output {self.shown} is a file, not a directory; move it away or choose another output path"
            )

    def prepare_staging(self, version: str) -> str:
        # Only the parent: Spark's default save mode refuses a target directory that exists.
        os.makedirs(self.versions, exist_ok=True)
        return self.version_path(version)

    def staged(self, version: str) -> bool:
        path = self.version_path(version)
        return os.path.isdir(path) and any(n != SUMMARY for n in os.listdir(path))

    def switch(self, version: str) -> str | None:
        """Point the output at ``version``; returns the version it replaced (kept as the previous)."""
        previous = self.current()
        if os.path.isdir(self.path) and not os.path.islink(self.path):
            # An older layout: move it into the versions (same file system, one rename). Readers
            # miss the path between this rename and the next one; this happens once per output.
            previous = "legacy-" + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            os.rename(self.path, self.version_path(previous))
        link = os.path.join(self.parent, f".{self.name}.link-{version}")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.join(f".{self.name}.versions", version), link)
        os.replace(link, self.path)  # the one step readers can observe
        _fsync_dir(self.parent)
        return previous

    def remove_version(self, version: str) -> None:
        # Rename first: a reader still inside this version then fails on its next file instead of
        # reading the part that rmtree has not reached yet.
        doomed = os.path.join(self.versions, version if version.startswith(".deleting-") else f".deleting-{version}")
        try:
            os.rename(self.version_path(version), doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def remove_debris(self) -> None:
        prefix = f".{self.name}.link-"
        for entry in os.listdir(self.parent):
            if entry.startswith(prefix):
                os.remove(os.path.join(self.parent, entry))


def _table_file(path: str) -> bool:
    """A file an earlier lookalike run left in a plain table directory: Spark's data files, its
    _SUCCESS marker, their .crc checksums, and lookalike's own files. Anything else (a user's file,
    a subdirectory, another table's file) means the directory is not ours."""
    name = os.path.basename(path)
    if name.startswith(".") and name.endswith(".crc"):
        name = name[1:-4]
    ours = name.startswith("part-") or name == "_SUCCESS" or name.startswith("_lookalike_")
    return ours and os.path.isfile(path) and not os.path.islink(path)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


class PointerLayout(PointerVersions, _Layout):
    """An output on S3 or HDFS: no atomic directory rename there, so a small pointer object
    ``<path>/_LATEST`` names the current version and is written after the version is complete
    (reading it: io/current.py)."""

    def __init__(self, path: str, storage: Storage):
        super().__init__(path, storage)
        self.lock = f"{self.parent}/.{self.name}.lock"

    def _keys(self, uri: str, limit: int) -> list[str]:
        return _checked("list", uri, lambda: [e.uri for e in itertools.islice(self.storage.list(uri), limit)])

    def check(self) -> None:
        # Hidden names are our own (an HDFS pointer being replaced), never an older layout's.
        others = [
            k
            for k in self._keys(self.path, 5)
            if not k.rpartition("/")[2].startswith(".") and k.rpartition("/")[2] != LATEST
        ]
        if others:
            raise OutputError(
                f"output {self.shown} holds objects from an older layout (e.g. {others[0]}); a run "
                f"publishes by writing {self.pointer} and would leave them behind. Move them away "
                f"(aws s3 mv --recursive {self.path}/ {self.path}-old/) or choose another output path"
            )

    def prepare_staging(self, version: str) -> str:
        _checked("create", self.versions, self.storage.make_dirs, self.versions)
        return self.version_path(version)

    def staged(self, version: str) -> bool:
        return any(k.rpartition("/")[2] != SUMMARY for k in self._keys(self.version_path(version), 2))

    def switch(self, version: str) -> str | None:
        previous = self.current()
        # One PUT on S3 (readers see the old pointer or the new one); on HDFS a move that
        # replaces the old file in two steps, which resolve() rides out.
        _checked(
            "write", self.pointer, self.storage.write, self.pointer, (self.version_path(version) + "\n").encode("utf-8")
        )
        return previous

    def remove_version(self, version: str) -> None:
        _checked("delete", self.version_path(version), self.storage.delete_prefix, self.version_path(version))

    def remove_debris(self) -> None:
        pass


def layout_for(path: str, s3: S3Config | None = None) -> LocalLayout | PointerLayout:
    """The layout of the output at ``path``: a LocalLayout or a PointerLayout."""
    if is_s3(path) or is_hadoop(path):
        return PointerLayout(path, storage_for(path, s3))
    return LocalLayout(path)
