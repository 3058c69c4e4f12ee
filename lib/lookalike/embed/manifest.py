"""input.manifest: the keys to embed, read from a table by the executors instead of listed.

Listing 100M keys 1,000 at a time on the driver takes hours. An S3 Inventory report, or any table
of keys, is split into data files; each Spark task reads one of them, so the read scales with the
cluster. Rows become the same (item_id, uri, source_version, source_bytes) items as listing gives:
keys outside input.uri are skipped, input.pattern and input.id_regex apply, ids come from
:func:`listing.item_id_for`, and ETags become source_version, which incremental runs compare.

What input.manifest may name:

- an S3 Inventory ``manifest.json``: its fileFormat (CSV, Parquet or ORC), fileSchema and data
  files are used; the keys of CSV reports are URL-encoded and are decoded here;
- a Parquet, ORC or CSV (optionally gzipped) file, or a directory or prefix of them. CSV files
  either have a header row that names input.manifest_key_column, or no header, with the columns
  named by input.manifest_schema (S3 Inventory / S3 Batch Operations style: URL-encoded keys).

Columns, matched case-insensitively and ignoring '_': the key column (input.manifest_key_column),
and optionally bucket, size, etag (or e_tag), is_latest and is_delete_marker. A bucket column
makes keys bucket keys; without one, keys are bucket keys of input.uri's bucket for s3:// inputs
and paths relative to input.uri otherwise; a key that is a full URI is taken as it is.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote_plus

import pandas as pd

from lookalike import schemas
from lookalike.config import InputConfig, S3Config
from lookalike.embed.listing import check_unique_ids, input_uri, item_id_for, name_matches, rows_frame
from lookalike.embed.stage import ITEMS
from lookalike.errors import InputError, storage_failure
from lookalike.io.arrowfs import filesystem, retry_note
from lookalike.io.redact import redact
from lookalike.io.storage import StorageError, fetch, storage_for
from lookalike.io.uris import file_uri, is_hadoop, is_s3, local_path, normalise_uri, split_s3

log = logging.getLogger(__name__)

# One task streams one manifest data file, however large (S3 Inventory files run to gigabytes): what
# bounds its memory is Parquet read BATCH_ROWS rows at a time through READ_BUFFER_BYTES reads per
# column, ORC a stripe at a time (the writer's unit, 64 MB by default) and CSV in blocks of
# READ_BUFFER_BYTES. Only the columns a row may use are read from Parquet and ORC.
BATCH_ROWS = 65_536
READ_BUFFER_BYTES = 8 << 20
FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".orc": "orc",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".gz": "csv",
    ".tsv": "csv",
}
# What each task returns: the items plus the relative key (for duplicate messages) and a problem
# text for a data file that cannot be read (reported on the driver as one clear error).
ROWS = [c._replace(nullable=True) for c in ITEMS] + [
    schemas.Column("key", "string", True, ""),
    schemas.Column("problem", "string", True, ""),
]


@dataclass(frozen=True)
class DataFile:
    uri: str
    format: str  # parquet | orc | csv
    # CSV only: the column names of a file without a header row (None: the file has a header).
    columns: tuple[str, ...] | None = None
    # CSV only: keys are URL-encoded (S3 Inventory, S3 Batch Operations).
    encoded_keys: bool = False


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "")


def format_of(uri: str) -> str | None:
    lowered = uri.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if lowered.endswith(suffix):
            return FORMATS[suffix]
    return None


def _head_bytes(uri: str, s3: S3Config, size: int = 65536) -> bytes:
    """The first ``size`` bytes of a file, without reading the rest."""
    return storage_for(uri, s3).read_range(uri, 0, size)


def _is_gzip(head: bytes) -> bool:
    return head[:2] == b"\x1f\x8b"


def _first_row(head: bytes) -> list[str]:
    """The first CSV row of a file, from its first bytes (gzipped or not)."""
    text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head) if _is_gzip(head) else head
    lines = text.decode("utf-8", errors="replace").splitlines()
    return next(csv.reader(io.StringIO(lines[0] if lines else "")), [])


def _first_csv_row(uri: str, s3: S3Config) -> list[str]:
    try:
        return _first_row(_head_bytes(uri, s3))
    except StorageError as exc:
        raise storage_failure(InputError, f"input.manifest: cannot read {uri}: {exc.message}", exc) from None


def _list_files(uri: str, s3: S3Config) -> list[str]:
    """The data files at ``uri``: the file itself, or the files under a directory or prefix, minus
    Spark's and Hadoop's bookkeeping files (_SUCCESS, .crc) and S3 Inventory's manifest files."""
    uri = normalise_uri(uri)
    storage = storage_for(uri, s3)
    try:
        found = [o.uri for o in storage.list(uri)]
        if not found and not is_s3(uri) and not storage.exists(uri):
            raise InputError(f"input.manifest {uri}: no such file or directory")
    except StorageError as exc:
        raise storage_failure(InputError, f"input.manifest {uri}: cannot list it: {exc.message}", exc) from None
    names = lambda u: u.rstrip("/").rsplit("/", 1)[-1]  # noqa: E731
    return sorted(
        u
        for u in found
        if not names(u).startswith(("_", "."))
        and not u.endswith("/")
        and names(u) not in ("manifest.json", "manifest.checksum", "symlink.txt")
    )


