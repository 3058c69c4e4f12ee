"""`lookalike similar` and `report` show each item's attribute values (neighbours.attributes or
--attributes), read for the shown items only, from a CSV (plain or gzipped) or a Parquet table."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.io import tables
from lookalike.tools import attributes, cli
from tests.support.row_groups import ranked_table, record_reads, write_row_groups
from tests.support.tablekit import sample_tables


def attribute_rows(ids):
    """category and in_stock for every other id (the rest have no row), plus ids unknown to the tables."""
    rows = [
        {"item_id": i, "category": f"cat-{n % 3}", "in_stock": "yes" if n % 2 else "no", "sku": f"00{n}"}
        for n, i in enumerate(ids)
        if n % 2 == 0
    ]
    return rows + [{"item_id": "not-embedded", "category": "x", "in_stock": "no", "sku": "1"}]


def write_csv(rows, path, gzipped=False):
    text = io.StringIO()
    writer = csv.DictWriter(text, ["item_id", "category", "in_stock", "sku"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = text.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return str(path)


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "parquet"])
def test_lookup_returns_the_rows_of_the_asked_ids_only_with_text_values(tmp_path, kind):
    ids = [f"item-{i:03d}" for i in range(40)]
    rows = attribute_rows(ids)
    if kind == "parquet":
        path = str(tmp_path / "attributes")
        (tmp_path / "attributes").mkdir()
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "attributes" / "part-0.parquet", row_group_size=4)
    else:
        path = write_csv(rows, tmp_path / f"attributes.{kind}", gzipped=kind.endswith("gz"))
    columns, found = attributes.lookup(path, ["item-000", "item-001", "item-004", "nope"])
    assert columns == ["category", "in_stock", "sku"]
    assert found == {
        "item-000": {"category": "cat-0", "in_stock": "no", "sku": "000"},
        "item-004": {"category": "cat-1", "in_stock": "no", "sku": "004"},
    }  # "004" stays text


def test_similar_shows_the_attributes_of_the_query_and_each_neighbour(tmp_path):
    table = ranked_table(60, 5)
    neighbours = write_row_groups(table, tmp_path / "neighbours", files=2, rows_per_group=50)
    ids = sorted(set(table.column("item_id").to_pylist()))
    path = write_csv(attribute_rows(ids), tmp_path / "attributes.csv")
    out = tmp_path / "out.json"
    import contextlib

    with open(out, "w") as handle, contextlib.redirect_stdout(handle):
        assert (
            cli.main(
                [
                    "similar",
                    "item-000010",
                    "--neighbours",
                    neighbours,
                    "--attributes",
                    path,
                    "-k",
                    "4",
                    "--format",
                    "json",
                ]
            )
            == 0
        )
    shown = json.loads(out.read_text())
    assert shown["attributes"] == {"category": "cat-1", "in_stock": "no", "sku": "0010"}
    for n in shown["neighbours"]:
        number = int(n["neighbour_id"].split("-")[1])
        want = None if number % 2 else {"category": f"cat-{number % 3}", "in_stock": "no", "sku": f"00{number}"}
        assert n["attributes"] == (want or {"category": None, "in_stock": None, "sku": None})


def test_similar_table_format_has_a_column_per_attribute(tmp_path, capsys):
    table = ranked_table(30, 3)
    neighbours = write_row_groups(table, tmp_path / "neighbours", files=1, rows_per_group=30)
    path = write_csv(attribute_rows(sorted(set(table.column("item_id").to_pylist()))), tmp_path / "a.csv")
    assert cli.main(["similar", "item-000000", "--neighbours", neighbours, "--attributes", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "items similar to item-000000 (category=cat-0, in_stock=no, sku=000)"
    assert lines[1].split() == ["rank", "score", "neighbour_id", "category", "in_stock", "sku"]
    first = lines[2].split()
    assert first[2] == "item-000007" and len(first) == 3  # odd ids have no attributes row
    second = lines[3].split()
    assert second[2] == "item-000014" and second[3:] == ["cat-2", "no", "0014"]


def test_report_captions_show_attribute_values_escaped(tmp_path):
    embeddings, neighbours, items = sample_tables(tmp_path, k=3)
    query = items[0][0]
    rows = [{"item_id": i, "category": f"<b>{label}</b>", "in_stock": "yes", "sku": "7"} for i, _, label in items]
    path = write_csv(rows, tmp_path / "attributes.csv")
    out = tmp_path / "r.html"
    assert (
        cli.main(
            [
                "report",
                "--embeddings",
                embeddings,
                "--neighbours",
                neighbours,
                "--items",
                query,
                "-k",
                "3",
                "--attributes",
                path,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    page = out.read_text()
    captions = re.findall(r'<span class="lk-attrs">(.*?)</span>', page)
    label = dict((i, lab) for i, _, lab in items)
    shown = [query, *[n for n, _ in tables.read_rankings(neighbours, 3, items=[query])[query]]]
    assert captions == [
        f"category: &lt;b&gt;{label[i]}&lt;/b&gt; &middot; in_stock: yes &middot; sku: 7" for i in shown
    ]
    assert "<b>" not in page


def test_a_parquet_attributes_table_is_read_by_row_group_statistics(tmp_path, monkeypatch):
    ids = [f"item-{i:06d}" for i in range(2000)]
    (tmp_path / "attributes").mkdir()
    pq.write_table(
        pa.Table.from_pylist(attribute_rows(ids)[:-1]), tmp_path / "attributes" / "part-0.parquet", row_group_size=50
    )
    reads = record_reads(monkeypatch)
    columns, found = attributes.lookup(str(tmp_path / "attributes"), ["item-000100", "item-000102"])
    assert set(found) == {"item-000100", "item-000102"}
    assert len(reads.groups()) == 1  # of 20 row groups
