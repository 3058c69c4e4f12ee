"""notebooks/explore_recommendations.ipynb runs top to bottom (nbclient, the venv's python3 kernel)
against tables in the layout `make demo` writes, and shows the grid, the plot and the evaluation.
On the demo pipeline's own output: tests/e2e/test_demo_pipeline.py."""

from __future__ import annotations

import sys

import nbformat
import pytest
from nbclient import NotebookClient

from lookalike.io import tables
from lookalike.tools.evaluate import evaluate
from lookalike.tools.labels import load_labels
from tests.support.paths import ROOT, SAMPLE_LABELS
from tests.support.tablekit import sample_tables

NOTEBOOK = ROOT / "notebooks" / "explore_recommendations.ipynb"


def _outputs(cell, kind: str) -> list[str]:
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and kind == "text/plain":
            texts.append(output["text"])
        elif kind in output.get("data", {}):
            texts.append(output["data"][kind])
    return texts


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow  # a notebook kernel of its own (make test-fast leaves it out)
def test_notebook_runs_against_demo_layout_random_init_weights(tmp_path, monkeypatch):
    # The layout of `make demo`: <output>/embeddings and <output>/neighbours (random-init weights).
    embeddings, neighbours, items = sample_tables(tmp_path / "output", k=10)
    monkeypatch.setenv("LOOKALIKE_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("LOOKALIKE_LABELS", str(SAMPLE_LABELS))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert _outputs(code[-1], "text/plain")[0].strip() == sys.executable  # the venv's interpreter

    printed = "".join(t for c in code for t in _outputs(c, "text/plain"))
    assert f"embeddings: {embeddings}" in printed
    assert "60 embedded items" in printed
    markdown = "".join(t for c in code for t in _outputs(c, "text/markdown"))
    assert "random-init weights" in markdown

    grids = [t for c in code for t in _outputs(c, "text/html") if "lk-report" in t]
    assert len(grids) == 1
    assert grids[0].count("<img ") == 3 * (1 + 5) and grids[0].count('class="lk-query"') == 3

    plots = [t for c in code for t in _outputs(c, "image/png")]
    assert len(plots) == 1 and len(plots[0]) > 1000

    expected = evaluate(tables.read_rankings(neighbours, 5), load_labels(str(SAMPLE_LABELS)), 5)
    all_line = next(line for line in printed.splitlines() if line.startswith("all "))
    assert all_line.split()[1:] == [str(expected["queries"])] + [
        f"{expected[m]:.3f}" for m in ("precision_at_k", "recall_at_k", "map_at_k", "chance")
    ]


@pytest.mark.slow  # a notebook kernel of its own
def test_notebook_says_when_labels_are_missing(tmp_path, monkeypatch):
    sample_tables(tmp_path / "output", k=5)
    monkeypatch.setenv("LOOKALIKE_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("LOOKALIKE_LABELS", str(tmp_path / "no-labels.csv"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(t for c in nb.cells if c.cell_type == "code" for t in _outputs(c, "text/plain"))
    assert "no labels file at" in printed
    html = "".join(t for c in nb.cells if c.cell_type == "code" for t in _outputs(c, "text/html"))
    assert html.count("<img ") == 3 * (1 + 5)  # the grid shows without labels too
