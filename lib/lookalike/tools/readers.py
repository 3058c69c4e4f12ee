"""Reading the embeddings table downstream: a ``tf.data.Dataset`` for training models on it, and
petastorm for teams whose pipelines are built on petastorm.

The tf.data reader streams pyarrow record batches through a bounded read-ahead, so a table much
larger than memory can feed a training loop; every epoch reads the table again. It works wherever
the ``lookalike`` tools read tables (local, file://, hdfs://, s3:// with the jobs' S3 settings).

petastorm only imports with pyarrow <= 14.0.2 and numpy < 2, so it is an extra
(``pip install -c constraints-compat.txt 'lookalike[petastorm]'``, tested by ``make test-compat``)
and imported only by the functions that need it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from lookalike import publish, schemas
from lookalike.config import S3Config
from lookalike.errors import InputError, SchemaMismatchError
from lookalike.io import tables
from lookalike.io.uris import is_hadoop, is_s3, normalise_uri

log = logging.getLogger(__name__)

DEFAULT_COLUMNS = ("item_id", "embedding")
_TYPES = {c.name: c.type for c in schemas.EMBEDDINGS}
# Nulls in nullable columns (width, height, source_bytes, source_version) become these, because
# tensors have no null; the schema says which columns can hold them.
_NULL_FILL = {"string": "", "int": -1, "long": -1, "float": np.nan, "double": np.nan, "boolean": False}

PETASTORM_MISSING = (
    "petastorm is not importable here ({reason}). It needs pyarrow<=14.0.2, numpy<2 and "
    "setuptools<70: install it into a separate environment with "
    "`pip install -c constraints-compat.txt -e '.[petastorm]'` (what `make test-compat` builds), "
    "or use lookalike.readers.embeddings_dataset, which works with any pyarrow."
)


def _check_columns(columns: Sequence[str]) -> list[str]:
    names = list(columns)
    unknown = [c for c in names if c not in _TYPES]
    if unknown or not names:
        raise ValueError(
            f"columns {unknown or names!r}: the embeddings table has {', '.join(schemas.names(schemas.EMBEDDINGS))}"
        )
    return names


def _open(path: str, names: list[str], s3: S3Config | None) -> tables.ParquetTable:
    table = tables.open_table(path, s3)
    table.require(names, "an embeddings table")
    return table


def _to_numpy(name: str, column, dim: int | None, item_ids) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = _TYPES[name]
    if kind == "array<float>":
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != dim)
        if wrong.size:
            first = int(wrong[0])
            raise SchemaMismatchError(
                f"item {item_ids[first].as_py()!r} has an embedding of length {lengths[first]}, "
                f"but the table's first row has {dim}: the table mixes models or poolings. "
                "Recompute it with one model setting."
            )
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.astype(np.float32, copy=False).reshape(len(column), dim or 0)
    if kind == "timestamp":
        # Microseconds since the epoch, UTC: tf.data has no timestamp type.
        column = column.cast(pa.int64())
        kind = "long"
    if column.null_count:
        column = pc.fill_null(column, _NULL_FILL[kind])
    return column.to_numpy(zero_copy_only=False)


def _rebatch(batches, size: int, drop_remainder: bool):
    """Record batches of any size -> pyarrow Tables of exactly ``size`` rows (slices, no copies)."""
    import pyarrow as pa

    pending, rows = [], 0
    for batch in batches:
        if not batch.num_rows:
            continue
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows and not drop_remainder:
        yield pa.Table.from_batches(pending)


def iter_batches(
    path: str,
    batch_size: int = 256,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    s3: S3Config | None = None,
    drop_remainder: bool = False,
    readahead: int = 2,
    dim: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Stream the embeddings table as dicts of numpy arrays, ``batch_size`` rows each.

    Embeddings come as float32 ``(rows, dim)``, strings as object arrays of ``str``, timestamps as
    int64 microseconds (UTC). About ``readahead`` record batches and one file ahead are read
    beyond the batch being returned, however slowly it is consumed and whatever the table size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    names = _check_columns(columns)
    data = _open(path, names + (["dim"] if "embedding" in names else []), s3)
    if "embedding" in names and dim is None:
        dim = data.first("dim")
    # Embedding errors name the item, so item_id is read with the embedding even when not asked for.
    read = names + ["item_id"] if "embedding" in names and "item_id" not in names else names
    scanned = data.scan(read, batch_size=batch_size, readahead=readahead)
    for table in _rebatch(scanned, batch_size, drop_remainder):
        item_ids = table.column("item_id").combine_chunks() if "embedding" in names else None
        yield {name: _to_numpy(name, table.column(name).combine_chunks(), dim, item_ids) for name in names}


def _tensor_spec(name: str, batch: int | None, dim: int | None):
    import tensorflow as tf

    dtypes = {
        "string": tf.string,
        "int": tf.int32,
        "long": tf.int64,
        "float": tf.float32,
        "double": tf.float64,
        "boolean": tf.bool,
        "timestamp": tf.int64,
        "array<float>": tf.float32,
    }
    kind = _TYPES[name]
    shape = (batch, dim) if kind == "array<float>" else (batch,)
    return tf.TensorSpec(shape=shape, dtype=dtypes[kind], name=name)


def embeddings_dataset(
    path: str,
    batch_size: int = 256,
    columns: Sequence[str] | None = None,
    s3: S3Config | None = None,
    drop_remainder: bool = False,
    readahead: int = 2,
):
    """The embeddings table as a batched ``tf.data.Dataset``, streamed with pyarrow.

    With ``columns=None`` each element is ``(item_id, embedding)``: a string tensor ``(batch,)``
    and a float32 tensor ``(batch, dim)``. With ``columns=[...]`` each element is a dict of those
    columns (see :func:`iter_batches` for the types). ``.unbatch()`` gives one row per element.
    The table is opened when the dataset is iterated, so each epoch sees its current version.
    """
    import tensorflow as tf

    names = _check_columns(columns if columns is not None else DEFAULT_COLUMNS)
    # Opened once here so that a wrong path or table fails now, not at the first training step.
    data = _open(path, names + (["dim"] if "embedding" in names else []), s3)
    dim = data.first("dim") if "embedding" in names else None
    rows = batch_size if drop_remainder else None
    specs = {name: _tensor_spec(name, rows, dim) for name in names}

    def generate():
        for arrays in iter_batches(path, batch_size, names, s3, drop_remainder, readahead, dim):
            yield tuple(arrays[n] for n in names) if columns is None else arrays

    signature = tuple(specs[n] for n in names) if columns is None else specs
    log.info(
        "tf.data reader over %s: columns %s, batch_size %d, embedding dim %s", path, ", ".join(names), batch_size, dim
    )
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def _petastorm():
    try:
        import petastorm
    except ImportError as exc:
        raise ImportError(PETASTORM_MISSING.format(reason=exc)) from exc
    return petastorm


def _dataset_url(path: str, s3: S3Config | None) -> list[str]:
    """The URLs of the table's current data files (petastorm reads a list of files as one dataset)."""
    found = publish.current(path, s3)
    if found is None or not found.files:
        raise InputError(f"no table at {path}: it holds no Parquet data file")
    return [f if is_s3(f) or is_hadoop(f) else normalise_uri(f) for f in found.files]


