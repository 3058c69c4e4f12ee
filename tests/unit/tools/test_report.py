"""lookalike report: the HTML page is self-contained, escapes everything that comes from the tables,
shows placeholders for missing images, fetches from S3 with the jobs' settings, and reads only the
row groups it shows. That it renders in a real (headless) Chromium with every image loaded:
tests/e2e/test_report_browser.py."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from lookalike.errors import InputError
from lookalike.io import tables
from lookalike.tools import cli, report
from lookalike.tools.report import Card, Thumb, render, sample_queries
from tests.support.e2e_report_pages import HOSTILE_IDS, HOSTILE_LABEL, Parsed, write_report
from tests.support.row_groups import bytes_read, ranked_table, record_reads, write_row_groups
from tests.support.s3 import upload_dir
from tests.support.tablekit import (
    SAMPLE_DIR,
    SAMPLE_LABELS,
    brute_force_neighbours,
    embeddings_table,
    label_vectors,
    sample_items,
    sample_tables,
    write_table,
)


def test_report_escapes_ids_labels_and_uris(tmp_path):
    out, ids, missing, pictures = write_report(tmp_path)
    page = out.read_text()
    parsed = Parsed(page)
    text = "".join(parsed.text)
    assert parsed.count("script") == 0
    assert parsed.count("img") == pictures  # no injected <img>
    assert parsed.count("section") == 6
    assert not {"onerror", "onmouseover", "data-x"} & parsed.attributes()
    assert not any(attrs.get("id", "").startswith("injected") for _, attrs in parsed.tags)
    assert parsed.count("b") == 0 and parsed.count("i") == 0
    for hostile in HOSTILE_IDS + [HOSTILE_LABEL]:
        assert hostile in text  # shown as text, exactly
    # Every thumbnail is embedded, none is fetched by the browser.
    sources = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert all(src.startswith("data:image/jpeg;base64,") for src in sources)
    with Image.open(io.BytesIO(base64.b64decode(sources[0].split(",", 1)[1]))) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == 160
    links = [attrs["href"] for tag, attrs in parsed.tags if tag == "a"]
    assert 'odd"><i id=injected-uri>.jpg' in "".join(links)  # the URI survives, as a value
    assert "Content-Security-Policy" in page and "script-src" not in page


def test_missing_image_shows_a_placeholder_with_the_reason(tmp_path):
    out, ids, missing, pictures = write_report(tmp_path)
    parsed = Parsed(out.read_text())
    placeholders = [attrs for tag, attrs in parsed.tags if tag == "div" and attrs.get("class") == "lk-missing"]
    assert placeholders and all(attrs["title"].startswith("not_found:") for attrs in placeholders)
    cards = parsed.count("figure")
    assert cards == pictures + len(placeholders)


def test_labels_mark_neighbours_of_the_same_label(tmp_path):
    embeddings, neighbours, items = sample_tables(tmp_path, k=4)
    query = items[0][0]
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
                "4",
                "--labels",
                str(SAMPLE_LABELS),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    parsed = Parsed(out.read_text())
    classes = [attrs["class"] for tag, attrs in parsed.tags if tag == "figure"]
    rankings = tables.read_rankings(neighbours, 4, items=[query])[query]
    label = dict((i, lab) for i, _, lab in items)
    expected = ["lk-card"] + [
        "lk-card lk-same" if label[n] == label[query] else "lk-card lk-other" for n, _ in rankings
    ]
    assert classes == expected
    shown_scores = [float(s) for s in re.findall(r'class="lk-score"[^>]*>([-0-9.]+)<', out.read_text())]
    assert shown_scores == pytest.approx([round(s, 3) for _, s in rankings], abs=1e-3)


def test_items_and_k_choose_what_is_shown(tmp_path):
    embeddings, neighbours, items = sample_tables(tmp_path, k=5)
    chosen = [items[7][0], items[3][0]]
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
                ",".join(chosen),
                "-k",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    parsed = Parsed(out.read_text())
    assert parsed.count("section") == 2 and parsed.count("img") == 2 * 3
    ids = [t for t in parsed.text if re.fullmatch(r"[a-z-]+/[0-9a-f-]{36}", t)]
    assert ids[0] == chosen[0] and ids[3] == chosen[1]  # in the order given


def test_unknown_item_is_one_clear_line(tmp_path, capsys):
    embeddings, neighbours, items = sample_tables(tmp_path, k=3)
    wrong = items[0][0][:-1] + "x"
    code = cli.main(
        [
            "report",
            "--embeddings",
            embeddings,
            "--neighbours",
            neighbours,
            "--items",
            wrong,
            "--out",
            str(tmp_path / "r.html"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert f"item '{wrong}' is in neither the embeddings nor the neighbour table" in err
    assert repr(items[0][0]) in err  # suggested
    assert not (tmp_path / "r.html").exists()


def test_sample_is_seeded_and_bounded(tmp_path):
    _, neighbours, items = sample_tables(tmp_path, k=3)
    table = tables.open_table(neighbours)
    first = sample_queries(table, sample=5, seed=3)
    assert first == sample_queries(table, sample=5, seed=3) and len(first) == 5
    assert first == sorted(first) and set(first) <= {i for i, _, _ in items}
    assert first != sample_queries(table, sample=5, seed=4)
    assert sample_queries(table, sample=100) == sorted(i for i, _, _ in items)  # all 60, none twice
    with pytest.raises(InputError, match="--sample must be a positive number"):
        sample_queries(table, sample=0)


def test_render_without_neighbours_or_image():
    page = render([(Card("lonely", None), [])], {}, full_page=False)
    assert "no neighbours in the table" in page and "not in the embeddings table" in page
    assert page.startswith("<style>")  # a fragment for notebooks: no <html>, no CSP meta
    broken = render([(Card("q", "javascript:alert(1)"), [])], {"javascript:alert(1)": Thumb(None, "not_found: x")})
    assert "href" not in broken  # never a javascript: link


def test_report_reads_images_and_tables_from_s3(tmp_path, s3, bucket, s3_endpoint):
    upload_dir(s3, bucket, SAMPLE_DIR, "images/")
    items = sample_items()[:8]
    ids = [item_id for item_id, _, _ in items]
    vectors = label_vectors([label for _, _, label in items], seed=5)
    uris = [f"s3://{bucket}/images/{item_id}.jpg" for item_id in ids]
    local = {
        "embeddings": write_table(embeddings_table(ids, uris, vectors), tmp_path / "embeddings"),
        "neighbours": write_table(brute_force_neighbours(ids, vectors, 3), tmp_path / "neighbours"),
    }
    for name, directory in local.items():
        upload_dir(s3, bucket, Path(directory), f"tables/{name}/")
    config = tmp_path / "s3.yaml"
    config.write_text(f"s3:\n  endpoint_url: {s3_endpoint}\n  max_attempts: 2\n")
    out = tmp_path / "r.html"
    code = cli.main(
        [
            "report",
            "--embeddings",
            f"s3://{bucket}/tables/embeddings",
            "--neighbours",
            f"s3://{bucket}/tables/neighbours",
            "--items",
            ids[0],
            "-k",
            "3",
            "--config",
            str(config),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    parsed = Parsed(out.read_text())
    assert parsed.count("img") == 4 and 'class="lk-missing"' not in out.read_text()
    assert {attrs["href"] for tag, attrs in parsed.tags if tag == "a"} <= set(uris)


# --- reading only what is shown ----------------------------------------------------------------


@pytest.fixture(scope="module")
def large_tables(tmp_path_factory):
    """A 20,000-item neighbour table (k=5, 200 row groups of 500 rows) and its embeddings table in
    the real schema (row groups of 1,000 rows, a 64-float embedding per item); the images do not
    exist, so the page shows placeholders and the tables are all that is read."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lookalike import schemas

    tmp = tmp_path_factory.mktemp("large")
    n, dim = 20_000, 64
    ranked = ranked_table(n, 5)
    neighbours = write_row_groups(ranked, tmp / "neighbours", files=4, rows_per_group=500)
    ids = [f"item-{i:06d}" for i in range(n)]
    schema = schemas.arrow_schema(schemas.EMBEDDINGS)
    vectors = np.random.default_rng(0).standard_normal(n * dim).astype(np.float32)
    embedded = pa.table(
        {
            "item_id": ids,
            "uri": [f"file:///nowhere/{i}.jpg" for i in ids],
            "source_version": ["v1"] * n,
            "source_bytes": [1000] * n,
            "width": [224] * n,
            "height": [224] * n,
            "model": ["vgg16"] * n,
            "weights": ["imagenet"] * n,
            "pooling": ["avg"] * n,
            "precision": ["float32"] * n,
            "runtime": ["keras"] * n,
            "dim": [dim] * n,
            "embedding": pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32)), pa.array(vectors)
            ),
            "model_fingerprint": ["f"] * n,
            "run_id": ["r"] * n,
            "embedded_at": pa.array(np.zeros(n, np.int64)),
        }
    ).cast(schema)
    embeddings = tmp / "embeddings"
    embeddings.mkdir()
    for part in range(4):
        pq.write_table(embedded.slice(part * 5000, 5000), embeddings / f"part-{part:05d}.parquet", row_group_size=1000)
    return str(embeddings), neighbours, ranked


