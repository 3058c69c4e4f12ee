"""Where images live: S3 through boto3, local directories, and Hadoop file systems through pyarrow.

Listing runs on the driver; fetching runs on the workers with one client per Python worker.
Spark's own s3a:// is deliberately not used: it needs hadoop-aws jars matched to the Hadoop
version, and boto3 runs identically on a laptop, a standalone cluster and EMR.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Iterator, Optional
from urllib.parse import unquote, urlparse

from .config import InputConfig, S3Config
from .errors import DuplicateItemIdError, InputError

log = logging.getLogger(__name__)


class FetchError(Exception):
    """One object could not be read; ``kind`` becomes the error row's kind."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Listed:
    key: str  # relative to input.uri, '/'-separated
    uri: str
    size: Optional[int]
    version: Optional[str]


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://") or uri.startswith("s3a://") or uri.startswith("s3n://")


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def is_hadoop(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme not in ("", "file") and not is_s3(uri) and len(scheme) > 1


def local_path(uri: str) -> str:
    """A local path for a plain path or file:// URI."""
    if uri.startswith("file://"):
        return unquote(urlparse(uri).path)
    return uri


def normalise_uri(uri: str) -> str:
    """Absolute file:// URI for local paths (executors may run elsewhere in the cwd); others as given."""
    if is_s3(uri) or is_hadoop(uri):
        return uri
    return "file://" + os.path.abspath(os.path.expanduser(local_path(uri)))


_clients = threading.local()


def s3_client(cfg: S3Config):
    """A boto3 S3 client, one per thread and settings (boto3 clients are not safe to share when
    created concurrently, and creating one per object is slow)."""
    import boto3
    from botocore.config import Config as BotoConfig

    key = (cfg.endpoint_url, cfg.region, cfg.max_attempts, cfg.retry_mode, cfg.connect_timeout,
           cfg.read_timeout, cfg.max_pool_connections)
    cache = getattr(_clients, "cache", None)
    if cache is None:
        cache = _clients.cache = {}
    if key not in cache:
        session = boto3.session.Session()
        cache[key] = session.client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            region_name=cfg.region,
            config=BotoConfig(
                retries={"max_attempts": cfg.max_attempts, "mode": cfg.retry_mode},
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                max_pool_connections=cfg.max_pool_connections,
            ),
        )
    return cache[key]


def _name_matches(name: str, pattern: str) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, p.strip().lower()) for p in pattern.split("|") if p.strip())


def _iter_s3(uri: str, cfg: InputConfig, s3: S3Config) -> Iterator[Listed]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = s3_client(s3)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                yield Listed(key[len(prefix):], f"s3://{bucket}/{key}", obj.get("Size"),
                             obj.get("ETag", "").strip('"') or None)
    except (ClientError, BotoCoreError) as exc:
        # Credentials never appear here: botocore messages name the operation and error code only.
        raise InputError(f"cannot list {uri}: {exc}") from None


def _iter_local(uri: str) -> Iterator[Listed]:
    root = local_path(normalise_uri(uri))
    if os.path.isfile(root):
        stat = os.stat(root)
        yield Listed(os.path.basename(root), "file://" + root, stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}")
        return
    if not os.path.isdir(root):
        raise InputError(f"input.uri {uri!r}: no such directory ({root})")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue  # removed while listing
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            yield Listed(rel, "file://" + path, stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}")


def _iter_hadoop(uri: str) -> Iterator[Listed]:
    from pyarrow import fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(uri)
    base = uri.rstrip("/")
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root.rstrip("/")) + 1:]
        mtime = info.mtime_ns if info.mtime_ns is not None else ""
        yield Listed(rel, f"{base}/{rel}", info.size, f"{info.size}-{mtime}")


def iter_objects(uri: str, cfg: InputConfig, s3: S3Config) -> Iterator[Listed]:
    if is_s3(uri):
        return _iter_s3(uri, cfg, s3)
    if is_hadoop(uri):
        return _iter_hadoop(uri)
    return _iter_local(uri)


def item_id_for(key: str, id_regex: Optional[re.Pattern]) -> Optional[str]:
    if id_regex is None:
        stem, _ = os.path.splitext(key)
        return stem
    match = id_regex.search(key)
    if match is None:
        return None
    if "id" in match.groupdict():
        return match.group("id")
    return match.group(1) if match.groups() else match.group(0)


def assign_ids(listed: list[Listed], id_regex: Optional[str]) -> list[tuple[str, Listed]]:
    """(item_id, object) pairs in id order; duplicate ids are an error naming both keys."""
    pattern = re.compile(id_regex) if id_regex else None
    seen: dict[str, Listed] = {}
    skipped = 0
    for obj in listed:
        item_id = item_id_for(obj.key, pattern)
        if not item_id:
            skipped += 1
            continue
        if item_id in seen:
            raise DuplicateItemIdError(
                f"item id {item_id!r} comes from two keys: {seen[item_id].key!r} and {obj.key!r}. "
                f"Remove one, or set input.id_regex so that ids are unique."
            )
        seen[item_id] = obj
    if skipped:
        log.warning("%d keys did not match input.id_regex and were skipped", skipped)
    return sorted(seen.items())


def list_images(cfg: InputConfig, s3: S3Config) -> list[tuple[str, Listed]]:
    """List the image files under ``input.uri`` on the driver."""
    listed = [o for o in iter_objects(cfg.uri, cfg, s3) if _name_matches(o.key.rsplit("/", 1)[-1], cfg.pattern)]
    return assign_ids(listed, cfg.id_regex)


def fetch(uri: str, s3: S3Config, max_bytes: int) -> bytes:
    """Read one object. Raises FetchError(kind) with kind not_found, too_large or fetch_error."""
    if is_s3(uri):
        return _fetch_s3(uri, s3, max_bytes)
    if is_hadoop(uri):
        return _fetch_hadoop(uri, max_bytes)
    path = local_path(uri)
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise FetchError("too_large", f"{size} bytes is more than input.max_bytes={max_bytes}")
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise FetchError("not_found", "the file no longer exists (deleted after listing?)") from None
    except IsADirectoryError:
        raise FetchError("not_found", "the path is a directory") from None
    except OSError as exc:
        raise FetchError("fetch_error", f"cannot read the file: {exc.strerror or exc}") from None


def _fetch_s3(uri: str, s3: S3Config, max_bytes: int) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    try:
        response = s3_client(s3).get_object(Bucket=bucket, Key=key)
        length = response.get("ContentLength") or 0
        if length > max_bytes:
            response["Body"].close()
            raise FetchError("too_large", f"{length} bytes is more than input.max_bytes={max_bytes}")
        return response["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FetchError("not_found", "the object no longer exists (deleted after listing?)") from None
        if code in ("AccessDenied", "403"):
            raise FetchError("fetch_error", "access denied (s3:GetObject)") from None
        raise FetchError("fetch_error", f"S3 error {code} after {s3.max_attempts} attempts") from None
    except BotoCoreError as exc:
        raise FetchError("fetch_error", f"{type(exc).__name__} after {s3.max_attempts} attempts") from None


def _fetch_hadoop(uri: str, max_bytes: int) -> bytes:
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FetchError("not_found", "the file no longer exists")
        if info.size is not None and info.size > max_bytes:
            raise FetchError("too_large", f"{info.size} bytes is more than input.max_bytes={max_bytes}")
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FetchError:
        raise
    except OSError as exc:
        raise FetchError("fetch_error", str(exc)) from None
