"""A pyarrow file system for reading the jobs' Parquet tables, so that pyarrow datasets read S3
through this package's storage layer instead of pyarrow's own S3 client.

pyarrow's S3FileSystem runs the AWS C++ SDK with its own retry strategy (3 attempts, whatever
s3.max_attempts says), its own credential chain and no body-cut retry. Here pyarrow sees a
``PyFileSystem`` whose files are read with ranged GETs through :class:`~lookalike.io.s3.S3Storage`,
so the tools honour s3.max_attempts, s3.retry_mode and the timeouts exactly as the jobs do.
Local and Hadoop tables use pyarrow's native file systems: they have no such settings to honour.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

from pyarrow import fs as pafs

from lookalike.config import S3Config
from lookalike.io.storage import Storage, StorageError, storage_for
from lookalike.io.uris import is_hadoop, is_s3, local_path, split_s3

# Parquet reads come as a footer and then column chunks; reading ahead this much turns the small
# reads of one row group into one GET (S3 latency, not bandwidth, dominates at this size).
READ_AHEAD = 1 << 20


def filesystem(uri: str, s3: Optional[S3Config] = None):
    """(pyarrow FileSystem, path in it) for reading the file or directory at ``uri``."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        handler = StorageHandler(storage_for(uri, s3 or S3Config()))
        return pafs.PyFileSystem(handler), f"{bucket}/{key}".rstrip("/")
    if is_hadoop(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local_path(uri)))


class _RangedReader:
    """A random-access read-only file over ranged reads, for ``pyarrow.PythonFile``."""

    def __init__(self, storage: Storage, uri: str, size: int):
        self.storage, self.uri, self.length = storage, uri, size
        self.position = 0
        self.closed = False
        self.mode = "rb"
        self._block_start, self._block = 0, b""
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.position

    def size(self) -> int:
        return self.length

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.length}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read(self, nbytes: int = -1) -> bytes:
        with self._lock:
            end = self.length if nbytes is None or nbytes < 0 else min(self.length, self.position + nbytes)
            data = self._range(self.position, end)
            self.position += len(data)
            return data

    def _range(self, start: int, end: int) -> bytes:
        if start >= end:
            return b""
        block_end = self._block_start + len(self._block)
        if not (self._block_start <= start and end <= block_end):
            # A window of READ_AHEAD around the read, kept inside the file: the footer read at
            # the end then brings the last row groups along, and a small file comes in one GET.
            low = max(0, min(start, self.length - READ_AHEAD))
            high = max(end, low + READ_AHEAD)
            self._block_start, self._block = low, self.storage.read_range(self.uri, low, high - low)
            block_end = low + len(self._block)
            if end > block_end:  # the object shrank under us: say so rather than return garbage
                raise OSError(f"{self.uri}: expected {end - start} bytes at offset {start}, "
                              f"got {block_end - start} (was the table rewritten while reading?)")
        return self._block[start - self._block_start:end - self._block_start]

    def close(self) -> None:
        self.closed = True
        self._block = b""


class StorageHandler(pafs.FileSystemHandler):
    """pyarrow's FileSystemHandler over a Storage whose paths are 'bucket/key' (read-only)."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._sizes: dict[str, int] = {}  # from listings: opening a listed file needs no HEAD

    def _uri(self, path: str) -> str:
        return "s3://" + path.lstrip("/")

    def __eq__(self, other) -> bool:
        return isinstance(other, StorageHandler) and getattr(other.storage, "s3", None) == getattr(self.storage, "s3", None)

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "lookalike-s3"

    def normalize_path(self, path: str) -> str:
        return path

    def _info(self, path: str):
        try:
            entry = self.storage.stat(self._uri(path))
            if entry is not None:
                return pafs.FileInfo(path, pafs.FileType.File, size=entry.size)
            kind = pafs.FileType.Directory if self.storage.exists(self._uri(path)) else pafs.FileType.NotFound
        except StorageError as exc:
            raise OSError(exc.message) from None
        return pafs.FileInfo(path, kind)

    def get_file_info(self, paths):
        return [self._info(p) for p in paths]

    def get_file_info_selector(self, selector):
        base = selector.base_dir.rstrip("/")
        try:
            entries = list(self.storage.list(self._uri(base)))
        except StorageError as exc:
            raise OSError(exc.message) from None
        entries = [e for e in entries if e.uri != self._uri(base)]  # the base itself is no child
        if not entries:
            if selector.allow_not_found:
                return []
            raise FileNotFoundError(f"no such directory: {self._uri(base)}")
        infos, seen = [], set()
        for entry in entries:
            parts = entry.key.split("/")
            depth = len(parts) if selector.recursive else 1
            for level in range(1, min(depth, len(parts) - 1) + 1):  # the "directories" on the way
                directory = "/".join(parts[:level])
                if directory not in seen:
                    seen.add(directory)
                    infos.append(pafs.FileInfo(f"{base}/{directory}", pafs.FileType.Directory))
            if selector.recursive or len(parts) == 1:
                infos.append(pafs.FileInfo(f"{base}/{entry.key}", pafs.FileType.File, size=entry.size))
                if entry.size is not None:
                    self._sizes[f"{base}/{entry.key}"] = entry.size
        return infos

    def open_input_file(self, path: str):
        import pyarrow as pa

        size = self._sizes.get(path)
        if size is None:
            try:
                entry = self.storage.stat(self._uri(path))
            except StorageError as exc:
                raise OSError(exc.message) from None
            if entry is None:
                raise FileNotFoundError(f"no such object: {self._uri(path)}")
            size = entry.size or 0
        return pa.PythonFile(_RangedReader(self.storage, self._uri(path), size), mode="r")

    def open_input_stream(self, path: str):
        return self.open_input_file(path)

    def _read_only(self, *args, **kwargs):
        raise OSError("this file system only reads tables; writes go through lookalike.io.storage")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only
