"""Incremental exact top-k: a previous run's lists brought up to date with the items that changed
since, scoring only the changed items against all items. The numeric core, plain numpy and
Python, checked against brute force (tests/unit/neighbours/test_incremental.py); the Spark stage
that feeds it is ``lookalike.neighbours.incremental_stage``.

Why a kept list stays exact. A previous list of depth D held the D best candidates of its item in
the canonical order (score descending, then smaller id), so every candidate it did not hold ranks
after its last entry: that entry is the list's ``Bound``. A list shorter than D held every
candidate there was (no bound). After the changed and deleted items' entries are dropped, the
entries left are the best unchanged candidates, and each changed item's new score is exact. In
the merged list, every entry ranking before the bound is therefore exact; from the first entry
after it on, an unchanged candidate the list never held may belong, so the list is cut there. A
list cut shorter than the depth the table needs (it lost more entries than its reserve) is
scored again against all items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EMPTY = -1


@dataclass(frozen=True)
class Bound:
    """The last entry of a list that did not hold every candidate: any candidate missing from the
    list ranks after (score, neighbour) in the canonical order."""

    score: float
    neighbour: Any  # an item id (str) in the job, a position (int) in ``refresh``


def ranks_before(score: float, neighbour, bound: Bound) -> bool:
    """Whether (score, neighbour) comes before ``bound`` in the canonical order, or is it."""
    return score > bound.score or (score == bound.score and neighbour <= bound.neighbour)


@dataclass(frozen=True)
class Merged:
    neighbours: list  # best first
    scores: list  # float32 values
    bound: Bound | None  # None: the list holds every allowed candidate


def merge_list(
    kept: Sequence[tuple[Any, float]],
    new: Sequence[tuple[Any, float]],
    bound: Bound | None,
    depth: int,
    needed: int,
) -> Merged | None:
    """One item's list after a change: ``kept`` its previous entries still valid (neither neighbour
    changed nor deleted), ``new`` its best ``depth`` candidates among the changed items (exact
    scores), ``bound`` its previous list's; ``kept`` best first, as the previous list held it.
    Returns the list at most ``depth`` deep, every entry exact, or None when fewer than ``needed``
    entries are known to be exact: score it again."""
    if bound is not None and not any(ranks_before(score, neighbour, bound) for neighbour, score in new):
        # Nothing new reaches the list (the usual case: a changed item is far from most items),
        # so it is what is left of the previous one, already in order and within the bound.
        if len(kept) < needed:
            return None
        return Merged([n for n, _ in kept], [np.float32(s) for _, s in kept], bound)
    entries = sorted({(-float(score), neighbour) for neighbour, score in (*kept, *new)})
    if bound is not None:
        cut = 0
        while cut < len(entries) and ranks_before(-entries[cut][0], entries[cut][1], bound):
            cut += 1
        entries = entries[:cut]
        if len(entries) < needed:
            return None
    if len(entries) > depth or (bound is None and len(entries) == depth):
        entries = entries[:depth]
        # Candidates dropped here rank after the last one kept; the old bound, further down, is
        # no longer the first place an unknown candidate may sit. A list that held every
        # candidate and is now full may not hold them all any more: ``new`` stops at ``depth``.
        bound = Bound(-entries[-1][0], entries[-1][1])
    return Merged([n for _, n in entries], [np.float32(-s) for s, _ in entries], bound)


def full_list(neighbours: Sequence, scores: Sequence[float], depth: int) -> Merged:
    """A list scored against every candidate, at most ``depth`` deep: bounded when it is full (a
    candidate may have been left out), complete when it is shorter."""
    neighbours, scores = list(neighbours), [np.float32(s) for s in scores]
    bound = Bound(float(scores[-1]), neighbours[-1]) if len(neighbours) >= depth else None
    return Merged(neighbours, scores, bound)


@dataclass(frozen=True)
class Refreshed:
    neighbours: np.ndarray  # (n, depth) positions of the neighbours, best first; EMPTY where none
    scores: np.ndarray  # (n, depth) float32 cosines; -inf where none
    rescored: np.ndarray  # (n,) bool: rows scored again against every item (changed, or cut short)
    # Each list's Bound (as the lists table stores it): score, -inf for none; position, EMPTY if unknown.
    bound_scores: np.ndarray
    bound_positions: np.ndarray


def refresh(
    neighbours: np.ndarray,
    scores: np.ndarray,
    changed: np.ndarray,
    vectors: np.ndarray,
    k: int,
    depth: int,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> Refreshed:
    """Lists of every item over ``vectors`` (n x d, L2-normalised, in position order), from the
    previous lists (``neighbours``/``scores``, n x D, best first, positions in this same order;
    EMPTY for none and for items deleted since) and ``changed`` (n bools: new or changed items,
    whose previous rows and entries are stale). A deleted neighbour's position is EMPTY but its
    score stays: without ``bounds`` (the previous Refreshed's, positions moved to this order;
    EMPTY where the bound's item is gone), a full list's last entry is its bound (a deleted one's
    ties then count as unknown). Returns lists at most ``depth`` deep (k + reserve), every entry
    exact; ties rank by position (the table's item id order), and each list's bound. What the
    Spark stage does, on one machine."""
    n = len(vectors)
    changed = np.asarray(changed, dtype=bool)
    out_n = np.full((n, depth), EMPTY, dtype=np.int64)
    out_s = np.full((n, depth), -np.inf, dtype=np.float32)
    moved = np.flatnonzero(changed)
    # Scores of the changed items against every item: their own rows, and every other row's new
    # candidates (the same matrix, read by columns). Products in float64, rounded to float32: the
    # job's canonical score (topk), so that near-ties order as a full run orders them.
    wide = np.asarray(vectors, dtype=np.float64)
    block = (wide[moved] @ wide.T).astype(np.float32) if len(moved) else np.zeros((0, n), np.float32)
    rescore = changed.copy()
    out_bound_s = np.full(n, -np.inf, dtype=np.float32)
    out_bound_p = np.full(n, EMPTY, dtype=np.int64)
    if bounds is None:
        # A full list has a bound: its last entry; one with room left held every candidate there was.
        last = scores[:, -1] if scores.shape[1] else np.full(n, -np.inf, np.float32)
        bounds = (last, np.where(np.isfinite(last), neighbours[:, -1] if scores.shape[1] else EMPTY, EMPTY))
    for row in np.flatnonzero(~changed):
        # An unknown position (EMPTY, -1) ranks after no tie, so ties with the bound are cut.
        score = bounds[0][row]
        bound = Bound(float(score), int(bounds[1][row])) if np.isfinite(score) else None
        valid = neighbours[row] != EMPTY
        kept = valid & ~changed[np.where(valid, neighbours[row], 0)]
        others = moved[moved != row]
        column = block[np.flatnonzero(moved != row), row].astype(np.float32)
        best = np.lexsort((others, -column))[:depth]
        merged = merge_list(
            list(zip(neighbours[row][kept].tolist(), scores[row][kept].tolist(), strict=True)),
            list(zip(others[best].tolist(), column[best].tolist(), strict=True)),
            bound,
            depth,
            min(k, n - 1),
        )
        if merged is None:
            rescore[row] = True  # lost more than its reserve: score it against everything
            continue
        out_n[row, : len(merged.neighbours)] = merged.neighbours
        out_s[row, : len(merged.scores)] = merged.scores
        if merged.bound is not None:
            out_bound_s[row], out_bound_p[row] = merged.bound.score, merged.bound.neighbour
    for row in np.flatnonzero(rescore):
        row_scores = (wide[row] @ wide.T).astype(np.float32)
        row_scores[row] = -np.inf
        order = np.lexsort((np.arange(n), -row_scores))[: min(depth, n - 1)]
        made = full_list(order.tolist(), row_scores[order].tolist(), depth)
        out_n[row, : len(order)] = order
        out_s[row, : len(order)] = row_scores[order]
        if made.bound is not None:
            out_bound_s[row], out_bound_p[row] = made.bound.score, made.bound.neighbour
    return Refreshed(out_n, out_s, rescore, out_bound_s, out_bound_p)
