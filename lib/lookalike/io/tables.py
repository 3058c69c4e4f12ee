"""Reading the jobs' Parquet tables with pyarrow, without Spark, for the ``lookalike`` tools.

Tables may sit in a local directory, behind file://, hdfs:// or s3:// (with the jobs' S3 settings:
retries, timeouts and an S3-compatible endpoint work as in the jobs; see io/arrowfs.py).

Only the columns and rows a tool needs are read (``ParquetTable``): the Parquet footers (row
counts, and each row group's min and max of a column) say which row groups can hold the wanted
ids, only those row groups' columns are read, and the other rows of them are dropped. The
neighbour table is sorted by item_id with row groups cut between items, so a lookup of a few ids
reads a few row groups whatever the table's size. ``ParquetTable`` reads with pyarrow.parquet, not
pyarrow.dataset, which imports pandas: a third of ``lookalike similar``'s time went to that import.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lookalike.config import S3Config
from lookalike.errors import InputError, InputUnavailableError
from lookalike.io import arrowfs
from lookalike.io.current import table_files
from lookalike.io.redact import redact
from lookalike.io.storage import StorageError

RANKING_COLUMNS = ["item_id", "rank", "neighbour_id", "score"]
# Files whose footers or row groups are read at once (each a round trip or more on S3).
FILE_THREADS = 8
# Sampling gives up drawing rows after this many draws beyond the number asked for: a table with
# barely more items than that is small, and its items are then chosen among all of them.
EXTRA_DRAWS = 64
# (column, op, value) with op "in", "==" or "<=", all of which a row must meet.
Filters = Sequence[tuple]


def _unreadable(path: str, exc: Exception, s3: S3Config | None) -> InputError:
    text = exc.message if isinstance(exc, StorageError) else str(exc)
    transient = getattr(exc, "transient", False) or arrowfs.is_transient(text)
    error = InputUnavailableError if transient else InputError
    return error(f"cannot read the Parquet table at {path}: {redact(text)}{arrowfs.retry_note(path, s3)}")


def _errors():
    import pyarrow as pa

    return OSError, pa.ArrowInvalid, StorageError


def dataset(path: str, s3: S3Config | None = None):
    """A pyarrow dataset over the current version of the table at ``path``."""
    import pyarrow.dataset as ds

    try:
        filesystem, files, _ = table_files(path, s3)
        return ds.dataset(files, format="parquet", filesystem=filesystem)
    except FileNotFoundError:
        raise InputError(f"table not found: {path}") from None
    except _errors() as exc:
        raise _unreadable(path, exc, s3) from None


@dataclass(frozen=True)
class RowGroup:
    """One row group as its file's footer describes it; ``low``/``high``: the min and max of the
    key column, None where the footer has no statistics (then it may hold any value)."""

    path: str  # its file, in the table's file system
    index: int  # in its file
    rows: int
    start: int  # position of its first row in the table (files in path order)
    low: Any = None
    high: Any = None
    nulls: int | None = None

    def may_hold(self, sorted_values: list) -> bool:
        if self.low is None or self.high is None:
            return True
        at = bisect.bisect_left(sorted_values, self.low)
        return at < len(sorted_values) and sorted_values[at] <= self.high


class ParquetTable:
    """The current version of one table, its files listed once and each footer read at most once."""

    def __init__(self, path: str, s3: S3Config | None = None):
        self.path, self.s3 = path, s3
        self.filesystem, self.files, self.id_bounds = self._guard(lambda: table_files(path, s3))
        self._footers: dict[str, Any] = {}
        self._groups: dict[str, list[RowGroup]] = {}
        self.names = (
            self._guard(lambda: self.footer(self.files[0]).schema.to_arrow_schema().names) if self.files else []
        )

    def require(self, columns: Iterable[str], what: str = "the right table") -> None:
        _require(self.path, self.names, columns, what)

    def footer(self, path: str):
        """The file's Parquet metadata (row groups, statistics, schema)."""
        if path not in self._footers:
            self._footers[path] = self._guard(lambda: _read_footer(self.filesystem, path))
        return self._footers[path]

    def groups(self, key: str = "item_id") -> list[RowGroup]:
        """Every row group with its row count and its statistics of ``key``, from the footers."""
        if key not in self._groups:
            self._groups[key] = self._file_groups(self.files, key)
        return self._groups[key]

    def _file_groups(self, files: list[str], key: str) -> list[RowGroup]:
        """The row groups of ``files`` (footers read in parallel, once), positions counted from
        the first of them."""
        self.require([key])
        unread = [f for f in files if f not in self._footers]
        footers = self._guard(lambda: _in_parallel(lambda f: _read_footer(self.filesystem, f), unread))
        self._footers.update(zip(unread, footers, strict=True))
        groups, start = [], 0
        for path in files:
            metadata = self.footer(path)
            column = next((j for j in range(metadata.num_columns) if metadata.schema.column(j).path == key), None)
            for index in range(metadata.num_row_groups):
                group = metadata.row_group(index)
                stats = group.column(column).statistics if column is not None else None
                bounds = {}
                if stats is not None and stats.has_min_max:
                    bounds = {"low": _text(stats.min), "high": _text(stats.max)}
                    if None in bounds.values():
                        bounds = {}
                nulls = stats.null_count if stats is not None and stats.has_null_count else None
                groups.append(RowGroup(path, index, group.num_rows, start, nulls=nulls, **bounds))
                start += group.num_rows
        return groups

    def read(self, columns: list[str], groups: list[RowGroup] | None = None, filters: Filters = ()):
        """The given columns of the rows that meet ``filters``, as a pyarrow Table, reading only
        ``groups`` when given (None: every row group)."""
        import pyarrow as pa

        needed = list(dict.fromkeys([*columns, *(f[0] for f in filters)]))
        self.require(needed)
        groups = self.groups() if groups is None else groups
        files: dict[str, list[int]] = {}
        for group in groups:
            files.setdefault(group.path, []).append(group.index)

        def read_file(path: str):
            part = _read_groups(self.filesystem, path, self.footer(path), files[path], needed)
            # Filtered file by file: memory holds a few files' row groups, not all of them.
            return (part.filter(_mask(part, filters)) if filters else part).select(columns)

        parts = self._guard(lambda: _in_parallel(read_file, list(files)))
        if not parts:
            return pa.schema([self._field(c) for c in columns]).empty_table()
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def scan(self, columns: list[str], batch_size: int = 65_536, readahead: int = 2) -> Iterator:
        """Every row of the given columns as record batches: about ``readahead`` batches and one
        file are decoded ahead of the consumer, however slow it is and whatever the table's size."""
        import pyarrow.dataset as ds

        self.require(columns)
        data = self._guard(lambda: ds.dataset(self.files, format="parquet", filesystem=self.filesystem))
        # use_threads=False: with threads, pyarrow's scanner decodes far past its readahead limits
        # when the consumer is slower than the disk (a training step is), up to the whole table.
        # Decoding in the consuming thread keeps the bound; I/O still runs in Arrow's I/O threads.
        scanner = self._guard(
            lambda: _scan(
                data, columns, batch_size=batch_size, batch_readahead=readahead, fragment_readahead=1, use_threads=False
            )
        )
        batches = iter(scanner.to_batches())
        while True:
            batch = self._guard(lambda: next(batches, None))
            if batch is None:
                return
            yield batch

    def lookup(self, key: str, values: Iterable, columns: list[str], filters: Filters = ()):
        """The rows whose ``key`` is one of ``values``, from the row groups whose statistics allow
        it; for an Iceberg table's item_id, only in the files whose bounds in the manifests allow it
        (the other files' footers are never read)."""
        self.require(columns)
        wanted = sorted(set(values))
        if key == "item_id" and self.id_bounds and key not in self._groups:
            bounds = self.id_bounds
            files = [f for f in self.files if f not in bounds or RowGroup("", 0, 0, 0, *bounds[f]).may_hold(wanted)]
            candidates = self._file_groups(files, key)
        else:
            candidates = self.groups(key)
        groups = [g for g in candidates if g.may_hold(wanted)]
        return self.read(columns, groups, [(key, "in", wanted), *filters])

    def first(self, column: str):
        """The value of ``column`` in the table's first row (None for an empty table), reading
        one row group's column and only the footers up to the first file with a row."""
        self.require([column])
        for path in self.files:
            metadata = self.footer(path)
            for index in range(metadata.num_row_groups):
                rows = metadata.row_group(index).num_rows
                if rows:
                    return self.read([column], [RowGroup(path, index, rows, 0)]).column(0)[0].as_py()
        return None

    def distinct(self, column: str) -> list:
        """The distinct values of ``column``, sorted: from the footers where a row group's min and
        max are equal (one value, no null), reading only the other row groups' column."""
        import pyarrow.compute as pc

        values = set()
        for group in self.groups(column):
            if group.low is not None and group.low == group.high and group.nulls == 0:
                values.add(group.low)
            elif group.rows:
                values.update(pc.unique(self.read([column], [group]).column(0)).to_pylist())
        return sorted(values, key=lambda v: (v is None, v))

    def sample(self, count: int, seed: int = 0, key: str = "item_id") -> list[str]:
        """Up to ``count`` distinct values of ``key``, sorted: those at seeded random row positions
        of the table (files in path order), reading only the row groups those positions fall in.
        An item's chance is proportional to its number of rows. The same seed and table give the
        same items."""
        groups = [g for g in self.groups(key) if g.rows]
        total = sum(g.rows for g in groups)
        starts = [g.start for g in groups]
        rng = random.Random(seed)
        read: dict[int, Any] = {}
        chosen: dict[str, None] = {}
        draws = 0
        while len(chosen) < count and len(read) < len(groups) and draws < count + EXTRA_DRAWS:
            position = rng.randrange(total)
            at = bisect.bisect_right(starts, position) - 1
            if at not in read:
                read[at] = self.read([key], groups=[groups[at]]).column(0)
            chosen.setdefault(read[at][position - groups[at].start].as_py(), None)
            draws += 1
        if len(chosen) < count and groups:
            unread = [g for i, g in enumerate(groups) if i not in read]
            everything = [value for column in read.values() for value in column.to_pylist()]
            if unread:
                everything += self.read([key], groups=unread).column(0).to_pylist()
            rest = sorted(set(everything) - set(chosen))
            chosen.update(dict.fromkeys(rng.sample(rest, min(count - len(chosen), len(rest)))))
        return sorted(chosen)

    def ids_near(self, value: str, key: str = "item_id", most_groups: int = 2, window: int = 50) -> list[str]:
        """Sorted distinct ids that sort next to ``value`` (``window`` on each side), from the row
        groups where it would be (or the nearest ones): for a message that suggests close ids
        without reading the whole table or comparing it with every id."""
        groups = [g for g in self.groups(key) if g.rows]
        if not groups:
            return []
        if all(g.low is not None for g in groups):
            holding = [g for g in groups if g.low <= value <= g.high]
            below = [g for g in groups if g.high < value]
            above = [g for g in groups if g.low > value]
            nearest = ([max(below, key=lambda g: g.high)] if below else []) + (
                [min(above, key=lambda g: g.low)] if above else []
            )
            groups = holding or nearest
        ids = sorted(set(self.read([key], groups[:most_groups]).column(0).to_pylist()))
        at = bisect.bisect_left(ids, value)
        return ids[max(0, at - window) : at + window]

    def whole_items(self, key: str = "item_id") -> list[list[RowGroup]]:
        """Row groups in sets that hold every row of the ids in them: groups whose ranges of
        ``key`` overlap are one set. For the jobs' neighbour tables each set is one row group;
        a table without statistics is one set."""
        groups = [g for g in self.groups(key) if g.rows]
        if any(g.low is None for g in groups):
            return [groups] if groups else []
        units: list[list[RowGroup]] = []
        high = None
        for group in sorted(groups, key=lambda g: (g.low, g.high)):
            if units and group.low <= high:
                units[-1].append(group)
                high = max(high, group.high)
            else:
                units.append([group])
                high = group.high
        return units

    def _field(self, column: str):
        return self.footer(self.files[0]).schema.to_arrow_schema().field(column)

    def _guard(self, action):
        try:
            return action()
        except FileNotFoundError:
            raise InputError(f"table not found: {self.path}") from None
        except _errors() as exc:
            raise _unreadable(self.path, exc, self.s3) from None


