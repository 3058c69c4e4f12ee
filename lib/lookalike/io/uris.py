"""URIs: local paths, file://, s3:// and hdfs:// (or any Hadoop scheme), and how to tell them apart."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlparse


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://") or uri.startswith("s3a://") or uri.startswith("s3n://")


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, key). Not urlparse: S3 URIs carry raw keys, where '#', '?' and '%' are plain
    characters of the key, not a fragment, a query or an escape."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key.lstrip("/")


def is_hadoop(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme not in ("", "file") and not is_s3(uri) and len(scheme) > 1


def local_path(uri: str) -> str:
    """A local path for a plain path or file:// URI (percent-escapes decoded, the way
    :func:`file_uri` writes them; '#' and '?' are taken as part of the name)."""
    if uri.startswith("file://"):
        rest = uri[len("file://") :]
        if not rest.startswith("/"):  # file://localhost/path
            rest = "/" + rest.partition("/")[2]
        # A byte that is not UTF-8 comes back as the surrogate Python's file functions use.
        return unquote(rest, errors="surrogateescape")
    return uri


# Only what would not survive local_path(): '%' (escapes), controls, and the bytes of a file name
# that are not UTF-8 (which Python holds as lone surrogates, and no table can store). Spaces and
# non-ASCII letters stay readable in the uri column.
_URI_UNSAFE = re.compile(r"[%\x00-\x1f\x7f\udc80-\udcff]")
_NOT_UTF8 = re.compile(r"[\udc80-\udcff]")


def _escape(char: str) -> str:
    code = ord(char)
    return f"%{code - 0xDC00 if code >= 0xDC80 else code:02X}"


def file_uri(path: str) -> str:
    """The file:// URI of an absolute local path; local_path(file_uri(p)) == p for any name."""
    return "file://" + _URI_UNSAFE.sub(lambda m: _escape(m.group()), path)


def utf8_name(name: str) -> str:
    """A file name's text with each byte that is not UTF-8 written as %XX (E9 for a Latin-1 é):
    valid UTF-8 for keys and item ids, stable from run to run, and the byte is still readable."""
    return _NOT_UTF8.sub(lambda m: _escape(m.group()), name)


def normalise_uri(uri: str) -> str:
    """Absolute file:// URI for local paths (executors may run elsewhere in the cwd); others as given."""
    if is_s3(uri) or is_hadoop(uri):
        return uri
    return file_uri(os.path.abspath(os.path.expanduser(local_path(uri))))
