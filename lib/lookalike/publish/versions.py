"""Publishing outputs: each run writes a new version beside the output, readers are switched to it
in one step, and a lock keeps two runs from writing the same output.

Layout of an output ``<dir>/<name>`` (a local path, s3:// or hdfs:// URI):

    <dir>/.<name>.versions/<run_id>/   one complete version per run: Parquet + _lookalike_summary.json
    <dir>/.<name>.lock                 exists while a run writes <name>: host, pid, run id, start time
    local:    <dir>/<name> -> .<name>.versions/<run_id>   a relative symlink, replaced by rename(2)
    s3, hdfs: <dir>/<name>/_LATEST                         the current version's URI, written last

A run writes into a version directory that no reader knows about yet and publishes it with one
rename (local) or one PUT (S3); readers see the previous complete version or the new one, never a
mix. Local readers can keep reading ``<dir>/<name>``; on S3 and HDFS they call :func:`resolve`.
The current and the previous version are kept, so that a reader that resolved the path just before
a switch can finish; older versions and what crashed runs left behind go at the next publish.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import socket
import time
from typing import Optional

from lookalike.config import S3Config
from lookalike.errors import OutputError, OutputLockedError
from lookalike.io.storage import file_uri, is_hadoop, is_s3, local_path, split_s3

log = logging.getLogger(__name__)

SUMMARY = "_lookalike_summary.json"
LATEST = "_LATEST"
# A lock older than this is called stale in messages; only force_unlock ever removes one.
STALE_LOCK_HOURS = 24.0


# --------------------------------------------------------------------------------------------
# Where the bytes go: a local directory with a symlink, or a pointer object on S3 / HDFS.

class _Local:
    """A local output: versions are sibling directories, the output path is a symlink to one."""

    def __init__(self, path: str):
        self.shown = path
        self.path = os.path.abspath(os.path.expanduser(local_path(path))).rstrip("/")
        self.parent, self.name = os.path.split(self.path)
        if not self.name:
            raise OutputError(f"output path {path!r} has no name; use a directory such as output/embeddings")
        self.versions = os.path.join(self.parent, f".{self.name}.versions")
        self.lock = os.path.join(self.parent, f".{self.name}.lock")

    def version_path(self, version: str) -> str:
        return os.path.join(self.versions, version)

    def current(self) -> Optional[str]:
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

    def check(self) -> None:
        if os.path.islink(self.path):
            if self.current() is None:
                raise OutputError(
                    f"output {self.shown} is a symbolic link to {os.readlink(self.path)}, which lookalike "
                    f"did not make; remove the link or choose another output path")
        elif os.path.isdir(self.path):
            foreign = [n for n in sorted(os.listdir(self.path)) if not _spark_output_name(n)]
            if foreign:
                raise OutputError(
                    f"output {self.shown} is a directory that does not look like a lookalike table "
                    f"(it holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); "
                    f"move it away or choose another output path")
            log.warning("output %s is a plain directory from an older layout; it becomes the previous "
                        "version (%s/legacy-...) when this run publishes", self.shown, self.versions)
        elif os.path.lexists(self.path):
            raise OutputError(f"output {self.shown} is a file, not a directory; move it away or choose "
                              f"another output path")

    def prepare_staging(self, version: str) -> str:
        # Only the parent: Spark's default save mode refuses a target directory that exists.
        os.makedirs(self.versions, exist_ok=True)
        return self.version_path(version)

    def staged(self, version: str) -> bool:
        path = self.version_path(version)
        return os.path.isdir(path) and any(n != SUMMARY for n in os.listdir(path))

    def put_text(self, version: str, name: str, text: str) -> None:
        with open(os.path.join(self.version_path(version), name), "w", encoding="utf-8") as handle:
            handle.write(text)

    def switch(self, version: str) -> Optional[str]:
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

    def versions_list(self) -> list[str]:
        return sorted(os.listdir(self.versions)) if os.path.isdir(self.versions) else []

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

    def lock_create(self, text: str) -> bool:
        os.makedirs(self.parent, exist_ok=True)
        try:
            fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def lock_read(self) -> Optional[str]:
        try:
            with open(self.lock, encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def lock_delete(self) -> None:
        try:
            os.remove(self.lock)
        except FileNotFoundError:
            pass


def _spark_output_name(name: str) -> bool:
    """What Spark, pyarrow and earlier lookalike versions leave in a table directory."""
    return (name.startswith(("part-", "_", ".")) or name.endswith(".parquet")) and "/" not in name


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


class _Pointer:
    """An output on S3 or HDFS: no atomic directory rename there, so a small pointer object
    ``<path>/_LATEST`` names the current version and is written after the version is complete."""

    def __init__(self, path: str, store):
        self.shown = path
        self.path = path.rstrip("/")
        if is_s3(self.path) and not split_s3(self.path)[1]:
            raise OutputError(f"output {path!r} is a bucket; use a prefix such as s3://bucket/lookalike/embeddings")
        parent, _, self.name = self.path.rpartition("/")
        self.versions = f"{parent}/.{self.name}.versions"
        self.lock = f"{parent}/.{self.name}.lock"
        self.pointer = f"{self.path}/{LATEST}"
        self.store = store

    def version_path(self, version: str) -> str:
        return f"{self.versions}/{version}"

    def _pointed(self) -> Optional[str]:
        text = self.store.read(self.pointer)
        return text.strip().rstrip("/") if text and text.strip() else None

    def current(self) -> Optional[str]:
        target = self._pointed()
        if target is None or target.rpartition("/")[0] != self.versions:
            return None
        return target.rpartition("/")[2]

    def read_location(self) -> str:
        return self._pointed() or self.shown

    def check(self) -> None:
        others = [k for k in self.store.keys(self.path, limit=5) if k.rpartition("/")[2] != LATEST]
        if others:
            raise OutputError(
                f"output {self.shown} holds objects from an older layout (e.g. {others[0]}); a run "
                f"publishes by writing {self.pointer} and would leave them behind. Move them away "
                f"(aws s3 mv --recursive {self.path}/ {self.path}-old/) or choose another output path")

    def prepare_staging(self, version: str) -> str:
        self.store.make_dir(self.versions)
        return self.version_path(version)

    def staged(self, version: str) -> bool:
        return any(k.rpartition("/")[2] != SUMMARY for k in self.store.keys(self.version_path(version), limit=2))

    def put_text(self, version: str, name: str, text: str) -> None:
        self.store.write(f"{self.version_path(version)}/{name}", text)

    def switch(self, version: str) -> Optional[str]:
        previous = self.current()
        self.store.replace(self.pointer, self.version_path(version) + "\n")
        return previous

    def versions_list(self) -> list[str]:
        return self.store.list_dirs(self.versions)

    def remove_version(self, version: str) -> None:
        self.store.delete_prefix(self.version_path(version))

    def remove_debris(self) -> None:
        pass

    def lock_create(self, text: str) -> bool:
        return self.store.create_exclusive(self.lock, text)

    def lock_read(self) -> Optional[str]:
        return self.store.read(self.lock)

    def lock_delete(self) -> None:
        self.store.delete(self.lock)


class _S3Store:
    """The few S3 operations publishing needs, through the jobs' boto3 settings."""

    def __init__(self, s3: S3Config):
        from lookalike.io.storage import s3_client

        self.client = s3_client(s3)

    def _call(self, what: str, uri: str, method, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(**kwargs)
        except ClientError as exc:
            raise OutputError(f"cannot {what} {uri}: S3 error {_code(exc) or exc}") from None
        except BotoCoreError as exc:
            raise OutputError(f"cannot {what} {uri}: {type(exc).__name__}") from None

    def read(self, uri: str) -> Optional[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise OutputError(f"cannot read {uri}: S3 error {_code(exc) or exc}") from None
        except BotoCoreError as exc:
            raise OutputError(f"cannot read {uri}: {type(exc).__name__}") from None

    def write(self, uri: str, text: str) -> None:
        bucket, key = split_s3(uri)
        self._call("write", uri, self.client.put_object, Bucket=bucket, Key=key, Body=text.encode("utf-8"))

    # A PUT replaces an object atomically: readers get the old body or the new one.
    replace = write

    def create_exclusive(self, uri: str, text: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            # Conditional write: S3 itself refuses the second of two concurrent creators.
            self.client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), IfNoneMatch="*")
            return True
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            if _code(exc) not in ("NotImplemented", "501"):
                raise OutputError(f"cannot create the lock {uri}: S3 error {_code(exc) or exc}") from None
        # S3-compatible servers without conditional writes: check, write, read back. Two runs
        # starting in the same instant could both pass; the README says so.
        if self.read(uri) is not None:
            return False
        self.write(uri, text)
        return self.read(uri) == text

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._call("delete", uri, self.client.delete_object, Bucket=bucket, Key=key)

    def make_dir(self, uri: str) -> None:
        pass  # S3 has no directories

    def keys(self, uri: str, limit: Optional[int] = None) -> list[str]:
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/"
        found: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", uri, lambda: list(paginator.paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"MaxItems": limit} if limit else {})))
        for page in pages:
            found += [f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
        return found[:limit] if limit else found

    def list_dirs(self, uri: str) -> list[str]:
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", uri, lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")))
        return sorted(p["Prefix"][len(prefix):].rstrip("/") for page in pages for p in page.get("CommonPrefixes", []))

    def delete_prefix(self, uri: str) -> None:
        bucket, _ = split_s3(uri)
        keys = [split_s3(k)[1] for k in self.keys(uri)]
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start:start + 1000]]
            self._call("delete", uri, self.client.delete_objects, Bucket=bucket,
                       Delete={"Objects": chunk, "Quiet": True})


