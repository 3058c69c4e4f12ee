"""Ground-truth labels for evaluation and reports: a CSV of ``item_id,label`` or ``path,label``.

A ``path`` is turned into an item id exactly as the embed job does it (``listing.item_id_for``):
by default the path relative to input.uri without its extension (``dress/1a2b.jpg`` ->
``dress/1a2b``), or with the job's ``input.id_regex`` when ids were derived with one. Other
columns (``split``, ...) are ignored.
"""

from __future__ import annotations

import re

from lookalike.config import S3Config
from lookalike.embed.listing import item_id_for
from lookalike.errors import InputError
from lookalike.io import arrowfs
from lookalike.io.redact import redact

# Enough for any header; only the column names are read from it.
HEADER_BLOCK = 1 << 20
# The file is parsed this many bytes at a time: memory holds the labels, not the file.
BLOCK = 4 << 20


def load_labels(path: str, id_regex: str | None = None, s3: S3Config | None = None) -> dict[str, str]:
    """{item_id: label} from a local, s3:// or hdfs:// CSV, streamed a block at a time with only
    the id and label columns parsed. Conflicting labels for one item are an error naming the item."""
    import pyarrow as pa
    from pyarrow import csv

    try:
        pattern = re.compile(id_regex) if id_regex else None
    except re.error as exc:
        raise InputError(f"--id-regex {id_regex!r} is not a valid regular expression ({exc})") from None
    parse = csv.ParseOptions(newlines_in_values=True)
    with _open(path, s3) as stream:
        header = _read(
            path,
            lambda: (
                csv.open_csv(
                    stream, read_options=csv.ReadOptions(block_size=HEADER_BLOCK), parse_options=parse
                ).schema.names
            ),
        )
    raw = {name.strip(): name for name in header}
    id_column = "item_id" if "item_id" in raw else "path" if "path" in raw else None
    if id_column is None or "label" not in raw:
        raise InputError(
            f"labels file {path} needs a header with 'label' and 'item_id' or 'path' "
            f"columns; found {', '.join(raw) or 'no header'}"
        )
    wanted = [raw[id_column], raw["label"]]
    convert = csv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() for c in wanted})
    labels: dict[str, str] = {}
    line = 1
    with _open(path, s3) as stream:
        reader = _read(
            path,
            lambda: csv.open_csv(
                stream, read_options=csv.ReadOptions(block_size=BLOCK), parse_options=parse, convert_options=convert
            ),
        )
        for batch in _batches(path, reader):
            ids, names = (batch.column(c).to_pylist() for c in wanted)
            for raw_id, label in zip(ids, names, strict=True):
                line += 1
                raw_id, label = (raw_id or "").strip(), (label or "").strip()
                if not raw_id and not label:
                    continue  # blank line
                if not raw_id or not label:
                    raise InputError(f"labels file {path}, line {line}: empty {id_column if not raw_id else 'label'}")
                if id_column == "path":
                    item_id = item_id_for(raw_id.replace("\\", "/").removeprefix("./"), pattern)
                    if not item_id:
                        raise InputError(
                            f"labels file {path}, line {line}: path {raw_id!r} does not match --id-regex {id_regex!r}"
                        )
                else:
                    item_id = raw_id
                if labels.get(item_id, label) != label:
                    raise InputError(
                        f"labels file {path}: item {item_id!r} has two labels, {labels[item_id]!r} "
                        f"and {label!r} (line {line})"
                    )
                labels[item_id] = label
    if not labels:
        raise InputError(f"labels file {path} has no rows")
    return labels


def _batches(path: str, reader):
    while True:
        try:
            batch = _read(path, reader.read_next_batch)
        except StopIteration:
            return
        yield batch


def _open(path: str, s3: S3Config | None):
    filesystem, where = arrowfs.filesystem(path, s3)
    return _read(path, lambda: filesystem.open_input_stream(where), s3)


def _read(path: str, action, s3: S3Config | None = None):
    """``action()``, its errors as one line that names the labels file."""
    import pyarrow as pa

    try:
        return action()
    except FileNotFoundError:
        raise InputError(f"labels file not found: {path}") from None
    except UnicodeDecodeError as exc:  # a header that is not UTF-8 (pyarrow decodes names in Python)
        raise InputError(
            f"labels file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} in its header); save it as UTF-8"
        ) from None
    except pa.ArrowInvalid as exc:
        if "UTF8" in str(exc):
            raise InputError(f"labels file {path} is not UTF-8 text ({exc})") from None
        if "Empty CSV file" in str(exc):
            raise InputError(
                f"labels file {path} needs a header with 'label' and 'item_id' or 'path' columns; found no header"
            ) from None
        raise InputError(f"labels file {path}: {exc}") from None
    except OSError as exc:
        raise InputError(f"cannot read labels file {path}: {redact(str(exc))}{arrowfs.retry_note(path, s3)}") from None
