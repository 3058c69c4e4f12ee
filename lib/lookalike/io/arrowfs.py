"""The pyarrow file system that reads the jobs' Parquet tables for the ``lookalike`` tools and the
training readers, built from the same settings as the rest of the storage layer.

S3 tables are read by pyarrow's own S3 file system, configured from the jobs' S3Config: endpoint,
region, timeouts, and a retry strategy with s3.max_attempts attempts in s3.retry_mode (pyarrow's
default would be 3 attempts whatever the config says). Not a PyFileSystem over the boto3 storage
layer, although that was tried: pyarrow reads a dataset's files on its own I/O threads, and a file
implemented in Python there aborts the interpreter at exit ("terminate called without an active
exception") in about a third of the runs of ``lookalike similar`` on pyarrow 14 and 26 alike, when
such a thread still reaches for the GIL while Python shuts down. Native files have no Python in
those threads. Local and Hadoop tables use pyarrow's native file systems too.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from pyarrow import fs as pafs

from lookalike.config import S3Config
from lookalike.io.uris import is_hadoop, is_s3, local_path, split_s3


def filesystem(uri: str, s3: S3Config | None = None):
    """(pyarrow FileSystem, path in it) for reading the file or directory at ``uri``."""
    if is_s3(uri):
        return s3_filesystem(s3 or S3Config()), path_in(uri)
    if is_hadoop(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), path_in(uri)


def path_in(uri: str) -> str:
    """The path of ``uri`` in the file system ``filesystem(uri)`` gives (without making one)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return f"{bucket}/{key}".rstrip("/")
    if is_hadoop(uri):
        return "/" + uri.split("://", 1)[1].partition("/")[2]
    return os.path.abspath(os.path.expanduser(local_path(uri)))


def s3_filesystem(s3: S3Config):
    """pyarrow's S3 file system with the jobs' S3 settings. Credentials come from the AWS default
    chain (environment, shared files, instance or task role), as for boto3."""
    # botocore's standard and adaptive modes share the SDK's standard strategy (pyarrow has no
    # adaptive one); legacy is the SDK's default strategy. Both count the first attempt.
    strategy = pafs.AwsDefaultS3RetryStrategy if s3.retry_mode == "legacy" else pafs.AwsStandardS3RetryStrategy
    kwargs = {
        "region": s3.region,
        "connect_timeout": s3.connect_timeout,
        "request_timeout": s3.read_timeout,
        "retry_strategy": strategy(max_attempts=s3.max_attempts),
    }
    if s3.endpoint_url:
        parsed = urlparse(s3.endpoint_url)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def retry_note(uri: str, s3: S3Config | None) -> str:
    """What an S3 read error message should add: how hard it was tried."""
    if not is_s3(uri):
        return ""
    s3 = s3 or S3Config()
    return f" (tried up to s3.max_attempts={s3.max_attempts} times, s3.retry_mode={s3.retry_mode})"


# What Arrow's S3 file system says (after the AWS SDK's retries) when the service, not the request,
# failed: a later run may succeed.
_TRANSIENT = ("NETWORK_CONNECTION", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "REQUEST_TIMEOUT")


def is_transient(message: str) -> bool:
    """Whether an Arrow file system error message says the service failed rather than the request."""
    return any(marker in message for marker in _TRANSIENT)
