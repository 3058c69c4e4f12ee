"""What every storage backend implements (:class:`Storage`, :class:`AtomicFile`) and what they
return and raise (:class:`Entry`, :class:`StorageError`). storage.py chooses a backend for a URI;
the backends (local.py, s3.py, hadoop.py) import only this module, so nothing points back up.
"""

from __future__ import annotations

import builtins
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO


class StorageError(Exception):
    """One operation failed. ``kind``: ``not_found``, ``too_large`` (over a read's max_bytes),
    ``unsupported`` (not a regular file) or ``fetch_error`` (anything else; the name is the
    error row kind images have always had). ``message`` never holds credentials. ``transient``:
    the service failed (5xx, throttling, timeouts, dropped connections) after the configured
    retries, so the same call may succeed later; a missing file or a refused permission is not."""

    def __init__(self, kind: str, message: str, transient: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class Entry:
    """A file: its ``key`` relative to the URI that was listed ('/'-separated; the file's name
    when that URI is the file itself), its full ``uri``, ``size`` in bytes and ``version`` (the S3
    ETag, or size-mtime elsewhere: what incremental runs compare)."""

    key: str
    uri: str
    size: int | None
    version: str | None


class AtomicFile(ABC):
    """A file being written: ``file`` takes the bytes; nothing appears under the final name until
    :meth:`commit`, and :meth:`abort` leaves no trace. As a context manager it commits on success
    and aborts on an exception. A backend says only how the closed temporary file is put in place
    and how it is discarded."""

    file: BinaryIO  # a writable binary file object; each backend opens it in __init__
    uri = ""  # the final name, for messages

    @abstractmethod
    def _put_in_place(self) -> None:
        """Make the closed temporary file the file at ``uri`` in one step (OSError on failure)."""

    @abstractmethod
    def _discard(self) -> None:
        """Remove the temporary file, if it is still there."""

    def commit(self) -> None:
        try:
            self.file.close()
            self._put_in_place()
        except OSError as exc:
            self.abort()
            raise StorageError(
                "fetch_error", f"cannot write {self.uri}: {getattr(exc, 'strerror', None) or exc}"
            ) from None

    def abort(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        self._discard()

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def hidden_name(name: str) -> str:
    """A name beside ``name`` for writing it: readers (Spark, pyarrow, lookalike) skip '.' files."""
    return f".{name}.{uuid.uuid4().hex[:8]}.tmp"


class Storage(ABC):
    """What lookalike needs from a file system or object store. URIs are full URIs."""

    @abstractmethod
    def list(self, uri: str) -> Iterator[Entry]:
        """Every file under ``uri``, recursively, or the file ``uri`` itself. Nothing for a missing
        ``uri``: S3 cannot tell a missing prefix from an empty one, so no backend does."""

    @abstractmethod
    def list_dirs(self, uri: str) -> builtins.list[str]:  # builtins: ``list`` here is the method above
        """The names of the immediate sub-directories of ``uri`` (S3: common prefixes), sorted."""

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """A file or a directory at ``uri`` (S3: an object, or any object under the prefix)."""

    @abstractmethod
    def stat(self, uri: str) -> Entry | None:
        """The file at ``uri``; None when there is no file there (a directory is not one)."""

    @abstractmethod
    def read(self, uri: str, max_bytes: int) -> bytes:
        """The whole file; StorageError not_found, too_large (over ``max_bytes``), unsupported
        (a FIFO or device) or fetch_error."""

    @abstractmethod
    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the file)."""

    @abstractmethod
    def open_write(self, uri: str) -> AtomicFile:
        """A file that appears at ``uri`` complete or not at all, replacing what was there."""

    def write(self, uri: str, data: bytes) -> None:
        """Replace the file at ``uri`` with ``data`` in one step: readers see old or new."""
        with self.open_write(uri) as out:
            out.file.write(data)

    @abstractmethod
    def upload(self, source: str, uri: str) -> None:
        """Copy the local file ``source`` to ``uri``, atomically as :meth:`write`."""

    @abstractmethod
    def download(self, uri: str, target: str) -> None:
        """Copy the file at ``uri`` to the local file ``target`` (the caller renames it into place)."""

    @abstractmethod
    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """Create ``uri`` holding ``data`` unless it exists; False when it does (for locks)."""

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Remove the file at ``uri``; a missing file is not an error."""

    @abstractmethod
    def delete_prefix(self, uri: str) -> None:
        """Remove everything under ``uri`` (a directory, or an S3 prefix); missing is fine."""

    @abstractmethod
    def make_dirs(self, uri: str) -> None:
        """Create the directory ``uri`` and its parents (nothing to do on S3)."""
