"""S3 (and S3-compatible servers) through boto3, with the jobs' retry and timeout settings.

Reads retry twice over: botocore retries the request (s3.retry_mode, s3.max_attempts), and we
retry a body that breaks off mid-transfer, which botocore does not; both share one budget of
s3.max_attempts requests per object, so "gave up after N attempts" is exact.
"""

from __future__ import annotations

import builtins
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterator

from lookalike.config import S3Config
from lookalike.io.base import AtomicFile, Entry, Storage, StorageError
from lookalike.io.redact import redact
from lookalike.io.s3client import (
    OutOfAttempts,
    attempts_text,
    error_code,
    error_text,
    is_transient,
    requests_sent,
    reset_count,
    s3_client,
)
from lookalike.io.uris import split_s3

log = logging.getLogger(__name__)

_MISSING = ("NoSuchKey", "404", "NotFound")
_REFUSED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class _BodyError(Exception):
    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def _etag(value: str | None) -> str | None:
    return (value or "").strip('"') or None


def _is_marker(obj: dict) -> bool:
    return obj["Key"].endswith("/")  # a "directory" marker some tools write


def _entry(bucket: str, prefix: str, obj: dict) -> Entry:
    return Entry(obj["Key"][len(prefix) :], f"s3://{bucket}/{obj['Key']}", obj.get("Size"), _etag(obj.get("ETag")))


