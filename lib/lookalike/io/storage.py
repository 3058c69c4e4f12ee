"""The one storage interface: every byte lookalike lists, reads or writes goes through a
:class:`Storage` from :func:`storage_for`, whatever the URI (s3://, a local path or file://,
hdfs:// or another Hadoop scheme).

Why these backends and not one library for all three:

- S3 is boto3 only. It is the client whose retries s3.max_attempts and s3.retry_mode configure,
  whose request hook lets us count attempts across botocore's retries and ours (a body cut off
  mid-transfer, which botocore does not retry), and which offers conditional writes
  (IfNoneMatch) for locks. Its default credential chain is the one redaction knows. pyarrow's
  S3FileSystem (the AWS C++ SDK) has no conditional put and no attempt count to report. The one
  exception is reading Parquet tables with pyarrow datasets for the tools (io/arrowfs.py):
  there pyarrow's S3 file system is built from the same S3Config (retries, timeouts, endpoint),
  because a Python-implemented file inside pyarrow's I/O threads aborts the interpreter at exit.
- fsspec/s3fs is not used: it would add aiobotocore, which pins botocore to a narrow range (a
  fight with the boto3 pin), and wraps botocore anyway, behind an async layer that hides the
  retry and error details the messages need.
- HDFS is pyarrow.fs: already a dependency, and the libhdfs client Spark's Hadoop itself uses;
  HDFS has no retry settings to honour.
- Local files use os directly: O_EXCL, rename and fsync are exactly the primitives needed.

Errors are :class:`StorageError` with a ``kind`` (it becomes an error row's kind for images) and a
message that is already redacted; callers turn it into their domain error.
"""

from __future__ import annotations

from lookalike.config import S3Config
from lookalike.io.base import AtomicFile, Entry, Storage, StorageError, hidden_name
from lookalike.io.uris import is_hadoop, is_s3

# The interface lives in base.py (below the backends); these names stay importable from here,
# where callers get their storage.
__all__ = ["AtomicFile", "Entry", "Storage", "StorageError", "fetch", "hidden_name", "storage_for"]


def storage_for(uri: str, s3: S3Config | None = None) -> Storage:
    """The storage that holds ``uri``. Cheap: S3 clients are cached per thread and settings."""
    if is_s3(uri):
        from lookalike.io.s3 import S3Storage

        return S3Storage(s3 or S3Config())
    if is_hadoop(uri):
        from lookalike.io.hadoop import HadoopStorage

        return HadoopStorage()
    from lookalike.io.local import LocalStorage

    return LocalStorage()


def fetch(uri: str, s3: S3Config | None, max_bytes: int) -> bytes:
    """Read one whole file (an image, on the workers); StorageError as :meth:`Storage.read`."""
    return storage_for(uri, s3).read(uri, max_bytes)