class _ArrowStore:
    """The same operations on HDFS (or any file system pyarrow opens from a URI)."""

    def _fs(self, uri: str):
        from pyarrow import fs as pafs

        return pafs.FileSystem.from_uri(uri)

    def read(self, uri: str) -> Optional[str]:
        filesystem, path = self._fs(uri)
        try:
            with filesystem.open_input_stream(path) as stream:
                return stream.read().decode("utf-8")
        except FileNotFoundError:
            return None

    def write(self, uri: str, text: str) -> None:
        filesystem, path = self._fs(uri)
        filesystem.create_dir(path.rpartition("/")[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(text.encode("utf-8"))

    def replace(self, uri: str, text: str) -> None:
        # HDFS rename does not overwrite: write aside, delete, rename. A reader that looks in the
        # instant between the last two steps finds no pointer and retries (see resolve).
        filesystem, path = self._fs(uri)
        aside = f"{uri}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        self.write(aside, text)
        self.delete(uri)
        filesystem.move(self._fs(aside)[1], path)

    def create_exclusive(self, uri: str, text: str) -> bool:
        # pyarrow has no create-if-absent; check, write, read back (a narrow race, documented).
        if self.read(uri) is not None:
            return False
        self.write(uri, text)
        return self.read(uri) == text

    def delete(self, uri: str) -> None:
        filesystem, path = self._fs(uri)
        try:
            filesystem.delete_file(path)
        except FileNotFoundError:
            pass

    def make_dir(self, uri: str) -> None:
        filesystem, path = self._fs(uri)
        filesystem.create_dir(path, recursive=True)

    def _infos(self, uri: str, recursive: bool):
        from pyarrow import fs as pafs

        filesystem, path = self._fs(uri)
        return filesystem.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True)), path

    def keys(self, uri: str, limit: Optional[int] = None) -> list[str]:
        from pyarrow import fs as pafs

        infos, path = self._infos(uri, True)
        base = uri.rstrip("/")
        found = [base + info.path[len(path.rstrip("/")):] for info in infos if info.type == pafs.FileType.File]
        return sorted(found)[:limit] if limit else sorted(found)

    def list_dirs(self, uri: str) -> list[str]:
        from pyarrow import fs as pafs

        infos, _ = self._infos(uri, False)
        return sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory)

    def delete_prefix(self, uri: str) -> None:
        filesystem, path = self._fs(uri)
        try:
            filesystem.delete_dir(path)
        except FileNotFoundError:
            pass


