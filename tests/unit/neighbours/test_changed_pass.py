"""The pass of one task's items against a chunk of changed items (neighbours.incremental), without
Spark: the shared path (one matrix product read by rows and by columns) against the general
path (the rules' kernel) and against brute force, with exact ties and min_score."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lookalike.neighbours import rules
from lookalike.neighbours.changed_pass import Changed, _rules_pass, _shared_pass
from lookalike.neighbours.topk import normalise
from tests.support.brute_force import brute_force, random_vectors

DIM, DEPTH = 16, 5


def _batches(ids: list[str], unit: np.ndarray, valid: np.ndarray, rows_per_batch: int):
    """PREPARED-like batches of one task: the columns the pass reads, rows in id order."""
    for at in range(0, len(ids), rows_per_batch):
        part = slice(at, at + rows_per_batch)
        yield pa.RecordBatch.from_pydict(
            {
                "item_id": ids[part],
                "valid": valid[part].tolist(),
                "is_candidate": [True] * len(ids[part]),
                "vector": [row.tobytes() for row in unit[part]],
                "codes": [[] for _ in ids[part]],
            }
        )


def _collect(out) -> tuple[dict, dict]:
    """({item: [(neighbour, score)]} new entries, {chunk item: [(global index, neighbour, score)]})."""
    new, own = {}, {}
    for batch in out:
        for row in batch.to_pylist():
            if row["own"]:
                entries = zip(row["neighbour_indexes"], row["neighbour_ids"], row["scores"], strict=True)
                own[row["item_id"]] = list(entries)
            else:
                new[row["item_id"]] = list(zip(row["neighbour_ids"], row["scores"], strict=True))
    return new, own


@pytest.mark.parametrize("min_score", [None, 0.2])
def test_the_shared_product_gives_what_the_rules_kernel_and_brute_force_give(min_score):
    n, first = 90, 1000  # first: the global index of this task's first candidate
    x = random_vectors(n, DIM, seed=3, duplicates=12, clusters=4)
    unit, _ = normalise(x)
    ids = [f"item-{i:03d}" for i in range(n)]
    valid = np.ones(n, bool)
    valid[[7, 40]] = False  # skipped by both sides
    # A chunk of changed items: some of this task's own rows, and items held by other tasks.
    inside = [3, 11, 12, 50, 89]
    outside = random_vectors(4, DIM, seed=4)
    outside_unit, _ = normalise(outside)
    chunk_ids = np.array(sorted([ids[i] for i in inside] + [f"zz-{j}" for j in range(4)]), dtype=object)
    by_id = {**{ids[i]: unit[i] for i in inside}, **{f"zz-{j}": outside_unit[j] for j in range(4)}}
    chunk = Changed(
        chunk_ids, np.stack([by_id[i] for i in chunk_ids]).astype(np.float32), None, np.ones(len(chunk_ids), bool)
    )
    ids_array = np.array(ids, dtype=object)

    shared = _collect(_shared_pass(_batches(ids, unit, valid, 32), chunk, first, DEPTH, 20, min_score, DIM))
    general = _collect(
        _rules_pass(_batches(ids, unit, valid, 32), chunk, first, DEPTH, 20, min_score, DIM, rules.NO_RULES, True)
    )
    # Own lists are the same on both paths; new entries too, except for rows that are chunk
    # items themselves (stale: the merge never reads them, and the shared path leaves them out).
    assert shared[1] == general[1]
    stale = set(chunk_ids)
    assert shared[0] == {item: entries for item, entries in general[0].items() if item not in stale}

    # Brute force over this task's valid rows and the chunk together.
    everything = list(ids) + [f"zz-{j}" for j in range(4)]
    vectors = np.vstack([unit, outside_unit])
    ok = np.concatenate([valid, np.ones(4, bool)])
    vectors[~ok] = 0.0  # invalid rows: no neighbours, never a neighbour
    in_task = set(ids_array[valid])
    for item in chunk_ids:  # a chunk item's best among this task's valid rows
        expected = brute_force(everything, vectors, DEPTH, candidates=in_task | {item}, min_score=min_score)
        got = [(neighbour, score) for _, neighbour, score in shared[1].get(item, [])]
        assert [n for n, _ in got] == [n for n, _ in expected.get(item, [])]
        assert np.allclose([s for _, s in got], [s for _, s in expected.get(item, [])], atol=1e-6)
        # Global indexes count this task's candidates (valid rows) from ``first``, in id order.
        position = {neighbour: first + at for at, neighbour in enumerate(ids_array[valid])}
        assert all(index == position[neighbour] for index, neighbour, _ in shared[1].get(item, []))
    for item in sorted(in_task - stale):  # a task row's best among the chunk items
        expected = brute_force(everything, vectors, DEPTH, candidates=set(chunk_ids) | {item}, min_score=min_score)
        got = shared[0].get(item, [])
        assert [n for n, _ in got] == [n for n, _ in expected.get(item, [])]
        assert np.allclose([s for _, s in got], [s for _, s in expected.get(item, [])], atol=1e-6)
