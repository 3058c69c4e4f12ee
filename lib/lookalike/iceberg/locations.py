"""A table location is used only when it is empty or holds this table alone: lookalike never
writes into, moves or deletes what it did not write."""

from __future__ import annotations

import itertools
import re

from lookalike.config import S3Config
from lookalike.errors import OutputError, storage_failure
from lookalike.io.storage import StorageError, storage_for

# What an Iceberg table's location holds: its data files and its metadata, each under its folder.
TABLE_FOLDERS = ("data/", "metadata/")
# What a lookalike run killed before its first commit leaves at a new table's location: its tasks'
# files in its staging folder (publish/outputs.py, named by runinfo.new_run_id). Not a user's.
STAGED_BY_A_RUN = re.compile(r"^data/\d{8}T\d{6}Z-[0-9a-f]{8}/[^/]+$")


def normalised(location: str) -> str:
    """A location in the spelling pyiceberg stores: a URI (file:// for local paths), no trailing slash."""
    import os

    if "://" not in location:
        location = "file://" + os.path.abspath(os.path.expanduser(location))
    if location.startswith(("s3a://", "s3n://")):
        location = "s3://" + location.split("://", 1)[1]
    return location.rstrip("/")


def check_location(key: str, location: str, registered: bool, s3: S3Config | None = None) -> None:
    """Refuse ``location`` (the setting ``key``) unless it holds nothing, or only this table's
    ``data/`` and ``metadata/`` when the catalog already has the table (``registered``), or what
    a run killed before the table's first commit staged. Listing stops at the first foreign file;
    the message names the location and what is in it."""
    storage = storage_for(location, s3)
    try:
        found = _foreign_folders(location, registered)
        found += list(itertools.islice(_foreign(storage.list(location), registered), 3))
        found = list(dict.fromkeys(found))[:3]
    except StorageError as exc:
        if exc.kind == "not_found":
            return
        raise storage_failure(OutputError, f"{key}: cannot list {location}: {exc.message}", exc) from None
    if found:
        what = "its own files" if registered else "files"
        raise OutputError(
            f"{key}: {location} holds {what} lookalike did not write as this table (e.g. "
            f"{', '.join(found)}); lookalike never writes into, moves or deletes them: choose a location "
            f"that is empty or does not exist yet, or move them away"
        )


def _foreign_folders(location: str, registered: bool) -> list[str]:
    """Locally, also what holds no file (an empty folder someone made) at the top level."""
    import os

    from lookalike.io.uris import is_hadoop, is_s3, local_path

    if is_s3(location) or is_hadoop(location):
        return []
    path = local_path(location)
    if not os.path.isdir(path):
        return []
    names = sorted(os.listdir(path))
    allowed = TABLE_FOLDERS if registered else ("data/",)  # data/: what its listing holds is checked
    return [f"{n}/" for n in names if os.path.isdir(os.path.join(path, n)) and f"{n}/" not in allowed][:3]


def _foreign(entries, registered: bool):
    for entry in entries:
        key = entry.key.lstrip("/")
        if registered and key.startswith(TABLE_FOLDERS):
            continue
        if STAGED_BY_A_RUN.match(key):
            continue
        yield key
