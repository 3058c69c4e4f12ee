"""The report page the report tests render: six sample items, three with hostile ids, one with a
hostile label, one whose image is gone and one whose URI is itself hostile. Shared by the unit
tests of the page (tests/unit/tools/test_report.py) and the headless-Chromium test
(tests/e2e/test_report_browser.py), which renders the very same page."""

from __future__ import annotations

import csv
import shutil
from html.parser import HTMLParser
from pathlib import Path

from lookalike.io import tables
from lookalike.tools import cli
from tests.support.tablekit import (
    SAMPLE_DIR,
    brute_force_neighbours,
    embeddings_table,
    label_vectors,
    sample_items,
    write_table,
)

# Each would add an element, an attribute or a running script to the page if it were not escaped.
HOSTILE_IDS = [
    "<script>document.title='pwned'</script>",
    '"><img src=x id=injected-img onerror="document.title=\'pwned\'">',
    'x" onmouseover="document.title=\'pwned\'" data-x="',
]
HOSTILE_LABEL = "<b id=injected-label>bold</b>"


class Parsed(HTMLParser):
    """Element counts and the visible text of a page, as a browser's parser sees them."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.tags if t == tag)

    def attributes(self) -> set[str]:
        return {name for _, attrs in self.tags for name in attrs}


def hostile_tables(tmp_path: Path, k: int = 3):
    """Six sample items, three with hostile ids, one hostile label, one image missing."""
    items = [i for i in sample_items() if i[2] == "hat"][:3] + [i for i in sample_items() if i[2] == "skirt"][:3]
    ids = [item_id for item_id, _, _ in items]
    ids[0], ids[2], ids[4] = HOSTILE_IDS
    uris = [uri for _, uri, _ in items]
    missing = ids[5]
    uris[5] = (tmp_path / "deleted.jpg").as_uri()
    # A URI that is itself hostile, on a real file whose name a browser would parse as markup.
    odd = tmp_path / 'odd"><i id=injected-uri>.jpg'
    shutil.copy(SAMPLE_DIR / f"{items[1][0]}.jpg", odd)
    uris[1] = "file://" + str(odd)
    labels = [label for _, _, label in items]
    vectors = label_vectors(labels, dim=8, seed=2)
    embeddings = write_table(embeddings_table(ids, uris, vectors), tmp_path / "embeddings")
    neighbours = write_table(brute_force_neighbours(ids, vectors, k), tmp_path / "neighbours")
    label_file = tmp_path / "labels.csv"
    label_rows = [
        (i, HOSTILE_LABEL if n == 3 else label) for n, (i, label) in enumerate(zip(ids, labels, strict=False))
    ]
    with open(label_file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "label"])
        writer.writerows(label_rows)
    rankings = tables.read_rankings(neighbours, k)
    pictures = sum(1 for q in ids for c in [q, *[n for n, _ in rankings[q]]] if c != missing)
    return embeddings, neighbours, str(label_file), ids, missing, pictures


def write_report(tmp_path: Path, *extra: str, k: int = 3):
    embeddings, neighbours, labels, ids, missing, pictures = hostile_tables(tmp_path, k)
    out = tmp_path / "report.html"
    code = cli.main(
        [
            "report",
            "--embeddings",
            embeddings,
            "--neighbours",
            neighbours,
            "--sample",
            "10",
            "-k",
            str(k),
            "--labels",
            labels,
            "--out",
            str(out),
            *extra,
        ]
    )
    assert code == 0
    return out, ids, missing, pictures
