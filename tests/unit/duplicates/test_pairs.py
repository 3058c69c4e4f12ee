"""The duplicates job's numpy core (lib/lookalike/duplicates/pairs.py) against brute force: every
pair above a threshold, exactly once, on whole tables, on ranges and through the blocks the Spark
tasks score. The job: tests/spark/duplicates/test_duplicates_job.py."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.duplicates.pairs import block_calls, pairs_above
from lookalike.neighbours.topk import normalise
from tests.support.neighbours_duplicates import brute_pairs


def as_dict(rows, cols, scores) -> dict:
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == len(rows), "a pair reported twice"
    assert (rows < cols).all()
    return {(int(a), int(b)): s for a, b, s in zip(rows, cols, scores, strict=True)}


@pytest.fixture(scope="module")
def clustered():
    """Vectors around a few centres (many scores near any threshold), with exact copies."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((6, 16))
    x = centres[rng.integers(0, 6, 240)] + 0.35 * rng.standard_normal((240, 16))
    x[[5, 77, 150]] = x[40] * np.float32(2)  # identical after normalising
    return x.astype(np.float32)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_pairs_above_equals_brute_force(clustered, threshold):
    unit, _ = normalise(clustered)
    want = brute_pairs(clustered, threshold)
    assert 20 < len(want) < len(clustered) ** 2 / 4
    assert as_dict(*pairs_above(unit, unit, threshold)) == want
    # Several sub-blocks of columns, one of them ragged.
    assert as_dict(*pairs_above(unit, unit, threshold, sub_block=37)) == want


def test_pairs_above_threshold_equal_to_a_score_keeps_that_pair(clustered):
    unit, _ = normalise(clustered)
    want = brute_pairs(clustered, 0.6)
    levels = sorted(set(want.values()))
    for score in levels[:: len(levels) // 8]:
        at = as_dict(*pairs_above(unit, unit, float(score)))
        assert at == {p: s for p, s in want.items() if s >= score}
        above = as_dict(*pairs_above(unit, unit, float(np.nextafter(score, np.float32(2)))))
        assert above == {p: s for p, s in want.items() if s > score}
    # Copies of one vector score the same, exactly: a threshold at that score keeps them all.
    copies = as_dict(*pairs_above(unit, unit, float(want[(5, 40)])))
    assert {(5, 40), (5, 77), (5, 150), (40, 77), (40, 150), (77, 150)} <= set(copies)


@pytest.mark.parametrize(
    "queries,candidates",
    [((0, 100), (100, 240)), ((100, 240), (0, 100)), ((30, 130), (60, 200)), ((60, 200), (30, 130))],
)
def test_pairs_above_on_ranges_reports_each_pair_of_the_ranges_once(clustered, queries, candidates):
    unit, _ = normalise(clustered)
    (qa, qb), (ca, cb) = queries, candidates
    got = as_dict(*pairs_above(unit[qa:qb], unit[ca:cb], 0.7, query_offset=qa, candidate_offset=ca))
    inside = lambda v, r: r[0] <= v < r[1]  # noqa: E731
    want = {
        (a, b): s
        for (a, b), s in brute_pairs(clustered, 0.7).items()
        if (inside(a, queries) and inside(b, candidates)) or (inside(b, queries) and inside(a, candidates))
    }
    assert got == want and want


@pytest.mark.parametrize("chunk", [240, 37, 16])
def test_the_spark_tasks_calls_score_every_pair_once(clustered, chunk):
    """What the tasks do, without Spark: every block of every partition against every broadcast
    chunk (chunk edges inside blocks and partitions included), through ``block_calls``."""
    unit, _ = normalise(clustered)
    bounds = [0, 50, 90, 170, 171, 240]
    found: dict = {}
    for lo in range(0, 240, chunk):
        hi = min(lo + chunk, 240)
        for p in range(len(bounds) - 1):
            for start in range(bounds[p], bounds[p + 1], 16):
                stop = min(start + 16, bounds[p + 1])
                for rows, a, b in block_calls(bounds, p, start, stop - start, lo, hi):
                    got = as_dict(
                        *pairs_above(unit[start : start + rows], unit[a:b], 0.7, query_offset=start, candidate_offset=a)
                    )
                    assert not set(got) & set(found)
                    found.update(got)
    assert found == brute_pairs(clustered, 0.7)
