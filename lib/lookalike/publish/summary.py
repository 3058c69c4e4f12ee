"""The run summary committed with each snapshot (the ``lookalike.summary`` snapshot property): what
a run wrote, from which inputs, with which settings. The jobs write it through OutputSet.commit."""

from __future__ import annotations

from lookalike.config import S3Config
from lookalike.io.current import current


def read_summary(path: str, s3: S3Config | None = None) -> dict | None:
    """The run summary of the current snapshot of the table at ``path`` (of the current version, for
    a table an earlier lookalike published); None when there is none."""
    found = current(path, s3)
    return found.summary if found is not None else None
