"""Local files (plain paths and file:// URIs)."""

from __future__ import annotations

import builtins
import os
import shutil
import stat as statmode
from collections.abc import Iterator

from lookalike.io.base import AtomicFile, Entry, Storage, StorageError, hidden_name
from lookalike.io.uris import file_uri, local_path, utf8_name


def _path(uri: str) -> str:
    return os.path.abspath(os.path.expanduser(local_path(uri)))


def _entry(key: str, path: str, info: os.stat_result) -> Entry:
    return Entry(key, file_uri(path), info.st_size, f"{info.st_size}-{info.st_mtime_ns}")


def _failed(what: str, path: str, exc: OSError) -> StorageError:
    return StorageError("fetch_error", f"cannot {what} {path}: {exc.strerror or exc}")


class LocalStorage(Storage):
    def list(self, uri: str) -> Iterator[Entry]:
        root = _path(uri)
        if os.path.isfile(root):
            yield _entry(os.path.basename(root), root, os.stat(root))
            return
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                # The uri names the file exactly; the key (and so the item id) must be text.
                key = utf8_name(os.path.relpath(path, root).replace(os.sep, "/"))
                try:
                    info = os.stat(path)
                except FileNotFoundError:
                    if os.path.islink(path):  # a dangling link: listed, so that its fetch says so
                        yield Entry(key, file_uri(path), None, None)
                    continue  # removed while listing
                except OSError:
                    # A link loop (ELOOP), a file we may not stat (EACCES): listed without size or
                    # version; fetching it fails with the reason, which becomes its error row.
                    yield Entry(key, file_uri(path), None, None)
                    continue
                yield _entry(key, path, info)

    def list_dirs(self, uri: str) -> builtins.list[str]:  # builtins: ``list`` here is the method above
        try:
            with os.scandir(_path(uri)) as entries:
                return sorted(e.name for e in entries if e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def exists(self, uri: str) -> bool:
        return os.path.exists(_path(uri))

    def stat(self, uri: str) -> Entry | None:
        path = _path(uri)
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _failed("stat", path, exc) from None
        return _entry(os.path.basename(path), path, info) if statmode.S_ISREG(info.st_mode) else None

    def read(self, uri: str, max_bytes: int) -> bytes:
        path = _path(uri)
        try:
            info = os.stat(path)
            if statmode.S_ISDIR(info.st_mode):
                raise StorageError("not_found", "the path is a directory")
            if not statmode.S_ISREG(info.st_mode):
                # Opening a FIFO would block the task forever.
                raise StorageError("unsupported", "not a regular file (a FIFO, socket or device)")
            if info.st_size > max_bytes:
                raise StorageError("too_large", f"{info.st_size} bytes is more than input.max_bytes={max_bytes}")
            with open(path, "rb") as handle:
                # Not read(max_bytes + 1): Python allocates what it is asked for up front.
                want = info.st_size + 1
                data = handle.read(want)
                if len(data) == want:  # it grew since stat(): read on, still capped
                    data += handle.read(max_bytes + 1 - want)
            if len(data) > max_bytes:
                raise StorageError("too_large", f"more than input.max_bytes={max_bytes} bytes")
            return data
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(path):
                raise StorageError(
                    "not_found", f"a symbolic link to {os.readlink(path)}, which does not exist"
                ) from None
            raise StorageError("not_found", "the file no longer exists (deleted after listing?)") from None
        except IsADirectoryError:
            raise StorageError("not_found", "the path is a directory") from None
        except OSError as exc:
            raise StorageError("fetch_error", f"cannot read the file: {exc.strerror or exc}") from None

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        path = _path(uri)
        try:
            with open(path, "rb") as handle:
                handle.seek(start)
                return handle.read(max(0, length))
        except (FileNotFoundError, NotADirectoryError):
            raise StorageError("not_found", f"no such file: {path}") from None
        except OSError as exc:
            raise _failed("read", path, exc) from None

    def open_write(self, uri: str) -> AtomicFile:
        return _RenameOnCommit(_path(uri))

    def upload(self, source: str, uri: str) -> None:
        with self.open_write(uri) as out, open(source, "rb") as data:
            shutil.copyfileobj(data, out.file, 1 << 20)

    def download(self, uri: str, target: str) -> None:
        path = _path(uri)
        try:
            shutil.copyfile(path, target)
        except FileNotFoundError:
            raise StorageError("not_found", f"no such file: {path}") from None
        except OSError as exc:
            raise _failed("copy", path, exc) from None

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        path = _path(uri)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _failed("create", path, exc) from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # a lock that vanishes in a power cut protects nothing
        return True

    def delete(self, uri: str) -> None:
        path = _path(uri)
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _failed("delete", path, exc) from None

    def delete_prefix(self, uri: str) -> None:
        shutil.rmtree(_path(uri), ignore_errors=True)

    def make_dirs(self, uri: str) -> None:
        path = _path(uri)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise _failed("create the directory", path, exc) from None


class _RenameOnCommit(AtomicFile):
    """Written under a hidden name beside the target, renamed over it."""

    def __init__(self, path: str):
        self.uri = path
        parent, name = os.path.split(path)
        self.temp = os.path.join(parent, hidden_name(name))
        try:
            os.makedirs(parent, exist_ok=True)
            self.file = open(self.temp, "wb")
        except OSError as exc:
            raise _failed("write", path, exc) from None

    def _put_in_place(self) -> None:
        os.replace(self.temp, self.uri)  # rename(2): readers see the old file or the new one

    def _discard(self) -> None:
        try:
            os.remove(self.temp)
        except FileNotFoundError:
            pass
