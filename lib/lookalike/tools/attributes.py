"""The attributes of the items a tool shows (neighbours.attributes: item_id and any columns, CSV or
Parquet), read for those ids only: a Parquet table's row groups by their item_id statistics, a CSV
streamed in blocks and filtered, so a catalogue-sized table costs what a dozen rows cost."""

from __future__ import annotations

from collections.abc import Iterable

from lookalike.config import S3Config
from lookalike.errors import InputError

CSV_SUFFIXES = (".csv", ".csv.gz", ".txt")


def lookup(path: str, ids: Iterable[str], s3: S3Config | None = None) -> tuple[list[str], dict[str, dict]]:
    """(the attribute columns, {item_id: {column: value as text}}) for ``ids`` that have a row."""
    wanted = sorted({str(i) for i in ids})
    table = _csv_rows(path, wanted, s3) if path.lower().endswith(CSV_SUFFIXES) else _parquet_rows(path, wanted, s3)
    columns = [c for c in table.column_names if c != "item_id"]
    found: dict[str, dict] = {}
    for row in table.to_pylist():
        found.setdefault(str(row["item_id"]), {c: _text(row[c]) for c in columns})
    return columns, found


def _parquet_rows(path: str, wanted: list[str], s3: S3Config | None):
    from lookalike.io import tables

    table = tables.open_table(path, s3)
    table.require(["item_id"], "an attributes table (item_id and any columns)")
    rows = table.lookup("item_id", wanted, table.names)
    return rows.set_column(rows.schema.get_field_index("item_id"), "item_id", rows.column("item_id").cast("string"))


def _csv_rows(path: str, wanted: list[str], s3: S3Config | None):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from lookalike.io import arrowfs

    files, where = arrowfs.filesystem(path, s3)
    keep = pa.array(wanted, pa.string())
    try:
        with files.open_input_stream(where, compression="detect") as stream:
            # Every column as text: an id such as 007 must stay "007", a SKU column never a number.
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=4 << 20),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=True, column_types=_all_text(files, where)),
            )
            if "item_id" not in reader.schema.names:
                raise InputError(f"attributes {path}: no item_id column (it has {', '.join(reader.schema.names)})")
            parts = [
                pa.Table.from_batches([batch]).filter(pc.is_in(batch.column("item_id"), value_set=keep))
                for batch in reader
            ]
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(
            f"attributes {path}: cannot read it as CSV ({str(exc).splitlines()[0]}){arrowfs.retry_note(path, s3)}"
        ) from None
    return pa.concat_tables(parts) if parts else pa.table({"item_id": pa.array([], pa.string())})


def _all_text(files, where: str) -> dict:
    """{column: string} from the CSV's header line."""
    import csv
    import io

    import pyarrow as pa

    with files.open_input_stream(where, compression="detect") as stream:
        head = stream.read(1 << 16).decode("utf-8", errors="replace")
    header = next(csv.reader(io.StringIO(head.split("\n", 1)[0])), [])
    return {name: pa.string() for name in header}


def _text(value) -> str | None:
    return None if value is None else str(value)