def _text(value):
    """A string column's statistic as str: writers that leave out the UTF8 annotation give bytes,
    which would not compare with the ids asked for (UTF-8 bytes sort as the text does)."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:  # a truncated statistic: no bound at all
        return None


def _in_parallel(function, paths: list[str]) -> list:
    """``function`` of each file, in order. pyarrow reads and decodes without the GIL, so threads
    overlap S3 round trips and use every core."""
    if len(paths) < 2:
        return [function(p) for p in paths]
    with ThreadPoolExecutor(max_workers=FILE_THREADS, thread_name_prefix="lookalike-read") as pool:
        return list(pool.map(function, paths))


def _read_footer(filesystem, path: str):
    import pyarrow.parquet as pq

    with filesystem.open_input_file(path) as handle:
        return pq.ParquetFile(handle).metadata


def _read_groups(filesystem, path: str, metadata, indices: list[int], columns: list[str]):
    """The one place rows are read: some row groups of one file, some columns."""
    import pyarrow.parquet as pq

    with filesystem.open_input_file(path) as handle:
        return pq.ParquetFile(handle, metadata=metadata).read_row_groups(indices, columns=columns)


def _scan(data, columns: list[str], **options):
    """The one place a whole table is streamed: a pyarrow scanner over ``data``."""
    return data.scanner(columns=columns, **options)


def _mask(table, filters: Filters):
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = None
    for column, op, value in filters:
        data = table.column(column)
        if op == "in":
            test = pc.is_in(data, value_set=pa.array(list(value), data.type))
        elif op == "==":
            test = pc.equal(data, value)
        elif op == "<=":
            test = pc.less_equal(data, value)
        else:
            raise ValueError(f"unknown filter operator {op!r}")
        mask = test if mask is None else pc.and_(mask, test)
    return mask


def open_table(path: str | ParquetTable, s3: S3Config | None = None) -> ParquetTable:
    return path if isinstance(path, ParquetTable) else ParquetTable(path, s3)


def read_table(path: str, columns: list[str], s3: S3Config | None = None, filter=None):
    """The given columns (and rows matching ``filter``, a pyarrow dataset expression) as a pyarrow
    Table; the tools use ``ParquetTable``, this is for notebooks and scripts."""
    data = dataset(path, s3)
    _require(path, data.schema.names, columns)
    try:
        return data.to_table(columns=columns, filter=filter)
    except _errors() as exc:
        raise _unreadable(path, exc, s3) from None


def _require(path: str, names: list[str], columns: Iterable[str], what: str = "the right table") -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(
            f"{path} has no column {', '.join(repr(c) for c in missing)} (it has "
            f"{', '.join(names) or 'no columns'}); is it {what}?"
        )


def ranked_lists(table, k: int):
    """Neighbour rows of whole items (a pyarrow Table) -> (query ids, list sizes, neighbour ids,
    scores): per item its neighbours best first (by rank), self-matches left out, at most k."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.filter(pc.not_equal(table.column("item_id"), table.column("neighbour_id")))
    table = table.sort_by([("item_id", "ascending"), ("rank", "ascending")])
    items = table.column("item_id").combine_chunks()
    n = len(items)
    changed = pc.not_equal(items.slice(1), items.slice(0, max(n - 1, 0))).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(changed) + 1]) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.append(starts, n))
    kept = table.filter(pa.array(np.arange(n) - np.repeat(starts, sizes) < k))
    scores = kept.column("score").to_numpy() if "score" in kept.column_names else None
    return (
        items.take(pa.array(starts, pa.int64())),
        np.minimum(sizes, k),
        kept.column("neighbour_id").combine_chunks(),
        scores,
    )


