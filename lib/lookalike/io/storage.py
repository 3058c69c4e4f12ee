"""Where images live: S3 through boto3, local directories, and Hadoop file systems through pyarrow.

Listing runs on the driver; fetching runs on the workers with one client per Python worker.
Spark's own s3a:// is deliberately not used: it needs hadoop-aws jars matched to the Hadoop
version, and boto3 runs identically on a laptop, a standalone cluster and EMR.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import random
import re
import stat as statmode
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional
from urllib.parse import unquote, urlparse

from lookalike.config import InputConfig, S3Config
from lookalike.errors import DuplicateItemIdError, InputError

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


from lookalike.io.uris import file_uri, is_hadoop, is_s3, local_path, normalise_uri, split_s3  # noqa: F401


# --- keeping credentials out of messages -------------------------------------------------------
# Error text from an S3 server or a proxy is copied into logs and error rows. A misbehaving server
# may echo the request's Authorization header; never pass such text on unredacted.
_known_secrets: set[str] = set()
_SIGNING_PARTS = re.compile(
    r"((?:X-Amz-)?(?:Credential|Signature|Security-Token)=|aws_secret_access_key\s*[=:]\s*)"
    r"[^\s,&\"'<>]+", re.IGNORECASE)
_ACCESS_KEY_IDS = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")


def _remember_credentials(session) -> None:
    try:
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
    except Exception:  # a broken profile: the first request reports it, inside the callers' handlers
        return
    if frozen is None:
        return
    for value in (frozen.access_key, frozen.secret_key, frozen.token):
        if value and len(value) >= 8:
            _known_secrets.add(value)


def redact(text: str) -> str:
    """``text`` with credentials (the ones in use, and anything shaped like one) replaced by ***."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    for value in list(_known_secrets):
        text = text.replace(value, "***")
    text = _SIGNING_PARTS.sub(r"\1***", text)
    return _ACCESS_KEY_IDS.sub("***", text)


def _client_error_text(exc) -> str:
    """'Code: message' from a botocore ClientError, redacted."""
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "?"), error.get("Message", "")
    return redact(f"{code}: {message}" if message else str(code))


# HTTP requests sent by this thread's client since the last reset: botocore's connection errors do
# not say how many times they were retried, and the message should. ``limit`` caps the requests
# for one object across botocore's retries and ours (a body cut off mid-transfer).
_sent = threading.local()


class _OutOfAttempts(Exception):
    pass


def _count_request(**_) -> None:
    limit = getattr(_sent, "limit", 0)
    if limit and getattr(_sent, "n", 0) >= limit:
        raise _OutOfAttempts()  # not retryable: botocore passes it straight up
    _sent.n = getattr(_sent, "n", 0) + 1


def _reset_count(limit: int = 0) -> None:
    _sent.n = 0
    _sent.limit = limit


def _attempts(exc, s3: S3Config) -> str:
    sent = getattr(_sent, "n", 0)
    if not sent:
        retries = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("RetryAttempts")
        sent = None if retries is None else retries + 1
    done = f"at most {s3.max_attempts} attempts" if sent is None else f"{sent} attempt{'s' if sent > 1 else ''}"
    return f"{done} (s3.max_attempts={s3.max_attempts}, s3.retry_mode={s3.retry_mode})"


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
        # Credentials: boto3's default chain only (environment, shared files, instance/task role).
        session = boto3.session.Session()
        _remember_credentials(session)
        cache[key] = session.client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            region_name=cfg.region,
            config=BotoConfig(
                # total_max_attempts counts the first try, like AWS_MAX_ATTEMPTS; botocore's
                # "max_attempts" would count retries only (one more request than configured).
                retries={"total_max_attempts": cfg.max_attempts, "mode": cfg.retry_mode},
                connect_timeout=cfg.connect_timeout,
                read_timeout=cfg.read_timeout,
                max_pool_connections=cfg.max_pool_connections,
            ),
        )
        cache[key].meta.events.register("before-send.s3", _count_request)
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
    _reset_count()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            _reset_count()
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                yield Listed(key[len(prefix):], f"s3://{bucket}/{key}", obj.get("Size"),
                             obj.get("ETag", "").strip('"') or None)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        hint = {
            "NoSuchBucket": f"bucket {bucket!r} does not exist",
            "AccessDenied": f"the job's credentials need s3:ListBucket on arn:aws:s3:::{bucket}",
        }.get(code, f"gave up after {_attempts(exc, s3)}")
        raise InputError(f"cannot list {uri}: {_client_error_text(exc)}; {hint}. Nothing was written.") from None
    except BotoCoreError as exc:
        raise InputError(f"cannot list {uri}: {redact(str(exc))}; gave up after {_attempts(exc, s3)}. "
                         f"Nothing was written.") from None


