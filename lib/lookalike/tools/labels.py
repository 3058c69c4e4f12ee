"""Ground-truth labels for evaluation and reports: a CSV of ``item_id,label`` or ``path,label``.

A ``path`` is turned into an item id exactly as the embed job does it (``listing.item_id_for``):
by default the path relative to input.uri without its extension (``dress/1a2b.jpg`` ->
``dress/1a2b``), or with the job's ``input.id_regex`` when ids were derived with one. Other
columns (``split``, ...) are ignored.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Optional

from lookalike.config import S3Config
from lookalike.embed.listing import item_id_for
from lookalike.errors import InputError
from lookalike.io.storage import StorageError, fetch

# The labels become a dict in memory anyway; a file beyond this is not a labels file.
MAX_BYTES = 4 * 1024**3


def load_labels(path: str, id_regex: Optional[str] = None, s3: Optional[S3Config] = None) -> dict[str, str]:
    """{item_id: label} from a local, s3:// or hdfs:// CSV. Conflicting labels for one item are an
    error naming the item."""
    try:
        text = fetch(path, s3, MAX_BYTES).decode("utf-8-sig")
    except StorageError as exc:
        if exc.kind == "not_found":
            raise InputError(f"labels file not found: {path}") from None
        raise InputError(f"cannot read labels file {path}: {exc.message}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"labels file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    handle = io.StringIO(text, newline="")
    try:
        pattern = re.compile(id_regex) if id_regex else None
    except re.error as exc:
        raise InputError(f"--id-regex {id_regex!r} is not a valid regular expression ({exc})") from None
    labels: dict[str, str] = {}
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        id_column = "item_id" if "item_id" in header else "path" if "path" in header else None
        if id_column is None or "label" not in header:
            raise InputError(
                f"labels file {path} needs a header with 'label' and 'item_id' or 'path' "
                f"columns; found {', '.join(header) or 'no header'}"
            )
        for line, row in enumerate(reader, start=2):
            raw_id = (row.get(id_column) or "").strip()
            label = (row.get("label") or "").strip()
            if not raw_id and not label:
                continue  # blank line
            if not raw_id or not label:
                raise InputError(f"labels file {path}, line {line}: empty {id_column if not raw_id else 'label'}")
            if id_column == "path":
                item_id = item_id_for(raw_id.replace("\\", "/").removeprefix("./"), pattern)
                if not item_id:
                    raise InputError(
                        f"labels file {path}, line {line}: path {raw_id!r} does not match "
                        f"--id-regex {id_regex!r}")
            else:
                item_id = raw_id
            if labels.get(item_id, label) != label:
                raise InputError(
                    f"labels file {path}: item {item_id!r} has two labels, {labels[item_id]!r} "
                    f"and {label!r} (line {line})")
            labels[item_id] = label
    if not labels:
        raise InputError(f"labels file {path} has no rows")
    return labels
