"""The brute-force oracle for neighbour tests: every pair scored, plain Python ordering.

It shares only ``normalise`` with the code under test (that defines the vectors being compared);
scores come from one float64 matrix product and the order from ``sorted`` on (-score, id).
"""

from __future__ import annotations

import numpy as np

from lookalike.neighbours.topk import normalise


def brute_force(ids, vectors, k, candidates=None, min_score=None, allow=None) -> dict:
    """{item_id: [(neighbour_id, score), ...]} for every valid item, best first; items with no
    neighbour are left out (as in the job's table). ``allow(item, other)``: whether ``other`` may
    be recommended to ``item`` (neighbours.same and friends)."""
    ids = list(ids)
    unit, valid = normalise(vectors)
    wide = unit.astype(np.float64)
    scores = (wide @ wide.T).astype(np.float32)
    allowed = set(ids if candidates is None else candidates)
    result = {}
    for q, item in enumerate(ids):
        if not valid[q]:
            continue
        pool = [
            (-float(scores[q, j]), ids[j])
            for j in range(len(ids))
            if j != q
            and valid[j]
            and ids[j] in allowed
            and (min_score is None or scores[q, j] >= np.float32(min_score))
            and (allow is None or allow(item, ids[j]))
        ]
        best = sorted(pool)[:k]
        if best:
            result[item] = [(neighbour, -negative) for negative, neighbour in best]
    return result


def random_vectors(n, dim, seed=0, duplicates=0, clusters=0):
    """Gaussian vectors; ``duplicates`` rows copied (scaled) from others to create exact ties,
    ``clusters`` > 0 draws around a few centres so that scores are close together."""
    rng = np.random.default_rng(seed)
    if clusters:
        centres = rng.standard_normal((clusters, dim))
        x = centres[rng.integers(0, clusters, n)] + 0.05 * rng.standard_normal((n, dim))
    else:
        x = rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    for i in range(duplicates):
        src, dst = rng.choice(n, 2, replace=False)
        # Powers of two keep the normalised vectors bit-identical: exact ties, different lengths.
        x[dst] = x[src] * np.float32(2 ** (i % 3))
    return x