def _from_inventory_manifest(uri: str, s3: S3Config) -> list[DataFile]:
    try:
        manifest = json.loads(fetch(uri, s3, 64 * 1024**2))
    except StorageError as exc:
        raise storage_failure(InputError, f"input.manifest {uri}: {exc.message}", exc) from None
    except ValueError as exc:
        raise InputError(f"input.manifest {uri}: not a valid S3 Inventory manifest.json ({exc})") from None
    fmt = str(manifest.get("fileFormat", "")).lower()
    if fmt not in ("csv", "parquet", "orc") or not manifest.get("files"):
        raise InputError(
            f"input.manifest {uri}: expected an S3 Inventory manifest.json with fileFormat "
            f"CSV, Parquet or ORC and a list of files; got fileFormat={manifest.get('fileFormat')!r}"
        )
    destination = str(manifest.get("destinationBucket", "")).split(":::")[-1]
    if not destination:
        raise InputError(f"input.manifest {uri}: destinationBucket is missing")
    columns = None
    if fmt == "csv":
        columns = tuple(c.strip() for c in str(manifest.get("fileSchema", "")).split(",") if c.strip())
    return [
        DataFile(f"s3://{destination}/{f['key']}", fmt, columns, encoded_keys=fmt == "csv") for f in manifest["files"]
    ]


def data_files(cfg: InputConfig, s3: S3Config) -> list[DataFile]:
    """Decide, on the driver, which files to read and how; fail here on anything unclear."""
    uri = cfg.manifest
    if uri is None:
        raise InputError("input.manifest is not set: the S3 Inventory manifest.json or the data files to read")
    if uri.rstrip("/").endswith("manifest.json"):
        files = _from_inventory_manifest(uri, s3)
    else:
        found = _list_files(uri, s3)
        if not found:
            raise InputError(f"input.manifest {uri}: no such file, or no data files under it")
        formats = [(u, format_of(u)) for u in found]
        unknown = [u for u, fmt in formats if fmt is None]
        if unknown:
            raise InputError(
                f"input.manifest: cannot tell the format of {unknown[0]} from its name; "
                f"manifest files end in .parquet, .orc, .csv or .csv.gz"
            )
        files = [DataFile(u, fmt) for u, fmt in formats if fmt is not None]
        csvs = [f for f in files if f.format == "csv"]
        if csvs:
            columns = _csv_columns(cfg, csvs[0].uri, s3)
            files = [
                DataFile(f.uri, f.format, columns, encoded_keys=columns is not None) if f.format == "csv" else f
                for f in files
            ]
    key = _norm(cfg.manifest_key_column)
    for f in files:
        if f.columns is not None and key not in map(_norm, f.columns):
            raise InputError(
                f"input.manifest: the columns of {f.uri} are {', '.join(f.columns)}: none is "
                f"input.manifest_key_column={cfg.manifest_key_column!r}"
            )
    return files


def _csv_columns(cfg: InputConfig, first: str, s3: S3Config) -> tuple[str, ...] | None:
    """None when CSV files have a header row naming the key column, else their column names."""
    if cfg.manifest_schema:
        return tuple(c.strip() for c in cfg.manifest_schema.split(",") if c.strip())
    row = _first_csv_row(first, s3)
    if _norm(cfg.manifest_key_column) in map(_norm, row):
        return None
    if len(row) == 2:
        return ("Bucket", "Key")
    raise InputError(
        f"input.manifest: {first} has no header row naming input.manifest_key_column="
        f"{cfg.manifest_key_column!r} and {len(row)} columns; point input.manifest at the S3 Inventory "
        f'manifest.json, or name the columns with input.manifest_schema, e.g. "Bucket, Key, Size, ETag"'
    )


# --- on the executors ---------------------------------------------------------------------------


