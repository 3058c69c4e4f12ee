"""Run ids and the run summary written next to every output."""

from __future__ import annotations

import datetime as dt
import platform
import uuid


def new_run_id() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def library_versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in (
        "lookalike",
        "pyspark",
        "numpy",
        "pandas",
        "pyarrow",
        "keras",
        "tensorflow-cpu",
        "tensorflow",
        "pillow",
        "boto3",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