def _code(exc) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _location(path: str, s3: Optional[S3Config] = None):
    if is_s3(path):
        return _Pointer(path, _S3Store(s3 or S3Config()))
    if is_hadoop(path):
        return _Pointer(path, _ArrowStore())
    return _Local(path)


# --------------------------------------------------------------------------------------------
# What readers call.

def resolve(path: str, s3: Optional[S3Config] = None) -> str:
    """The location readers should read for the current version of the table at ``path``.

    Local outputs resolve to the version directory behind the symlink (so that a read started now
    keeps one version even if a run publishes meanwhile); S3/HDFS outputs to the URI in
    ``_LATEST``. A path without a published version (older layout, or missing) is returned as is.
    """
    location = _location(path, s3)
    target = location.read_location()
    if target == location.shown and isinstance(location, _Pointer) and is_hadoop(path):
        # HDFS replaces the pointer in two steps: versions without a pointer means we looked in
        # between; look again.
        for _ in range(10):
            if not location.versions_list():
                break
            time.sleep(0.2)
            target = location.read_location()
            if target != location.shown:
                break
    return target


def current_version(path: str, s3: Optional[S3Config] = None) -> Optional[str]:
    """The version id (the run id of the run that published it) at ``path``; None if none."""
    return _location(path, s3).current()