def petastorm_reader(path: str, columns: Sequence[str] = DEFAULT_COLUMNS, s3: S3Config | None = None, **options):
    """A petastorm batch reader over the embeddings table (use it as a context manager).

    Each item is a namedtuple of numpy arrays for one Parquet row group; ``embedding`` is a
    ``(rows, dim)`` matrix. ``options`` go to ``petastorm.make_batch_reader``; the defaults here
    read each row group once, in order (pass ``shuffle_row_groups=True``, ``num_epochs=None``
    for training). ``petastorm.tf_utils.make_petastorm_dataset(reader)`` turns it into tf.data.
    Local paths, file:// and hdfs:// work as they are; s3:// goes through s3fs (not installed by
    the extra) with its own credentials and endpoint settings: ``s3`` is only used to find the
    table's current version.
    """
    petastorm = _petastorm()
    names = _check_columns(columns)
    settings = {
        "schema_fields": names,
        "shuffle_row_groups": False,
        "num_epochs": 1,
        "reader_pool_type": "thread",
        "workers_count": 2,
    }
    settings.update(options)
    url = _dataset_url(path, s3)
    log.info("petastorm reader over %s: columns %s", url, ", ".join(names))
    return petastorm.make_batch_reader(url, **settings)


def petastorm_converter(df, cache_dir_url: str):
    """A petastorm ``SparkDatasetConverter`` for a DataFrame (e.g. the embeddings table joined to
    labels): it materialises ``df`` under ``cache_dir_url`` once and then makes tf.data datasets
    (``converter.make_tf_dataset(batch_size=...)``) or torch loaders from it."""
    _petastorm()
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    df.sparkSession.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, normalise_uri(cache_dir_url))
    return make_spark_converter(df)