def iter_ranked_lists(
    path: str | ParquetTable, k: int, s3: S3Config | None = None, columns: list[str] | None = None
) -> Iterator[tuple]:
    """``ranked_lists`` of the whole neighbour table, a set of row groups at a time (whole items
    each, see ``ParquetTable.whole_items``): memory bounded by the largest set, not the table."""
    table = open_table(path, s3)
    columns = columns or RANKING_COLUMNS
    table.require(columns, "a neighbour table")
    for unit in table.whole_items():
        yield ranked_lists(table.read(columns, unit, [("rank", "<=", k)]), k)


def read_rankings(
    path: str | ParquetTable, k: int, s3: S3Config | None = None, items: Iterable[str] | None = None
) -> dict[str, list[tuple[str, float]]]:
    """Neighbour table -> {item_id: [(neighbour_id, score), ...] best first, at most k each}.

    ``items`` restricts the queries read to the row groups that can hold them (the report needs
    a few, not the whole table).
    """
    table = open_table(path, s3)
    parts: Iterable[tuple]
    if items is None:
        parts = iter_ranked_lists(table, k)
    else:
        parts = [ranked_lists(table.lookup("item_id", items, RANKING_COLUMNS, [("rank", "<=", k)]), k)]
    rankings: dict[str, list[tuple[str, float]]] = {}
    for query_ids, sizes, neighbour_ids, scores in parts:
        neighbours = neighbour_ids.to_pylist()
        at = 0
        for item, size in zip(query_ids.to_pylist(), sizes.tolist(), strict=True):
            rankings[item] = [(neighbours[i], float(scores[i])) for i in range(at, at + size)]
            at += size
    return rankings
