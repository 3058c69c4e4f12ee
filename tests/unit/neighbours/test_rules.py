"""The neighbours rules without Spark: the rule mask inside the top-k kernel (exclude_same, same
with nulls), how groups are packed into broadcast chunks, and the configurations that cannot work.
The job with these rules: tests/spark/neighbours/test_rules_job.py."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.config import from_dict, validate
from lookalike.errors import ConfigError
from lookalike.neighbours import chunks, rules, topk
from lookalike.neighbours.topk import normalise


def test_rules_mask_inside_the_top_k_keeps_k_allowed_neighbours():
    rng = np.random.default_rng(1)
    unit, _ = normalise(rng.standard_normal((300, 16)))
    family = rng.integers(0, 30, 300)
    family[::7] = rules.NULL
    mask = rules.Rules(family[:40, None], family[:, None], same=False)
    scores, found = topk.topk_block(unit[:40], unit, 5, self_index=np.arange(40), rules=mask, sub_block=128)
    wide = unit.astype(np.float64)
    for q in range(40):
        pool = sorted(
            (-np.float32(wide[q] @ wide[j]), j)
            for j in range(300)
            if j != q and (family[q] == rules.NULL or family[j] != family[q])
        )
        assert found[q].tolist() == [j for _, j in pool[:5]]


def test_rules_same_group_with_nulls_in_the_kernel():
    rng = np.random.default_rng(2)
    unit, _ = normalise(rng.standard_normal((200, 8)))
    group = rng.integers(0, 4, 200)
    group[:10] = rules.NULL
    mask = rules.Rules(group[:, None], group[:, None], same=True)
    _, found = topk.topk_block(unit, unit, 60, self_index=np.arange(200), rules=mask, sub_block=64)
    for q in range(200):
        got = found[q][found[q] != topk.EMPTY_ID]
        if group[q] == rules.NULL:
            assert len(got) == 0
        else:
            assert (group[got] == group[q]).all() and len(got) == min(60, (group == group[q]).sum() - 1)


def test_group_packs_hold_whole_groups_up_to_a_chunk_and_a_large_group_alone():
    codes = np.array([0, 1, 2, 3, 4, 5, 7, 9])  # 6 and 8: groups without candidates
    counts = np.array([10, 60, 5, 5, 50, 1, 2, 54])
    packs = chunks.group_packs(codes, counts, chunk_rows=54)
    assert [(p.low, p.high, p.rows) for p in packs] == [(0, 1, 10), (1, 2, 60), (2, 4, 10), (4, 9, 53), (9, 10, 54)]
    # Every code in exactly one pack, the rows add up, and no pack but a lone large group exceeds a chunk.
    covered = [c for p in packs for c in range(p.low, p.high)]
    assert covered == list(range(10)) and sum(p.rows for p in packs) == counts.sum()
    assert all(p.rows <= 54 or p.high - p.low == 1 for p in packs)
    assert chunks.group_packs(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 54) == []


def test_rules_need_an_attributes_table():
    with pytest.raises(ConfigError, match="neighbours.attributes is not set"):
        validate(from_dict({"neighbours": {"same": "category"}}))
    with pytest.raises(ConfigError, match="no neighbour at all"):
        validate(from_dict({"neighbours": {"attributes": "a.csv", "same": "c", "exclude_same": "c"}}))


def test_probed_lists_mask_inside_the_kernel_gives_the_ivf_top_k_with_other_rules():
    """IVF as a rule (neighbours.incremental with method ivf): a candidate only where its list is
    among the query's nprobe probed lists, combined with exclude_same, equals brute force."""
    from lookalike.neighbours import ivf

    rng = np.random.default_rng(4)
    unit, _ = normalise(rng.standard_normal((400, 16)))
    centroids = ivf.train(unit, 12, seed=1)
    probes = ivf.nearest(unit, centroids, 3)
    lists = probes[:, 0]
    family = rng.integers(0, 20, 400)
    mask = rules.with_probes(rules.Rules(family[:50, None], family[:, None], same=False), probes[:50], lists)
    _, found = topk.topk_block(unit[:50], unit, 6, self_index=np.arange(50), rules=mask, sub_block=96)
    alone = rules.with_probes(None, probes[:50], lists)
    _, found_alone = topk.topk_block(unit[:50], unit, 6, self_index=np.arange(50), rules=alone, sub_block=96)
    wide = unit.astype(np.float64)
    for q in range(50):
        probed = set(probes[q].tolist())
        pool = sorted((-np.float32(wide[q] @ wide[j]), j) for j in range(400) if j != q and lists[j] in probed)
        assert found_alone[q].tolist() == [j for _, j in pool[:6]]
        assert found[q].tolist() == [j for _, j in pool if family[j] != family[q]][:6]
    # The rows and columns of a mask slice both sides consistently.
    assert rules.with_probes(None, probes[:50], lists).rows(np.arange(5)).probes.shape == (5, 3)
