"""lookalike evaluate: metric definitions against hand-computed cases and a brute-force ranking,
label files in both layouts, and the command's table and JSON."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from lookalike.errors import InputError
from lookalike.io import tables
from lookalike.tools import cli
from lookalike.tools.evaluate import average_precision_at_k, evaluate, precision_at_k, recall_at_k
from lookalike.tools.labels import load_labels
from tests.support.paths import SAMPLE_LABELS
from tests.support.tablekit import brute_force_neighbours, label_vectors, sample_tables, write_table


def test_metrics_of_one_ranking_match_hand_computation():
    rel = [1, 0, 1, 0, 0]
    assert precision_at_k(rel, 5) == pytest.approx(2 / 5)
    assert recall_at_k(rel, 5, 3) == pytest.approx(2 / 3)
    # AP@5 = (P@1 + P@3) / min(5, 3) = (1 + 2/3) / 3
    assert average_precision_at_k(rel, 5, 3) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision_at_k([0, 1], 2, 1) == pytest.approx(0.5)
    # Fewer relevant items than k: a list that finds all of them first is perfect.
    assert average_precision_at_k([1, 1, 0], 3, 2) == pytest.approx(1.0)
    assert recall_at_k([1, 1, 0], 3, 2) == pytest.approx(1.0)
    # Only the first k entries count, and a short list is not rewarded.
    assert precision_at_k([1, 1, 1, 1], 2) == 1.0
    assert precision_at_k([1], 4) == pytest.approx(0.25)


def test_evaluate_small_catalogue_matches_hand_computation():
    labels = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "c1": "C"}
    rankings = {
        "a1": ["a2", "b1"],  # rel 1 0: P .5, R .5, AP .5
        "a2": ["b1", "a3"],  # rel 0 1: P .5, R .5, AP .25
        "a3": [("a1", 0.9), ("a2", 0.8)],  # rel 1 1: P 1, R 1, AP 1 (tuples as read from the table)
        "b1": ["x", "b2"],  # x has no label: rel 0 1, n_rel 1: P .5, R 1, AP .5
        "b2": ["a1", "c1"],  # rel 0 0
        "c1": ["a1", "b1"],  # the only C: no relevant item, left out
        "x": ["a1", "a2"],  # no label: left out
    }
    result = evaluate(rankings, labels, k=2)
    assert result["queries"] == 5
    assert result["items"] == 6  # labelled items the rankings name; x has no label
    assert result["precision_at_k"] == pytest.approx(0.5)
    assert result["recall_at_k"] == pytest.approx(0.6)
    assert result["map_at_k"] == pytest.approx(0.45)
    # chance = n_rel / (N - 1): 2/5 for the A queries, 1/5 for the B queries
    assert result["chance"] == pytest.approx((3 * 0.4 + 2 * 0.2) / 5)
    a, b = result["per_label"]["A"], result["per_label"]["B"]
    assert (a["queries"], a["items"]) == (3, 3)
    assert a["precision_at_k"] == pytest.approx(2 / 3)
    assert a["map_at_k"] == pytest.approx(1.75 / 3)
    assert b["recall_at_k"] == pytest.approx(0.5)
    assert b["chance"] == pytest.approx(0.2)
    assert "C" not in result["per_label"]
    assert result["skipped"] == {"unlabelled_queries": 1, "no_other_item_with_label": 1}
    assert result["unlabelled_neighbours"] == 1


def test_universe_sets_the_catalogue_for_recall_and_chance():
    labels = {"a1": "A", "a2": "A", "a3": "A", "b1": "B"}
    # a3 is in the catalogue but appears in no ranking: it still counts as relevant for a1.
    result = evaluate({"a1": ["a2"]}, labels, k=1, universe=["a1", "a2", "a3", "b1"])
    assert result["recall_at_k"] == pytest.approx(0.5)
    assert result["chance"] == pytest.approx(2 / 3)
    narrow = evaluate({"a1": ["a2"]}, labels, k=1)
    assert narrow["recall_at_k"] == pytest.approx(1.0)


def _naive_metrics(vectors: np.ndarray, labels: list[str], k: int) -> tuple[float, float, float]:
    """Straight from the definitions, over the full similarity matrix."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    n = len(labels)
    names = [f"i{j:03d}" for j in range(n)]
    ps, rs, aps = [], [], []
    for q in range(n):
        others = sorted((j for j in range(n) if j != q), key=lambda j: (-sims[q, j], names[j]))
        rel = np.array([labels[j] == labels[q] for j in others], dtype=float)
        n_rel = rel.sum()
        top = rel[:k]
        ps.append(top.mean())
        rs.append(top.sum() / n_rel)
        precision_at_i = np.cumsum(top) / np.arange(1, k + 1)
        aps.append((precision_at_i * top).sum() / min(k, n_rel))
    return float(np.mean(ps)), float(np.mean(rs)), float(np.mean(aps))


