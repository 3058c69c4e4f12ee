"""The brute-force oracle of the duplicates job: every pair scored in float64, the groups from a
union-find over the pairs. It shares only ``normalise`` with the code under test."""

from __future__ import annotations

import hashlib

import numpy as np

from lookalike.neighbours.topk import normalise


def brute_pairs(x: np.ndarray, threshold: float) -> dict:
    """{(i, j): score} for every pair i < j of valid rows with float32 cosine >= float32(threshold)."""
    unit, valid = normalise(x)
    wide = unit.astype(np.float64)
    scores = (wide @ wide.T).astype(np.float32)
    i, j = np.triu_indices(len(x), 1)
    keep = (scores[i, j] >= np.float32(threshold)) & valid[i] & valid[j]
    return {(int(a), int(b)): scores[a, b] for a, b in zip(i[keep], j[keep], strict=True)}


def brute_groups(ids: list[str], x: np.ndarray, threshold: float) -> set:
    """The expected table as a set of (group_id, item_id, group_size, representative, max_score)."""
    pairs = brute_pairs(x, threshold)
    parent = list(range(len(ids)))

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    best: dict = {}
    for (a, b), score in pairs.items():
        parent[root(a)] = root(b)
        for v in (a, b):
            best[v] = max(best.get(v, -np.inf), score)
    members: dict = {}
    for v in best:
        members.setdefault(root(v), []).append(ids[v])
    rows = set()
    for group in members.values():
        representative = min(group)  # code point order = UTF-8 byte order = Spark's string order
        gid = hashlib.sha1(representative.encode()).hexdigest()[:16]
        rows |= {(gid, ids[v], len(group), representative, float(best[v])) for v in best if ids[v] in group}
    return rows