def _needed(names: list[str], key_column: str) -> list[str]:
    """The columns of a data file that a row may use; ValueError when the key column is missing."""
    wanted = {_norm(key_column), "bucket", "size", "etag", "islatest", "isdeletemarker"}
    if _norm(key_column) not in map(_norm, names):
        raise ValueError(f"no column {key_column!r} (input.manifest_key_column); columns: {', '.join(names)}")
    return [name for name in names if _norm(name) in wanted]


def _tables(spec: DataFile, s3: S3Config, key_column: str):
    """The data file as Arrow tables of a bounded size, streamed from storage (native pyarrow files:
    no Python runs in pyarrow's I/O threads, see io/arrowfs.py), with string key/bucket/etag columns."""
    import pyarrow as pa

    files, path = filesystem(spec.uri, s3)
    if spec.format == "parquet":
        import pyarrow.parquet as pq

        with files.open_input_file(path) as handle:
            reader = pq.ParquetFile(handle, buffer_size=READ_BUFFER_BYTES)
            columns = _needed(reader.schema_arrow.names, key_column)
            for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False):
                yield pa.Table.from_batches([batch])
    elif spec.format == "orc":
        import pyarrow.orc as orc

        with files.open_input_file(path) as handle:
            reader = orc.ORCFile(handle)
            columns = _needed(reader.schema.names, key_column)
            for stripe in range(reader.nstripes):
                yield pa.Table.from_batches([reader.read_stripe(stripe, columns=columns)])
    else:
        with files.open_input_file(path) as handle:
            yield from _csv_tables(handle, spec, key_column)


