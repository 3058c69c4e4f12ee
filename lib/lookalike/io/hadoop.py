"""HDFS and other Hadoop file systems, through pyarrow.fs (libhdfs, as Spark's Hadoop uses).

Any URI pyarrow opens works, file:// included; the tests run this code on pyarrow's local file
system because no HDFS runs there.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator

from lookalike.io.base import AtomicFile, Entry, Storage, StorageError, hidden_name


def _open(uri: str):
    from pyarrow import fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:
        raise StorageError("fetch_error", f"cannot open the file system of {uri}: {exc}") from None


def _failed(what: str, uri: str, exc: Exception) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        return StorageError("not_found", f"no such file: {uri}")
    return StorageError("fetch_error", f"cannot {what} {uri}: {exc}")


def _entry(key: str, uri: str, info) -> Entry:
    mtime = info.mtime_ns if info.mtime_ns is not None else ""
    return Entry(key, uri, info.size, f"{info.size}-{mtime}")


class HadoopStorage(Storage):
    def _infos(self, uri: str, recursive: bool):
        from pyarrow import fs as pafs

        filesystem, path = _open(uri)
        try:
            return filesystem.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True)), path
        except OSError as exc:
            raise _failed("list", uri, exc) from None

    def _info(self, uri: str):
        filesystem, path = _open(uri)
        try:
            return filesystem.get_file_info(path)
        except OSError as exc:
            raise _failed("stat", uri, exc) from None

    def list(self, uri: str) -> Iterator[Entry]:
        from pyarrow import fs as pafs

        base = uri.rstrip("/")
        info = self._info(uri)
        if info.type == pafs.FileType.File:
            yield _entry(base.rsplit("/", 1)[-1], base, info)
            return
        if info.type != pafs.FileType.Directory:
            return
        infos, root = self._infos(uri, True)
        for info in infos:
            if info.type == pafs.FileType.File:
                rel = info.path[len(root.rstrip("/")) + 1 :]
                yield _entry(rel, f"{base}/{rel}", info)

    def list_dirs(self, uri: str) -> builtins.list[str]:  # builtins: ``list`` here is the method above
        from pyarrow import fs as pafs

        infos, _ = self._infos(uri, False)
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)

    def exists(self, uri: str) -> bool:
        from pyarrow import fs as pafs

        return self._info(uri).type != pafs.FileType.NotFound

    def stat(self, uri: str) -> Entry | None:
        from pyarrow import fs as pafs

        info = self._info(uri)
        return _entry(info.base_name, uri, info) if info.type == pafs.FileType.File else None

    def read(self, uri: str, max_bytes: int) -> bytes:
        from pyarrow import fs as pafs

        filesystem, path = _open(uri)
        try:
            info = filesystem.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise StorageError("not_found", "the file no longer exists")
            if info.type != pafs.FileType.File:
                raise StorageError("not_found", "the path is a directory")
            if info.size is not None and info.size > max_bytes:
                raise StorageError("too_large", f"{info.size} bytes is more than input.max_bytes={max_bytes}")
            with filesystem.open_input_stream(path) as stream:
                data = stream.read()
        except OSError as exc:
            raise _failed("read", uri, exc) from None
        if len(data) > max_bytes:
            raise StorageError("too_large", f"more than input.max_bytes={max_bytes} bytes")
        return data

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        filesystem, path = _open(uri)
        try:
            with filesystem.open_input_file(path) as handle:
                available = max(0, min(length, handle.size() - start))
                return handle.read_at(available, start) if available else b""
        except OSError as exc:
            raise _failed("read", uri, exc) from None

    def open_write(self, uri: str) -> AtomicFile:
        return _MoveOnCommit(uri)

    def upload(self, source: str, uri: str) -> None:
        with self.open_write(uri) as out, open(source, "rb") as data:
            while True:
                block = data.read(1 << 22)
                if not block:
                    break
                out.file.write(block)

    def download(self, uri: str, target: str) -> None:
        filesystem, path = _open(uri)
        try:
            with filesystem.open_input_stream(path) as stream, open(target, "wb") as out:
                while True:
                    block = stream.read(1 << 22)
                    if not block:
                        break
                    out.write(block)
        except OSError as exc:
            raise _failed("read", uri, exc) from None

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        # pyarrow has no create-if-absent; check, write, read back (a narrow race, documented).
        if self.stat(uri) is not None:
            return False
        self.write(uri, data)
        try:
            return self.read(uri, len(data) + 1) == data
        except StorageError:
            return False

    def delete(self, uri: str) -> None:
        filesystem, path = _open(uri)
        try:
            filesystem.delete_file(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _failed("delete", uri, exc) from None

    def delete_prefix(self, uri: str) -> None:
        filesystem, path = _open(uri)
        try:
            filesystem.delete_dir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _failed("delete", uri, exc) from None

    def make_dirs(self, uri: str) -> None:
        filesystem, path = _open(uri)
        try:
            filesystem.create_dir(path, recursive=True)
        except OSError as exc:
            raise _failed("create the directory", uri, exc) from None


class _MoveOnCommit(AtomicFile):
    """Written under a hidden name in the target's directory, then moved over the target.

    HDFS rename does not replace a file, so the move deletes the old file first (pyarrow's move
    would do the same): a reader looking in between finds no file and must retry, which
    resolve (io/current.py) does for the _LATEST pointer."""

    def __init__(self, uri: str):
        self.uri = uri
        self.filesystem, self.path = _open(uri)
        parent, _, name = self.path.rpartition("/")
        self.temp = f"{parent}/{hidden_name(name)}"
        try:
            self.filesystem.create_dir(parent, recursive=True)
            self.file = self.filesystem.open_output_stream(self.temp)
        except OSError as exc:
            raise _failed("write", uri, exc) from None

    def _put_in_place(self) -> None:
        try:
            self.filesystem.delete_file(self.path)
        except FileNotFoundError:
            pass
        self.filesystem.move(self.temp, self.path)

    def _discard(self) -> None:
        try:
            self.filesystem.delete_file(self.temp)
        except OSError:
            pass