def shown(page: str) -> list[tuple[list[str], list[str]]]:
    """(ids, link targets) of each section's cards, query first."""
    sections = page.split('<section class="lk-query">')[1:]
    return [(re.findall(r'class="lk-id">([^<]+)<', s), re.findall(r'href="([^"]+)"', s)) for s in sections]


def test_report_sample_reads_a_few_row_groups_and_never_the_embedding_column(large_tables, monkeypatch):
    import pyarrow.parquet as pq

    embeddings, neighbours, _ = large_tables
    expected = sample_queries(tables.open_table(neighbours), 5, 0)
    reads = record_reads(monkeypatch)
    page, counts = report.build(embeddings, neighbours, sample=5, k=3)
    assert counts["items"] == 5 and counts["cards"] == 5 * 4

    # What the page shows equals a brute-force read of both whole tables.
    rows = pq.read_table(neighbours).to_pylist()
    uris = dict(zip(*pq.read_table(embeddings, columns=["item_id", "uri"]).to_pydict().values(), strict=False))
    sections = shown(page)
    queries = [ids[0] for ids, _ in sections]
    assert queries == expected
    for ids, links in sections:
        top = sorted((r for r in rows if r["item_id"] == ids[0] and r["rank"] <= 3), key=lambda r: r["rank"])
        assert ids[1:] == [r["neighbour_id"] for r in top]
        assert links == [uris[i] for i in ids]
    assert "weights: imagenet" in page

    # 5 row groups to sample, at most 5 for their neighbours (of 200); the uris of 20 items from
    # at most 2 row groups each (of 20); the weights from the footers; never an embedding.
    assert len(reads.groups("neighbours")) <= 10 and len(reads.groups("embeddings")) <= 10, reads
    assert reads.columns() <= {"item_id", "uri", "rank", "neighbour_id", "score"}


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io to count bytes read")
def test_report_reads_a_small_part_of_the_files(large_tables):
    embeddings, neighbours, _ = large_tables
    table_bytes = sum(p.stat().st_size for d in (embeddings, neighbours) for p in Path(d).glob("*.parquet"))
    report.build(embeddings, neighbours, sample=5, k=3, seed=1)  # imports and first-use costs out of the way
    before = bytes_read()
    report.build(embeddings, neighbours, sample=5, k=3, seed=2)
    read = bytes_read() - before
    assert read < table_bytes / 10, f"read {read} bytes of {table_bytes} bytes of tables"


def test_report_items_look_up_only_their_row_groups(large_tables, monkeypatch):
    embeddings, neighbours, _ = large_tables
    reads = record_reads(monkeypatch)
    page, counts = report.build(embeddings, neighbours, items=["item-019999", "item-000003"], k=2)
    assert [ids for ids, _ in shown(page)] == [
        ["item-019999", "item-000006", "item-000013"],
        ["item-000003", "item-000010", "item-000017"],
    ]
    assert len(reads.groups("neighbours")) == 2 and len(reads.groups("embeddings")) == 2
    reads.clear()
    with pytest.raises(report.ItemNotFoundError, match=r"'item-012345x'.*similar ids: 'item-012345'"):
        report.build(embeddings, neighbours, items=["item-012345x"], k=2)
    assert len(reads.groups("neighbours")) <= 3
