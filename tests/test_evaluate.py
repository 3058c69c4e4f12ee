"""lookalike evaluate: metric definitions against hand-computed cases and a brute-force ranking,
label files in both layouts, and the command's table and JSON."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lookalike.tools import cli
from lookalike.io import tables
from lookalike.errors import InputError
from lookalike.tools.evaluate import average_precision_at_k, evaluate, precision_at_k, recall_at_k
from lookalike.tools.labels import load_labels

from tablekit import SAMPLE_LABELS, brute_force_neighbours, label_vectors, sample_tables, write_table


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
    result = evaluate(tables.read_rankings(path, k), dict(zip(ids, labels)), k)
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
    csv_path.write_text("path,label,split\ntest/dress/06a0.jpg,dress,test\n./train/hat/b1.JPEG,hat,train\n"
                        "train/hat/c.d.png,hat,train\n")
    assert load_labels(str(csv_path)) == {"test/dress/06a0": "dress", "train/hat/b1": "hat", "train/hat/c.d": "hat"}
    assert load_labels(str(csv_path), r"([^/]+)\.\w+$") == {"06a0": "dress", "b1": "hat", "c.d": "hat"}


@pytest.mark.parametrize("content, message", [
    ("id,category\na,b\n", "needs a header with 'label' and 'item_id' or 'path'"),
    ("item_id,label\na,x\nb,y\na,z\n", "item 'a' has two labels, 'x' and 'z' (line 4)"),
    ("item_id,label\na,\n", "line 2: empty label"),
    ("item_id,label\n", "has no rows"),
])
def test_bad_label_files_name_the_problem(tmp_path, content, message):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_labels(str(csv_path))


def test_evaluate_command_prints_table_and_writes_json(tmp_path, capsys):
    embeddings, neighbours, _ = sample_tables(tmp_path, k=10)
    out = tmp_path / "figures" / "eval.json"
    code = cli.main(["evaluate", "--neighbours", neighbours, "--labels", str(SAMPLE_LABELS), "-k", "4",
                     "--json", str(out), "--embeddings", embeddings])
    assert code == 0
    printed = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert {"precision_at_k", "recall_at_k", "map_at_k", "chance", "per_label"} <= set(figures)
    assert figures["k"] == 4 and len(figures["per_label"]) == 10
    assert figures == {**evaluate(tables.read_rankings(neighbours, 4), load_labels(str(SAMPLE_LABELS)), 4),
                       "neighbours_table": neighbours, "labels_file": str(SAMPLE_LABELS)}
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
