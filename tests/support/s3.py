"""Objects in the tests' S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path


def upload_dir(s3, bucket: str, source: Path, prefix: str) -> list[str]:
    keys = []
    for path in sorted(source.rglob("*")):
        if path.is_file():
            key = f"{prefix}{path.relative_to(source).as_posix()}"
            s3.upload_file(str(path), bucket, key)
            keys.append(key)
    return keys