def _csv_tables(handle, spec: DataFile, key_column: str):
    """A CSV file, gzipped or not (told by its first bytes: names need not say), as tables of
    READ_BUFFER_BYTES blocks, every column a string."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    head = handle.read_at(65536, 0)
    names = list(spec.columns) if spec.columns is not None else None
    header = names or _first_row(head)
    _needed(header, key_column)
    handle.seek(0)  # local files insist after a read_at
    # Large reads from storage: gzip alone would ask S3 for 64 KiB at a time.
    stream = pa.BufferedInputStream(handle, READ_BUFFER_BYTES)
    if _is_gzip(head):
        stream = pa.CompressedInputStream(stream, "gzip")
    read = pacsv.ReadOptions(column_names=names, use_threads=False, block_size=READ_BUFFER_BYTES)
    # Strings throughout: a key such as 007 must stay "007".
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=False)
    for batch in pacsv.open_csv(stream, read_options=read, convert_options=convert):
        yield pa.Table.from_batches([batch])


class _Resolver:
    """Turns manifest rows into the items listing would have produced for input.uri."""

    def __init__(self, cfg: InputConfig):
        self.cfg = cfg
        self.regex = re.compile(cfg.id_regex) if cfg.id_regex else None
        root = input_uri(cfg)
        if is_s3(root):
            self.kind = "s3"
            self.bucket, prefix = split_s3(root)
            self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        elif is_hadoop(root):
            self.kind = "hadoop"
            self.base = root.rstrip("/")
        else:
            self.kind = "local"
            self.base = local_path(normalise_uri(root)).rstrip("/")

    def locate(self, bucket: str | None, key: str) -> tuple[str, str] | None:
        """(uri, key relative to input.uri), or None when the object is outside input.uri."""
        if self.kind == "s3":
            if bucket is None and is_s3(key):
                bucket, key = split_s3(key)
            bucket = bucket if bucket is not None else self.bucket
            if bucket != self.bucket or not key.startswith(self.prefix):
                return None
            return f"s3://{bucket}/{key}", key[len(self.prefix) :]
        # File systems resolve ".." (S3 keys do not: there "a/../b" is its own object), so a key
        # is normalised before it is compared with input.uri: "../x" must not count as inside.
        if self.kind == "hadoop":
            full = key if "://" in key else f"{self.base}/{key}"
            scheme, _, rest = full.partition("://")
            host, _, path = rest.partition("/")
            full = f"{scheme}://{host}{posixpath.normpath('/' + path)}"
            if not full.startswith(self.base + "/"):
                return None
            rel = full[len(self.base) + 1 :]
            return f"{self.base}/{rel}", rel
        path = local_path(key) if key.startswith("file://") else key
        path = posixpath.normpath(path if path.startswith("/") else f"{self.base}/{path}")
        if bucket is not None or not path.startswith(self.base + "/"):
            return None
        return file_uri(path), path[len(self.base) + 1 :]


def _column(table, wanted: set[str]):
    for name in table.column_names:
        if _norm(name) in wanted:
            return table.column(name).to_pylist()
    return None


def _truthy(value) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def read_file(spec: DataFile, cfg: InputConfig, s3: S3Config, skipped: dict | None = None) -> Iterator[pd.DataFrame]:
    """One manifest data file -> frames of ROWS. Never raises for a bad file: it becomes one row
    whose ``problem`` says what is wrong, which the driver turns into one clear error."""
    resolver = _Resolver(cfg)
    key_name = _norm(cfg.manifest_key_column)
    counts = {"outside_uri": 0, "pattern": 0, "no_id": 0, "folder": 0, "not_current": 0}
    try:
        for table in _tables(spec, s3, cfg.manifest_key_column):
            keys = _column(table, {key_name})
            buckets = _column(table, {"bucket"})
            sizes = _column(table, {"size"})
            etags = _column(table, {"etag"})
            latest = _column(table, {"islatest"})
            deleted = _column(table, {"isdeletemarker"})
            out: dict[str, list] = {c: [] for c in schemas.names(ROWS)}
            for i, key in enumerate(keys):
                if key is None or key == "":
                    continue
                if (latest is not None and not _truthy(latest[i])) or (deleted is not None and _truthy(deleted[i])):
                    counts["not_current"] += 1
                    continue
                if spec.encoded_keys:
                    key = unquote_plus(key)
                if key.endswith("/"):
                    counts["folder"] += 1
                    continue
                located = resolver.locate(buckets[i] if buckets is not None else None, key)
                if located is None:
                    counts["outside_uri"] += 1
                    continue
                uri, rel = located
                if not name_matches(rel.rsplit("/", 1)[-1], cfg.pattern):
                    counts["pattern"] += 1
                    continue
                item_id = item_id_for(rel, resolver.regex)
                if not item_id:
                    counts["no_id"] += 1
                    continue
                size = sizes[i] if sizes is not None else None
                etag = etags[i] if etags is not None else None
                out["item_id"].append(item_id)
                out["uri"].append(uri)
                out["source_version"].append((str(etag).strip('"') or None) if etag is not None else None)
                out["source_bytes"].append(int(size) if size not in (None, "") else None)
                out["key"].append(rel)
                out["problem"].append(None)
            yield rows_frame(out)
    except Exception as exc:  # one clear message on the driver instead of a retried task failure
        text = exc.message if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"
        text += retry_note(spec.uri, s3) if isinstance(exc, OSError) else ""
        yield pd.DataFrame(
            {
                "item_id": [None],
                "uri": [spec.uri],
                "source_version": [None],
                "source_bytes": pd.array([None], dtype="Int64"),
                "key": [None],
                "problem": [f"{spec.uri}: {redact(text)}"],
            }
        )
    if skipped is not None:
        for name, value in counts.items():
            if value:
                skipped[name].add(value)


def read_manifest(spark, cfg: InputConfig, s3: S3Config | None = None):
    """The items named by input.manifest as a DataFrame with the columns of ``embed.ITEMS``, one
    partition per manifest data file. Raises InputError for an unreadable manifest and
    DuplicateItemIdError (naming both keys) when two keys give one item id; a key listed twice
    (overlapping reports) is kept once."""
    from pyspark.sql import functions as F

    s3 = s3 or S3Config()
    files = data_files(cfg, s3)
    sc = spark.sparkContext
    skipped = {name: sc.accumulator(0) for name in ("outside_uri", "pattern", "no_id", "folder", "not_current")}

    def read_files(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            for text in frame["spec"]:
                yield from read_file(DataFile(**json.loads(text)), cfg, s3, skipped)

    specs = [
        json.dumps({"uri": f.uri, "format": f.format, "columns": f.columns, "encoded_keys": f.encoded_keys})
        for f in files
    ]
    # parallelize with one slice per file: exactly one file per task, no shuffle.
    rows = spark.createDataFrame(sc.parallelize([(spec,) for spec in specs], len(specs)), "spec string").mapInPandas(
        read_files, schema=schemas.spark_schema(ROWS)
    )

    # One pass over the files answers everything: unreadable files (rows with a problem and no
    # item id), ids that come from two different keys, keys listed more than once.
    items_found, most = check_unique_ids(rows, lambda problem: InputError(f"input.manifest: cannot read {problem}"))
    dropped = {name: acc.value for name, acc in skipped.items() if acc.value}
    log.info(
        "manifest %s: %d data file(s), %d items%s",
        cfg.manifest,
        len(files),
        items_found,
        f"; skipped rows: {dropped}" if dropped else "",
    )
    items = rows.filter(F.col("problem").isNull())
    if most > 1:
        log.warning("input.manifest lists some keys more than once (overlapping reports?); each is embedded once")
        items = items.dropDuplicates(["item_id"])
    return items.select(*schemas.names(ITEMS))
