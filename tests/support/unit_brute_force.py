"""tests.support.brute_force's oracle, for some queries only: the unit tier's pair tests need the
answer of queries [0, b) among candidates [b, n) and of queries [b, n) among [0, b); brute_force
answers every query against every row and the tests threw most of it away.

The same oracle, bit for bit: the same ``normalise``, the same float64 matrix product of all rows
(cast to float32), the same plain-Python ``sorted`` on (-score, id); only the Python loops skip
the queries nobody asked for and the rows that are not candidates (brute_force skips those with
``ids[j] in allowed``). ``test_restricted_oracle_equals_brute_force`` in
tests/unit/neighbours/test_topk.py holds the two equal.
"""

from __future__ import annotations

import numpy as np

from lookalike.neighbours.topk import normalise


def brute_force_queries(vectors, k, queries, candidates, min_score=None) -> dict:
    """{query index: [(candidate index, score), ...]} for the valid ``queries`` that have a
    neighbour among the valid ``candidates`` (indices into ``vectors``), best first."""
    unit, valid = normalise(vectors)
    wide = unit.astype(np.float64)
    scores = (wide @ wide.T).astype(np.float32)
    candidates = sorted(int(j) for j in candidates)
    floor = None if min_score is None else np.float32(min_score)
    result = {}
    for q in queries:
        q = int(q)
        if not valid[q]:
            continue
        row = scores[q]
        pool = [(-float(row[j]), j) for j in candidates if j != q and valid[j] and (floor is None or row[j] >= floor)]
        best = sorted(pool)[:k]
        if best:
            result[q] = [(neighbour, -negative) for negative, neighbour in best]
    return result