def read_summary(path: str, s3: Optional[S3Config] = None) -> Optional[dict]:
    """The ``_lookalike_summary.json`` of the current version of ``path``; None when there is none."""
    where = resolve(path, s3).rstrip("/") + "/" + SUMMARY
    if is_s3(where):
        text = _S3Store(s3 or S3Config()).read(where)
    elif is_hadoop(where):
        text = _ArrowStore().read(where)
    else:
        try:
            with open(local_path(where), encoding="utf-8") as handle:
                text = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            text = None
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", where)
        return None


def write_summary(path: str, summary: dict, s3: Optional[S3Config] = None) -> None:
    """Write ``summary`` as ``_lookalike_summary.json`` into the directory (or prefix) ``path``."""
    text = json.dumps(summary, indent=2, sort_keys=True, default=str)
    target = path.rstrip("/") + "/" + SUMMARY
    if is_s3(path):
        _S3Store(s3 or S3Config()).write(target, text)
    elif is_hadoop(path):
        _ArrowStore().write(target, text)
    else:
        with open(local_path(target), "w", encoding="utf-8") as handle:
            handle.write(text)


# --------------------------------------------------------------------------------------------
# Locks.

def _process_start(pid: int) -> Optional[str]:
    """The start time of ``pid`` in clock ticks (Linux), to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(owner: dict) -> Optional[bool]:
    """True/False when the lock's owner runs on this host; None when that cannot be known here."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return None
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    start = owner.get("pid_start")
    return not (start and _process_start(pid) not in (None, start))


def _age(started: Optional[float]) -> str:
    if not isinstance(started, (int, float)):
        return "unknown time"
    hours = max(0.0, time.time() - started) / 3600
    return f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"


def _locked_message(path: str, lock: str, text: Optional[str], force_refused: bool) -> str:
    try:
        owner = json.loads(text or "")
        assert isinstance(owner, dict)
    except (ValueError, AssertionError):
        return (f"output {path} is locked by {lock}, which cannot be read ({(text or '')[:80]!r}). "
                f"If no run is writing this output, rerun with --set output.force_unlock=true")
    head = (f"output {path} is locked by run {owner.get('run_id')} (host {owner.get('host')}, pid "
            f"{owner.get('pid')}) since {owner.get('started_at')}, {_age(owner.get('started'))} ago "
            f"[lock {lock}].")
    alive = _owner_alive(owner)
    if alive:
        tail = " That process is still running on this host: wait for it to finish"
        if force_refused:
            tail += " (output.force_unlock=true never removes the lock of a live process)"
        return head + tail + "."
    if alive is False:
        return (head + f" pid {owner.get('pid')} no longer runs on this host: the run crashed or was "
                "killed, and nothing it wrote is visible to readers. Rerun with "
                "--set output.force_unlock=true to remove the stale lock.")
    stale = isinstance(owner.get("started"), (int, float)) and time.time() - owner["started"] > STALE_LOCK_HOURS * 3600
    return (head + (f" It is older than {STALE_LOCK_HOURS:.0f} h and probably stale." if stale else "")
            + " If that run is no longer running (killed, or its cluster is gone), rerun with "
            "--set output.force_unlock=true to remove the lock.")


