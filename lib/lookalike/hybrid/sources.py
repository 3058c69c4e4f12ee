"""The ``source`` column: the kernels wrote NEIGHBOURS files (item_id, rank, neighbour_id, score);
one task per file reads it a row group at a time, adds each pair's source (blend.sources_of_scores,
from its blended score and the behaviour cosine of the two items' unit factors) and writes it again
as a HYBRID file of the same name, row groups and order, into the table's staging folder."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from lookalike import schemas
from lookalike.config import S3Config
from lookalike.hybrid import blend


@dataclass(frozen=True)
class Factors:
    """Every item's unit behaviour factor, by id (sorted), and whether it has interactions."""

    ids: np.ndarray  # object array, sorted
    unit: np.ndarray  # float32 (n, rank)
    warm: np.ndarray  # bool

    def positions(self, item_ids: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(self.ids, item_ids), len(self.ids) - 1)
        if not np.all(self.ids[at] == item_ids):
            raise RuntimeError("a neighbour table names an item the factors do not have")
        return at


def collect_factors(blended) -> Factors:
    """The ``factor`` and ``warm`` columns of factors.BLENDED rows, on the driver, sorted by id."""
    from lookalike.neighbours import arrow

    table = arrow.to_arrow(blended.select("item_id", "factor", "warm"))
    ids = np.array(table.column("item_id").to_pylist(), dtype=object)
    order = np.argsort(ids, kind="stable")
    flat = table.column("factor").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    unit = flat.astype(np.float32).reshape(len(ids), -1) if len(ids) else np.zeros((0, 0), np.float32)
    return Factors(ids[order], unit[order], table.column("warm").to_numpy(zero_copy_only=False)[order])


def with_sources(table, factors: Factors, alpha: float):
    """NEIGHBOURS rows -> HYBRID rows."""
    import pyarrow as pa

    items = factors.positions(table.column("item_id").to_numpy(zero_copy_only=False))
    neighbours = factors.positions(table.column("neighbour_id").to_numpy(zero_copy_only=False))
    cf = np.einsum("ij,ij->i", factors.unit[items].astype(np.float64), factors.unit[neighbours].astype(np.float64))
    cold = ~(factors.warm[items] & factors.warm[neighbours])
    named = blend.sources_of_scores(table.column("score").to_numpy(), cf, alpha, cold)
    return table.append_column("source", pa.array(named, pa.string())).cast(schemas.arrow_schema(schemas.HYBRID))


def _annotate_function(directory: str, factors_bc, alpha: float, s3: S3Config | None, row_group_rows: int):
    def annotate(path: str) -> dict:
        import pyarrow.parquet as pq

        from lookalike.io import arrowfs
        from lookalike.io.partfiles import PartWriter, write_part

        filesystem, where = arrowfs.filesystem(path, s3)
        counts = dict.fromkeys(blend.SOURCES, 0)
        with filesystem.open_input_file(where) as handle:
            parquet = pq.ParquetFile(handle)

            def tables():
                for group in range(parquet.num_row_groups):
                    table = with_sources(parquet.read_row_group(group), factors_bc.value, alpha)
                    found, n = np.unique(table.column("source").to_numpy(zero_copy_only=False), return_counts=True)
                    for name, count in zip(found, n, strict=True):
                        counts[str(name)] += int(count)
                    yield table

            written = write_part(
                tables(),
                lambda: PartWriter(
                    directory,
                    os.path.basename(where),
                    schemas.arrow_schema(schemas.HYBRID),
                    s3,
                    row_group_rows,
                    sorting_columns=("item_id", "rank"),
                ),
            )
        return {"rows": 0 if written is None else written["rows"], "sources": counts}

    return annotate


def annotate(
    spark, paths: list[str], directory: str, factors_bc, alpha: float, s3: S3Config | None, row_group_rows: int
):
    """Rewrite the kernel's files at ``paths`` as HYBRID files under ``directory``, one task per
    file; returns the rows written and the count of each source."""
    done = (
        spark.sparkContext.parallelize(paths, max(1, len(paths)))
        .map(_annotate_function(directory, factors_bc, alpha, s3, row_group_rows))
        .collect()
    )
    sources = dict.fromkeys(blend.SOURCES, 0)
    for part in done:
        for name, count in part["sources"].items():
            sources[name] += count
    return {"rows": sum(part["rows"] for part in done), "files": len(done), "sources": sources}


def write_empty(directory: str, s3: S3Config | None) -> None:
    """One empty HYBRID file, for when no item has a neighbour: the table is readable, with its schema."""
    from lookalike.io.partfiles import PartWriter

    PartWriter(directory, "part-00000.parquet", schemas.arrow_schema(schemas.HYBRID), s3).close()
