"""Which images the embed job reads: the files under input.uri whose names match input.pattern,
each with an item id (the key without its extension, or what input.id_regex captures).

Listing runs on the driver; the storage layer pages through S3 or walks the directory.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from typing import Optional

from lookalike.config import InputConfig, S3Config
from lookalike.errors import DuplicateItemIdError, InputError
from lookalike.io.storage import Entry, StorageError, storage_for
from lookalike.io.uris import is_s3, local_path, normalise_uri

log = logging.getLogger(__name__)


def name_matches(name: str, pattern: str) -> bool:
    """``name`` matches one of the '|'-separated globs of ``pattern``, ignoring case."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, p.strip().lower()) for p in pattern.split("|") if p.strip())


def item_id_for(key: str, id_regex: Optional[re.Pattern]) -> Optional[str]:
    """The item id of ``key`` (relative to input.uri); None when ``id_regex`` does not match."""
    if id_regex is None:
        stem, _ = os.path.splitext(key)
        return stem
    match = id_regex.search(key)
    if match is None:
        return None
    if "id" in match.groupdict():
        return match.group("id")
    return match.group(1) if match.groups() else match.group(0)


def assign_ids(listed: list[Entry], id_regex: Optional[str]) -> list[tuple[str, Entry]]:
    """(item_id, file) pairs in id order; duplicate ids are an error naming both keys."""
    pattern = re.compile(id_regex) if id_regex else None
    seen: dict[str, Entry] = {}
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


def list_images(cfg: InputConfig, s3: S3Config) -> list[tuple[str, Entry]]:
    """List the image files under ``input.uri`` on the driver: (item_id, file) in id order."""
    uri = normalise_uri(cfg.uri)
    storage = storage_for(uri, s3)
    try:
        found = list(storage.list(uri))
        # S3 has no directories: an empty prefix is simply no images. Elsewhere a missing
        # directory is a typo worth naming.
        if not found and not is_s3(uri) and not storage.exists(uri):
            raise InputError(f"input.uri {cfg.uri!r}: no such directory ({local_path(uri)})")
    except StorageError as exc:
        raise InputError(f"cannot list {cfg.uri}: {exc.message}. Nothing was written.") from None
    listed = [o for o in found if name_matches(o.key.rsplit("/", 1)[-1], cfg.pattern)]
    return assign_ids(listed, cfg.id_regex)