class OutputSet:
    """Stage several outputs of one run and publish them together.

    ``with OutputSet(...)`` takes the lock of every target (OutputLockedError if another run holds
    one); ``staging(name)`` is where the run writes that table; ``commit(summaries)`` publishes
    every table, each in one atomic step. Leaving the block without commit (an exception, or a
    run that decides to publish nothing) removes the staged data and leaves the outputs as they
    were; the locks are released either way.
    """

    def __init__(self, spark, targets: dict[str, str], run_id: str, force_unlock: bool = False,
                 s3: Optional[S3Config] = None):
        self.spark = spark  # kept for callers' symmetry; publishing itself needs no Spark
        self.targets, self.run_id, self.force_unlock = dict(targets), run_id, force_unlock
        self.locations = {name: _location(path, s3) for name, path in self.targets.items()}
        self._locked: list = []
        self._staged: set[str] = set()
        self._switched: set[str] = set()
        self.committed = False

    def __enter__(self) -> "OutputSet":
        try:
            for name in sorted(self.targets):
                location = self.locations[name]
                self._lock(location)
                location.check()
        except BaseException:
            self._release()
            raise
        return self

    def _lock(self, location) -> None:
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                 "run_id": self.run_id, "started": time.time(),
                 "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        text = json.dumps(owner, sort_keys=True)
        if not location.lock_create(text):
            held = location.lock_read()
            alive = _owner_alive(_json_or_empty(held))
            if not self.force_unlock or alive:
                raise OutputLockedError(_locked_message(location.shown, location.lock, held, self.force_unlock))
            log.warning("output.force_unlock=true: removing the lock on %s (%s)", location.shown,
                        (held or "").strip()[:300])
            location.lock_delete()
            if not location.lock_create(text):
                raise OutputLockedError(_locked_message(location.shown, location.lock, location.lock_read(), True))
        self._locked.append(location)

    def _release(self) -> None:
        while self._locked:
            location = self._locked.pop()
            try:
                if _json_or_empty(location.lock_read()).get("run_id") == self.run_id:
                    location.lock_delete()
            except Exception as exc:  # a lock we cannot remove must not hide the run's own error
                log.warning("could not remove the lock %s: %s", location.lock, exc)

    def staging(self, name: str) -> str:
        """Where this run writes table ``name``: a new version directory no reader sees yet (its
        parent exists; the directory itself is left to the writer, as Spark wants it)."""
        location = self.locations[name]
        if name not in self._staged:
            location.prepare_staging(self.run_id)
            self._staged.add(name)
        return location.version_path(self.run_id)

    def commit(self, summaries: Optional[dict[str, dict]] = None) -> None:
        """Write the summaries into the staged versions, then switch every output to them."""
        missing = [n for n, loc in self.locations.items() if not loc.staged(self.run_id)]
        if missing:
            raise OutputError(f"nothing was written for {', '.join(missing)} in this run; publishing nothing")
        for name, summary in (summaries or {}).items():
            self.locations[name].put_text(self.run_id, SUMMARY, json.dumps(summary, indent=2, sort_keys=True, default=str))
        for name in sorted(self.targets):
            location = self.locations[name]
            previous = location.switch(self.run_id)
            self._switched.add(name)
            log.info("published %s: version %s at %s", name, self.run_id, location.shown)
            self._collect_garbage(location, {self.run_id, previous})
        self.committed = True

    def _collect_garbage(self, location, keep: set) -> None:
        try:
            for version in location.versions_list():
                if version not in keep:
                    location.remove_version(version)
            location.remove_debris()
        except Exception as exc:  # old versions left behind cost space, never correctness
            log.warning("could not remove old versions of %s: %s", location.shown, exc)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self.committed:
                # A commit that failed half way leaves the switched outputs on this version.
                for name in sorted(self._staged - self._switched):
                    try:
                        self.locations[name].remove_version(self.run_id)
                    except Exception as error:
                        log.warning("could not remove the staged %s: %s", name, error)
                unchanged = [self.targets[n] for n in sorted(self.targets) if n not in self._switched]
                if exc_type is not None and unchanged:
                    log.warning("not published: %s unchanged", ", ".join(unchanged))
        finally:
            self._release()
        return None


def _json_or_empty(text: Optional[str]) -> dict:
    try:
        value = json.loads(text or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