class S3Storage(Storage):
    def __init__(self, s3: S3Config):
        self.s3 = s3

    @property
    def client(self):
        return s3_client(self.s3)

    def _failure(self, exc) -> StorageError:
        """A botocore exception as a StorageError, with how many attempts were made."""
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            kind = "not_found" if error_code(exc) in _MISSING + ("NoSuchBucket",) else "fetch_error"
            return StorageError(
                kind,
                f"S3 error {error_text(exc)}; gave up after {attempts_text(exc, self.s3)}",
                transient=is_transient(exc),
            )
        return StorageError(
            "fetch_error",
            f"{type(exc).__name__}: {redact(str(exc))}; gave up after {attempts_text(exc, self.s3)}",
            transient=is_transient(exc),
        )

    def _call(self, method, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        reset_count()
        try:
            return method(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc) from None

    # --- listing --------------------------------------------------------------------------------
    def _pages(self, bucket: str, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs = {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
        reset_count()
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                reset_count()  # the attempts of the next page's request are counted afresh
                yield page
        except ClientError as exc:
            hint = {
                "NoSuchBucket": f"bucket {bucket!r} does not exist",
                "AccessDenied": f"the job's credentials need s3:ListBucket on arn:aws:s3:::{bucket}",
            }.get(error_code(exc), f"gave up after {attempts_text(exc, self.s3)}")
            raise StorageError(
                "not_found" if error_code(exc) == "NoSuchBucket" else "fetch_error",
                f"{error_text(exc)}; {hint}",
                transient=is_transient(exc),
            ) from None
        except BotoCoreError as exc:
            raise StorageError(
                "fetch_error",
                f"{redact(str(exc))}; gave up after {attempts_text(exc, self.s3)}",
                transient=is_transient(exc),
            ) from None

    def _objects(self, bucket: str, prefix: str) -> Iterator[dict]:
        """Every object under ``prefix``, recursively (ListObjectsV2 dicts): without a delimiter a
        listing has no common prefixes."""
        for page in self._pages(bucket, prefix):
            yield from page.get("Contents", [])

    def _level(self, bucket: str, prefix: str) -> Iterator[dict | str]:
        """The objects directly under ``prefix`` (dicts), and its common prefixes (str)."""
        for page in self._pages(bucket, prefix, "/"):
            yield from page.get("Contents", [])
            yield from (p["Prefix"] for p in page.get("CommonPrefixes", []))

    def list(self, uri: str) -> Iterator[Entry]:
        bucket, key = split_s3(uri)
        root = key.rstrip("/")
        prefix = f"{root}/" if root else ""
        anything = False
        for obj in self._objects(bucket, prefix):
            anything = True
            if not _is_marker(obj):
                yield _entry(bucket, prefix, obj)
        if not anything and root:
            entry = self.stat(f"s3://{bucket}/{root}")  # the URI may name one object
            if entry is not None:
                yield entry

    def list_prefix(self, uri: str) -> Iterator[Entry]:
        """Every object under the prefix ``uri`` exactly as given (it ends in '/'), keys relative to
        it. Unlike :meth:`list`, never the object named like the prefix: a prefix that a delimiter
        listing found is listed once, whatever happened to it since."""
        bucket, prefix = split_s3(uri)
        return (_entry(bucket, prefix, obj) for obj in self._objects(bucket, prefix) if not _is_marker(obj))

    def list_level(self, uri: str) -> Iterator[Entry | str]:
        """One level of the prefix ``uri`` exactly as given ('' or ending in '/'), page by page:
        an Entry for each object directly in it, and the name of each sub-prefix relative to
        ``uri``, ending in '/' (a str; "a//b" has the sub-prefixes "a/" and then "/")."""
        bucket, prefix = split_s3(uri)
        for found in self._level(bucket, prefix):
            if isinstance(found, str):
                yield found[len(prefix) :]
            elif not _is_marker(found):
                yield _entry(bucket, prefix, found)

    def list_dirs(self, uri: str) -> builtins.list[str]:  # builtins: ``list`` here is the method above
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
        return sorted(p.rstrip("/") for p in self.list_level(f"s3://{bucket}/{prefix}") if isinstance(p, str))

    def exists(self, uri: str) -> bool:
        return next(iter(self.list(uri)), None) is not None

    def stat(self, uri: str) -> Entry | None:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        if not key or key.endswith("/"):
            return None
        reset_count()
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in _MISSING:
                return None
            raise self._failure(exc) from None
        except BotoCoreError as exc:
            raise self._failure(exc) from None
        return Entry(key.rsplit("/", 1)[-1], f"s3://{bucket}/{key}", head.get("ContentLength"), _etag(head.get("ETag")))

    # --- reading --------------------------------------------------------------------------------
    def read(self, uri: str, max_bytes: int) -> bytes:
        return self._get(uri, max_bytes=max_bytes)

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return self._get(uri, byte_range=f"bytes={start}-{start + length - 1}")

    def _get(self, uri: str, max_bytes: int | None = None, byte_range: str | None = None) -> bytes:
        """GetObject with botocore's retries for the request plus our own for the body."""
        bucket, key = split_s3(uri)
        client = self.client
        reset_count(limit=self.s3.max_attempts)
        broken = ""
        try:
            for retry in range(self.s3.max_attempts):
                try:
                    return self._get_once(client, bucket, key, max_bytes, byte_range)
                except _BodyError as exc:
                    broken = redact(str(exc.cause))
                    if requests_sent() >= self.s3.max_attempts:
                        break
                    # Same shape as botocore's standard mode: full jitter, exponential, capped at 20 s.
                    time.sleep(random.random() * min(20.0, 2.0**retry))
                except OutOfAttempts:
                    break
            raise StorageError(
                "fetch_error",
                f"S3 kept failing: gave up after {attempts_text(None, self.s3)}; "
                f"the last broken transfer: the connection dropped while "
                f"reading the object ({broken})",
                transient=True,
            )
        finally:
            reset_count()

    def _get_once(self, client, bucket: str, key: str, max_bytes: int | None, byte_range: str | None) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = client.get_object(Bucket=bucket, Key=key, **({"Range": byte_range} if byte_range else {}))
        except ClientError as exc:
            code = error_code(exc)
            if code in _MISSING:
                raise StorageError("not_found", "the object no longer exists (deleted after listing?)") from None
            if code in ("InvalidRange", "416"):
                return b""  # a range that starts at or after the end
            if code in ("AccessDenied", "403"):
                raise StorageError(
                    "fetch_error",
                    f"access denied: the job's credentials need s3:GetObject on "
                    f"arn:aws:s3:::{bucket}/* (S3 also answers 403 for a deleted "
                    f"object when s3:ListBucket is not granted)",
                ) from None
            raise self._failure(exc) from None
        except BotoCoreError as exc:
            raise self._failure(exc) from None
        length = response.get("ContentLength") or 0
        if max_bytes is not None and length > max_bytes:
            response["Body"].close()
            raise StorageError("too_large", f"{length} bytes is more than input.max_bytes={max_bytes}")
        try:
            # botocore checks the bytes read against Content-Length (IncompleteReadError).
            return response["Body"].read()
        except Exception as exc:  # botocore, urllib3 and socket errors all mean "the stream broke"
            raise _BodyError(exc) from None

    # --- writing --------------------------------------------------------------------------------
    def write(self, uri: str, data: bytes) -> None:
        # One PUT replaces an object atomically: readers get the old body or the new one.
        bucket, key = split_s3(uri)
        self._call(self.client.put_object, Bucket=bucket, Key=key, Body=data)

    def open_write(self, uri: str) -> AtomicFile:
        return _UploadOnCommit(self, uri)

    def upload(self, source: str, uri: str) -> None:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        # upload_file goes multipart for large files; an interrupted multipart upload never
        # becomes visible, and no directory markers appear.
        bucket, key = split_s3(uri)
        reset_count()
        try:
            self.client.upload_file(source, bucket, key)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise StorageError(
                "fetch_error",
                f"cannot upload to {uri}: {type(exc).__name__}: {redact(str(exc))}",
                transient=is_transient(exc),
            ) from None

    def download(self, uri: str, target: str) -> None:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        reset_count()
        try:
            self.client.download_file(bucket, key, target)
        except ClientError as exc:
            raise self._failure(exc) from None
        except (BotoCoreError, Boto3Error) as exc:
            raise StorageError(
                "fetch_error", f"{type(exc).__name__}: {redact(str(exc))}", transient=is_transient(exc)
            ) from None

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        reset_count()
        try:
            # Conditional write: S3 itself refuses the second of two concurrent creators.
            self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if error_code(exc) in _REFUSED:
                return False
            if error_code(exc) not in ("NotImplemented", "501"):
                raise self._failure(exc) from None
        except BotoCoreError as exc:
            raise self._failure(exc) from None
        # S3-compatible servers without conditional writes: check, write, read back. Two runs
        # starting in the same instant could both pass; the documentation says so.
        if self.stat(uri) is not None:
            return False
        self.write(uri, data)
        return self.read(uri, len(data) + 1) == data

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._call(self.client.delete_object, Bucket=bucket, Key=key)  # S3 says 204 for a missing key

    def delete_prefix(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/"
        keys = [obj["Key"] for page in self._pages(bucket, prefix) for obj in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            answer = self._call(self.client.delete_objects, Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
            failed = answer.get("Errors") or []
            if failed:
                first = failed[0]
                raise StorageError(
                    "fetch_error",
                    f"{len(failed)} objects under {uri} were not deleted, e.g. "
                    f"{first.get('Key')}: {redact(str(first.get('Code')))}",
                )

    def make_dirs(self, uri: str) -> None:
        pass  # S3 has no directories


class _UploadOnCommit(AtomicFile):
    """Bytes go to the local disk first, then up in one upload: a half-written object never exists."""

    def __init__(self, storage: S3Storage, uri: str):
        self.storage, self.uri = storage, uri
        handle, self.path = tempfile.mkstemp(prefix="lookalike-", suffix=".part")
        self.file = os.fdopen(handle, "wb")

    def _put_in_place(self) -> None:
        try:
            self.storage.upload(self.path, self.uri)
        finally:
            self._discard()

    def _discard(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
