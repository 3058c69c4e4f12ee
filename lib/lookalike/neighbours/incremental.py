"""Incremental exact top-k: a previous run's lists brought up to date with the items that changed
since, scoring only the changed items against all items (one matrix, read both ways). The numeric
core of issue 25, plain numpy, checked against brute force (tests/unit/neighbours/test_incremental.py);
the Spark job that feeds it the previous table and the embeddings' changes is still to come.

Why a kept list stays exact: a previous list of depth D held the D best old candidates of its
item, so every candidate missing from it scored at most its last entry's score (the list's
``floor``). After the changed and deleted items' entries are dropped, the entries left are the
best unchanged candidates, and a changed item's new score is exact. In the merged list, every
entry above the floor is therefore exact; below it, an unchanged candidate the list never held
may belong, so the list is cut there. A list cut shorter than k (it lost more entries than its
reserve) is scored again against all items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMPTY = -1


@dataclass(frozen=True)
class Refreshed:
    neighbours: np.ndarray  # (n, depth) positions of the neighbours, best first; EMPTY where none
    scores: np.ndarray  # (n, depth) float32 cosines; -inf where none
    rescored: np.ndarray  # (n,) bool: rows scored again against every item (changed, or cut short)


def refresh(
    neighbours: np.ndarray,
    scores: np.ndarray,
    changed: np.ndarray,
    vectors: np.ndarray,
    k: int,
    depth: int,
) -> Refreshed:
    """Lists of every item over ``vectors`` (n x d, L2-normalised, in position order), from the
    previous lists (``neighbours``/``scores``, n x D, best first, positions in this same order;
    EMPTY for none and for items deleted since) and ``changed`` (n bools: new or changed items,
    whose previous rows and entries are stale). A deleted neighbour's position is EMPTY but its
    score stays: a full list's last score is its floor. Returns lists at most ``depth`` deep
    (k + reserve), every entry exact; ties rank by position (the table's item id order)."""
    n = len(vectors)
    changed = np.asarray(changed, dtype=bool)
    out_n = np.full((n, depth), EMPTY, dtype=np.int64)
    out_s = np.full((n, depth), -np.inf, dtype=np.float32)
    moved = np.flatnonzero(changed)
    # Scores of the changed items against every item: their own rows, and every other row's new
    # candidates (the same matrix, read by columns).
    block = vectors[moved] @ vectors.T if len(moved) else np.zeros((0, n), np.float32)
    rescore = changed.copy()
    depth_before = neighbours.shape[1]
    for row in np.flatnonzero(~changed):
        # A full previous list has a floor; one with room left held every candidate there was.
        last = scores[row][-1] if depth_before else -np.inf
        floor = last if np.isfinite(last) else -np.inf
        valid = neighbours[row] != EMPTY
        kept = valid & ~changed[np.where(valid, neighbours[row], 0)]
        others = moved != row
        ids = np.concatenate([neighbours[row][kept], moved[others]])
        vals = np.concatenate([scores[row][kept], block[others, row]]).astype(np.float32)
        from_kept = np.concatenate([np.ones(int(kept.sum()), bool), np.zeros(int(others.sum()), bool)])
        order = np.lexsort((ids, -vals))
        ids, vals, from_kept = ids[order], vals[order], from_kept[order]
        exact = from_kept | (vals > floor)
        ids, vals = ids[exact], vals[exact]
        if len(ids) < min(k, n - 1):
            rescore[row] = True  # lost more than its reserve: score it against everything
            continue
        out_n[row, : min(depth, len(ids))] = ids[:depth]
        out_s[row, : min(depth, len(vals))] = vals[:depth]
    for row in np.flatnonzero(rescore):
        row_scores = vectors[row] @ vectors.T
        row_scores[row] = -np.inf
        order = np.lexsort((np.arange(n), -row_scores))[: min(depth, n - 1)]
        out_n[row, : len(order)] = order
        out_s[row, : len(order)] = row_scores[order]
    return Refreshed(out_n, out_s, rescore)
