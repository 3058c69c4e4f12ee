"""lookalike evaluate --interactions: held-out co-interactions and recall@k / hit rate against a
count written out by hand, warm and cold apart."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.errors import InputError
from lookalike.hybrid import heldout
from lookalike.tools import cli


def _frame(pairs):
    return pd.DataFrame(pairs, columns=["user_id", "item_id"])


# u1 trained on a, b; held out c (cold: no training row). u2 trained on a, held out b.
TRAIN = _frame([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u3", "d"), ("u3", "e")])
HELD = _frame([("u1", "c"), ("u2", "b")])


def test_relevant_pairs_need_a_held_out_interaction_on_one_side():
    items, a, b = heldout.relevant_pairs(HELD, TRAIN)
    got = {(items[i], items[j]) for i, j in zip(a, b, strict=True)}
    # (a, b) through u1 is training only: not relevant; through u2 it is (b held out).
    assert got == {("c", "a"), ("a", "c"), ("c", "b"), ("b", "c"), ("a", "b"), ("b", "a")}
    # d, e: training only, no query.


def test_recall_and_hit_rate_by_hand():
    tally = heldout.CoTally(HELD, 2, TRAIN)
    # a: R = {b, c}; b: R = {a, c}; c (cold): R = {a, b}.
    tally.add(["a", "b", "c"], [2, 2, 1], ["b", "x", "d", "e", "a"])
    result = tally.result()
    # a: 1 hit of min(2, 2) -> 0.5; b: 0; c: 1 of 2 -> 0.5.
    assert result["all"]["queries"] == 3
    assert result["all"]["recall_at_k"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert result["all"]["hit_rate_at_k"] == pytest.approx(2 / 3)
    assert result["warm"] == {"queries": 2, "recall_at_k": 0.25, "hit_rate_at_k": 0.5, "without_list": 0}
    assert result["cold"] == {"queries": 1, "recall_at_k": 0.5, "hit_rate_at_k": 1.0, "without_list": 0}
    assert result["relevant_pairs"] == 6


def test_a_query_without_a_list_scores_zero_and_without_train_nothing_is_cold():
    tally = heldout.CoTally(_frame([("u", "a"), ("u", "b"), ("v", "a"), ("v", "c")]), 10)
    tally.add(["a"], [1], ["b"])
    result = tally.result()
    assert "cold" not in result and result["all"]["queries"] == 3
    assert result["all"]["without_list"] == 2
    # a: R = {b, c}, one hit of min(10, 2); b and c: no list.
    assert result["all"]["recall_at_k"] == pytest.approx(0.5 / 3)


def test_no_co_interaction_is_an_error():
    with pytest.raises(InputError, match="no co-interaction"):
        heldout.CoTally(_frame([("u", "a"), ("v", "b")]), 5).result()


def test_the_command_line_reads_csv_and_parquet(tmp_path, capsys):
    neighbours = tmp_path / "neighbours.parquet"
    pq.write_table(
        pa.table(
            {
                "item_id": ["a", "a", "b", "c"],
                "rank": pa.array([1, 2, 1, 1], pa.int32()),
                "neighbour_id": ["b", "x", "d", "a"],
                "score": pa.array([0.9, 0.8, 0.7, 0.6], pa.float32()),
            }
        ),
        neighbours,
    )
    held = tmp_path / "held.csv"
    held.write_text("user_id,item_id\nu1,c\nu2,b\n", encoding="utf-8")
    train = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pandas(TRAIN, preserve_index=False), train)
    out = tmp_path / "figures.json"
    code = cli.main(
        [
            "evaluate",
            "--neighbours",
            str(neighbours),
            "--interactions",
            str(held),
            "--train",
            str(train),
            "-k",
            "2",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "recall@2" in printed and "cold" in printed
    import json

    figures = json.loads(out.read_text())
    assert figures["cold"]["recall_at_k"] == 0.5 and figures["warm"]["recall_at_k"] == 0.25
    # Labels and interactions at once: one line saying to choose.
    assert (
        cli.main(["evaluate", "--neighbours", str(neighbours), "--interactions", str(held), "--labels", "x.csv"]) == 2
    )