def _iter_local(uri: str) -> Iterator[Listed]:
    root = local_path(normalise_uri(uri))
    if os.path.isfile(root):
        stat = os.stat(root)
        yield Listed(os.path.basename(root), file_uri(root), stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}")
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
            yield Listed(rel, file_uri(path), stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}")


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
        info = os.stat(path)
        if statmode.S_ISDIR(info.st_mode):
            raise FetchError("not_found", "the path is a directory")
        if not statmode.S_ISREG(info.st_mode):
            # Opening a FIFO would block the task forever.
            raise FetchError("unsupported", "not a regular file (a FIFO, socket or device)")
        if info.st_size > max_bytes:
            raise FetchError("too_large", f"{info.st_size} bytes is more than input.max_bytes={max_bytes}")
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)  # the file may have grown since stat()
        if len(data) > max_bytes:
            raise FetchError("too_large", f"more than input.max_bytes={max_bytes} bytes")
        return data
    except FileNotFoundError:
        raise FetchError("not_found", "the file no longer exists (deleted after listing?)") from None
    except IsADirectoryError:
        raise FetchError("not_found", "the path is a directory") from None
    except OSError as exc:
        raise FetchError("fetch_error", f"cannot read the file: {exc.strerror or exc}") from None


def _fetch_s3(uri: str, s3: S3Config, max_bytes: int) -> bytes:
    """GetObject with botocore's retries (s3.retry_mode, s3.max_attempts) for the request, plus
    our own for the body: botocore does not retry a connection that drops mid-body."""
    bucket, key = split_s3(uri)
    client = s3_client(s3)
    _reset_count(limit=s3.max_attempts)
    broken = ""
    try:
        for retry in range(s3.max_attempts):
            try:
                return _get_s3(client, bucket, key, s3, max_bytes)
            except _BodyError as exc:
                broken = redact(str(exc.cause))
                if _sent.n >= s3.max_attempts:
                    break
                # Same shape as botocore's standard mode: full jitter, exponential, capped at 20 s.
                time.sleep(random.random() * min(20.0, 2.0 ** retry))
            except _OutOfAttempts:
                break
        raise FetchError("fetch_error", f"S3 kept failing: gave up after {_attempts(None, s3)}; the last "
                                        f"broken transfer: the connection dropped while reading the "
                                        f"object ({broken})")
    finally:
        _reset_count()


class _BodyError(Exception):
    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def _get_s3(client, bucket: str, key: str, s3: S3Config, max_bytes: int) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FetchError("not_found", "the object no longer exists (deleted after listing?)") from None
        if code in ("AccessDenied", "403"):
            raise FetchError("fetch_error", f"access denied: the job's credentials need s3:GetObject on "
                                            f"arn:aws:s3:::{bucket}/* (S3 also answers 403 for a deleted "
                                            f"object when s3:ListBucket is not granted)") from None
        raise FetchError("fetch_error", f"S3 error {_client_error_text(exc)}; gave up after "
                                        f"{_attempts(exc, s3)}") from None
    except BotoCoreError as exc:
        raise FetchError("fetch_error", f"{type(exc).__name__}: {redact(str(exc))}; gave up after "
                                        f"{_attempts(exc, s3)}") from None
    length = response.get("ContentLength") or 0
    if length > max_bytes:
        response["Body"].close()
        raise FetchError("too_large", f"{length} bytes is more than input.max_bytes={max_bytes}")
    try:
        # botocore checks the bytes read against Content-Length (IncompleteReadError).
        return response["Body"].read()
    except Exception as exc:  # botocore, urllib3 and socket errors all mean "the stream broke"
        raise _BodyError(exc) from None


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