@pytest.mark.parametrize("noise", [0.3, 1.5, 50.0])
def test_evaluate_matches_brute_force_on_a_table_read_back(tmp_path, noise):
    rng = np.random.default_rng(7)
    labels = [f"L{int(x)}" for x in rng.integers(0, 4, size=40)]
    vectors = label_vectors(labels, dim=8, noise=noise, seed=3)
    ids = [f"i{j:03d}" for j in range(40)]
    k = 6
    path = write_table(brute_force_neighbours(ids, vectors, k), tmp_path / "neighbours", parts=3)
    result = evaluate(tables.read_rankings(path, k), dict(zip(ids, labels, strict=False)), k)
    precision, recall, mean_ap = _naive_metrics(vectors, labels, k)
    assert result["queries"] == 40
    assert result["precision_at_k"] == pytest.approx(precision, abs=1e-6)
    assert result["recall_at_k"] == pytest.approx(recall, abs=1e-6)
    assert result["map_at_k"] == pytest.approx(mean_ap, abs=1e-6)
    sizes = {label: labels.count(label) for label in labels}
    assert result["chance"] == pytest.approx(np.mean([(sizes[label] - 1) / 39 for label in labels]), abs=1e-6)


def test_chance_is_the_precision_of_random_rankings():
    rng = random.Random(1)
    ids = [f"i{j}" for j in range(30)]
    labels = {item: "A" if j < 12 else "B" if j < 27 else "C" for j, item in enumerate(ids)}
    k = 5
    runs = [evaluate({q: rng.sample([i for i in ids if i != q], k) for q in ids}, labels, k) for _ in range(300)]
    observed = np.mean([r["precision_at_k"] for r in runs])
    assert observed == pytest.approx(runs[0]["chance"], abs=0.01)


def test_clustered_embeddings_score_far_above_chance_on_the_sample(tmp_path):
    _, neighbours, _ = sample_tables(tmp_path, k=5)
    result = evaluate(tables.read_rankings(neighbours, 5), load_labels(str(SAMPLE_LABELS)), 5)
    assert result["queries"] == 60 and result["label_count"] == 10
    assert result["chance"] == pytest.approx(5 / 59)
    assert result["precision_at_k"] > 0.8 > 5 * result["chance"]


def test_labels_by_path_become_ids_like_the_embed_job(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "path,label,split\ntest/dress/06a0.jpg,dress,test\n./train/hat/b1.JPEG,hat,train\ntrain/hat/c.d.png,hat,train\n"
    )
    assert load_labels(str(csv_path)) == {"test/dress/06a0": "dress", "train/hat/b1": "hat", "train/hat/c.d": "hat"}
    assert load_labels(str(csv_path), r"([^/]+)\.\w+$") == {"06a0": "dress", "b1": "hat", "c.d": "hat"}


@pytest.mark.parametrize(
    "content, message",
    [
        ("id,category\na,b\n", "needs a header with 'label' and 'item_id' or 'path'"),
        ("item_id,label\na,x\nb,y\na,z\n", "item 'a' has two labels, 'x' and 'z' (line 4)"),
        ("item_id,label\na,\n", "line 2: empty label"),
        ("item_id,label\n", "has no rows"),
    ],
)
def test_bad_label_files_name_the_problem(tmp_path, content, message):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_labels(str(csv_path))


