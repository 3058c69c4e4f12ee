"""Neighbour tables laid out in row groups as the neighbours job writes them, and a record of which
row groups the tools read (what makes a point lookup cheap)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def ranked_table(items: int, k: int) -> pa.Table:
    """A neighbour table in the real schema, sorted by item_id: item i's neighbours are items
    i + 7, i + 14, ... (never itself), scores falling with the rank."""
    import pyarrow as pa

    from lookalike import schemas

    ids = np.array([f"item-{i:06d}" for i in range(items)], dtype=object)
    item = np.repeat(np.arange(items), k)
    rank = np.tile(np.arange(1, k + 1), items)
    neighbour = (item + 7 * rank) % items
    score = (1.0 - rank / (k + 1) - (item % 13) / 1000).astype(np.float32)
    return pa.table(
        {"item_id": ids[item], "rank": rank.astype(np.int32), "neighbour_id": ids[neighbour], "score": score},
        schema=schemas.arrow_schema(schemas.NEIGHBOURS),
    )


def write_row_groups(table, directory: Path, files: int, rows_per_group: int) -> str:
    """Like the neighbours job: part files of consecutive ids, row groups of whole items."""
    directory.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // files // rows_per_group) * rows_per_group
    for index, start in enumerate(range(0, table.num_rows, step)):
        pq.write_table(table.slice(start, step), directory / f"part-{index:05d}.parquet", row_group_size=rows_per_group)
    (directory / "_SUCCESS").touch()
    return str(directory)


class Reads(list):
    """Every scan the tools start, as {"columns", "groups": [("table/file", row group), ...]}."""

    def groups(self, table: str = "") -> list:
        return [g for scan in self for g in scan["groups"] if g[0].startswith(table)]

    def columns(self) -> set:
        return {c for scan in self for c in scan["columns"]}


def record_reads(monkeypatch) -> Reads:
    """Wraps the two functions through which lookalike.io.tables reads rows from files."""
    from lookalike.io import tables

    reads = Reads()
    read_groups, scan = tables._read_groups, tables._scan

    def name(path: str) -> str:
        return "/".join(Path(path).parts[-2:])

    def recording_read_groups(filesystem, path, metadata, indices, columns):
        reads.append({"columns": list(columns), "groups": [(name(path), i) for i in indices]})
        return read_groups(filesystem, path, metadata, indices, columns)

    def recording_scan(data, columns, **options):
        groups = [(name(f.path), g.id) for f in data.get_fragments() for g in f.row_groups]
        reads.append({"columns": list(columns), "groups": groups})
        return scan(data, columns, **options)

    monkeypatch.setattr(tables, "_read_groups", recording_read_groups)
    monkeypatch.setattr(tables, "_scan", recording_scan)
    return reads


def bytes_read() -> int:
    """Bytes this process has read through read(2) and friends, cached or not (Linux)."""
    with open("/proc/self/io") as handle:
        return int(next(line for line in handle if line.startswith("rchar:")).split()[1])