def test_evaluate_command_prints_table_and_writes_json(tmp_path, capsys):
    embeddings, neighbours, _ = sample_tables(tmp_path, k=10)
    out = tmp_path / "figures" / "eval.json"
    code = cli.main(
        [
            "evaluate",
            "--neighbours",
            neighbours,
            "--labels",
            str(SAMPLE_LABELS),
            "-k",
            "4",
            "--json",
            str(out),
            "--embeddings",
            embeddings,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert {"precision_at_k", "recall_at_k", "map_at_k", "chance", "per_label"} <= set(figures)
    assert figures["k"] == 4 and len(figures["per_label"]) == 10
    assert figures == {
        **evaluate(tables.read_rankings(neighbours, 4), load_labels(str(SAMPLE_LABELS)), 4),
        "neighbours_table": neighbours,
        "labels_file": str(SAMPLE_LABELS),
    }
    assert "precision@4" in printed and "mAP@4" in printed
    all_line = next(line for line in printed.splitlines() if line.startswith("all "))
    assert f"{figures['precision_at_k']:.3f}" in all_line and f"{figures['chance']:.3f}" in all_line
    assert "random-init weights" in printed  # the sample tables say weights=random-init


def test_evaluate_command_reports_ids_that_match_no_label(tmp_path, capsys):
    _, neighbours, _ = sample_tables(tmp_path, k=3)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("item_id,label\nnot-an-item,x\nother,x\n")
    code = cli.main(["evaluate", "--neighbours", neighbours, "--labels", str(csv_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "no query can be evaluated" in err and "60 without a label" in err
    assert "Traceback" not in err


def test_evaluate_command_missing_table_is_one_line(tmp_path, capsys):
    code = cli.main(["evaluate", "--neighbours", str(tmp_path / "nope"), "--labels", str(SAMPLE_LABELS)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("lookalike evaluate: table not found") and "\n" not in err


def test_labels_are_read_with_a_bom_quoted_fields_and_spaces_in_the_header(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(
        '\ufeffsplit, item_id ,label \ntest,a,"shoes, red"\ntrain, b ,hat\n\ntest,c,"two\nlines"\n'.encode("utf-8")
    )
    assert load_labels(str(csv_path)) == {"a": "shoes, red", "b": "hat", "c": "two\nlines"}


def test_labels_many_rows_are_streamed_and_line_numbers_stay_right(tmp_path, monkeypatch):
    from lookalike.tools import labels as labels_module

    monkeypatch.setattr(labels_module, "BLOCK", 4096)  # many blocks
    csv_path = tmp_path / "labels.csv"
    rows = [f"item-{i:05d},L{i % 3},{'x' * 20}" for i in range(5000)]
    csv_path.write_text("item_id,label,note\n" + "\n".join(rows) + "\nitem-00042,other,y\n")
    with pytest.raises(InputError, match=r"item 'item-00042' has two labels, 'L0' and 'other' \(line 5002\)"):
        load_labels(str(csv_path))
    csv_path.write_text("item_id,label,note\n" + "\n".join(rows) + "\n")
    assert load_labels(str(csv_path)) == {f"item-{i:05d}": f"L{i % 3}" for i in range(5000)}


def _write_labels(path, ids, every: int = 10) -> dict:
    """Labels for all ids but every ``every``-th, as a CSV; returns them."""
    labels = {item: f"L{int(item[-6:]) % 5}" for n, item in enumerate(ids) if n % every}
    path.write_text("item_id,label\n" + "".join(f"{i},{label}\n" for i, label in labels.items()))
    return labels


def _whole_table_rankings(path, k) -> dict:
    """The neighbour table read whole and ranked in plain Python: the reference."""
    import pyarrow.parquet as pq

    rankings: dict = {}
    for row in sorted(pq.read_table(path).to_pylist(), key=lambda r: (r["item_id"], r["rank"])):
        if row["rank"] <= k:
            rankings.setdefault(row["item_id"], []).append(row["neighbour_id"])
    return rankings


def test_evaluate_command_streams_the_table_a_row_group_at_a_time(tmp_path, monkeypatch, capsys):
    from tests.support.row_groups import ranked_table, record_reads, write_row_groups

    table = ranked_table(3000, 5)
    path = write_row_groups(table, tmp_path / "neighbours", files=3, rows_per_group=250)
    labels = _write_labels(tmp_path / "labels.csv", sorted(set(table.column("item_id").to_pylist())))
    reads = record_reads(monkeypatch)
    out = tmp_path / "eval.json"
    assert (
        cli.main(
            ["evaluate", "--neighbours", path, "--labels", str(tmp_path / "labels.csv"), "-k", "4", "--json", str(out)]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    rankings = _whole_table_rankings(path, 4)
    assert figures == {
        **evaluate(rankings, labels, 4),
        "neighbours_table": path,
        "labels_file": str(tmp_path / "labels.csv"),
    }
    assert figures["queries"] == 2700 and figures["unlabelled_neighbours"] > 0
    # Straight from the definitions: relevant only at rank 5 (i + 35 = i mod 5), so P@4 = 0 ...
    assert figures["precision_at_k"] == 0 and figures["map_at_k"] == 0
    # ... and at k=5 one hit in five wherever both are labelled.
    top5 = _whole_table_rankings(path, 5)
    hits = [1 if labels.get(ranked[4]) == labels[q] else 0 for q, ranked in top5.items() if q in labels]
    assert evaluate(top5, labels, 5)["precision_at_k"] == pytest.approx(np.mean(hits) / 5)
    # 60 row groups, one per scan, without the scores.
    assert len(reads) == 60 and all(len(scan["groups"]) == 1 for scan in reads)
    assert reads.columns() == {"item_id", "rank", "neighbour_id"}


def test_evaluate_command_on_an_unsorted_table_reads_overlapping_row_groups_together(tmp_path, capsys):
    from tests.support.row_groups import ranked_table, write_row_groups

    table = ranked_table(600, 5)
    ordered = write_row_groups(table, tmp_path / "ordered", files=2, rows_per_group=100)
    # Rows in a random order: every row group spans nearly all ids, so they are one set.
    shuffled = table.take(np.random.default_rng(3).permutation(table.num_rows))
    unsorted = write_row_groups(shuffled, tmp_path / "unsorted", files=3, rows_per_group=100)
    labels_path = tmp_path / "labels.csv"
    _write_labels(labels_path, sorted(set(table.column("item_id").to_pylist())), every=7)
    results = []
    for path in (ordered, unsorted):
        out = tmp_path / f"{Path(path).name}.json"
        assert (
            cli.main(["evaluate", "--neighbours", path, "--labels", str(labels_path), "-k", "5", "--json", str(out)])
            == 0
        )
        results.append({key: value for key, value in json.loads(out.read_text()).items() if key != "neighbours_table"})
    assert results[0] == results[1]


def test_figures_do_not_depend_on_the_order_of_the_lists():
    rng = random.Random(5)
    ids = [f"i{j:03d}" for j in range(200)]
    labels = {item: f"L{j % 6}" for j, item in enumerate(ids) if j % 9}
    rankings = {q: rng.sample([i for i in ids if i != q], 7) for q in ids}
    forward = evaluate(rankings, labels, 7)
    assert evaluate(dict(reversed(list(rankings.items()))), labels, 7) == forward
    shuffled = list(rankings.items())
    rng.shuffle(shuffled)
    assert evaluate(dict(shuffled), labels, 7) == forward


def test_a_labels_header_that_is_not_utf8_and_a_json_directory_are_one_line_each(tmp_path, capsys):
    # Issue 24: a UnicodeDecodeError traceback; an IsADirectoryError traceback and a stray .tmp.
    _, neighbours, _ = sample_tables(tmp_path, k=3)
    latin1 = tmp_path / "labels.csv"
    latin1.write_bytes("item_id,cat\u00e9gorie,label\na,b,c\n".encode("latin-1"))
    assert cli.main(["evaluate", "--neighbours", neighbours, "--labels", str(latin1)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"lookalike evaluate: labels file {latin1} is not UTF-8 text (byte 0xe9 in its header); save it as UTF-8"
    )
    folder = tmp_path / "figures"
    folder.mkdir()
    code = cli.main(["evaluate", "--neighbours", neighbours, "--labels", str(SAMPLE_LABELS), "--json", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"lookalike evaluate: --json {folder} is a directory") and "\n" not in err
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
