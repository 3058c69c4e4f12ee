"""The merge step on Arrow tables (incremental_merge.merge_table) against the per-item rules it
applies (incremental.merge_list for kept lists, full_list for a changed item's partial lists),
on random tables with exact score ties, bounded and complete lists, stale neighbours, new entries
from several chunks, changed items' partial lists from several tasks, and deleted items."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lookalike.neighbours.changed_pass import arrow_schema
from lookalike.neighbours.incremental import Bound, full_list, merge_list
from lookalike.neighbours.incremental_merge import CURRENT, ENTRIES, KEPT, NEW, OWN, merge_table


def _random_case(seed: int, depth: int):
    rng = np.random.default_rng(seed)
    universe = [f"n{i:03d}" for i in range(120)]
    stale = set(rng.choice(universe, int(rng.integers(10, 80)), replace=False).tolist())
    items = sorted(rng.choice(universe, 60, replace=False).tolist())
    rows, expected = [], {}
    fingerprints = {item: int(rng.integers(-(2**62), 2**62)) for item in items}
    for item in items:
        others = [u for u in universe if u != item]
        held = rng.choice(others, int(rng.integers(0, depth + 1)), replace=False).tolist()
        # Scores on a coarse grid: many exact ties, decided by the smaller id.
        kept = sorted(((float(np.float32(rng.integers(0, 12) / 12)), n) for n in held), key=lambda e: (-e[0], e[1]))
        bound = Bound(kept[-1][0], kept[-1][1]) if len(kept) == depth else None
        changed = sorted(n for n in stale if n != item and n not in held)
        fresh = rng.choice(changed, int(rng.integers(0, min(len(changed), depth) + 1)), replace=False).tolist()
        new = sorted(((float(np.float32(rng.integers(0, 12) / 12)), n) for n in fresh), key=lambda e: (-e[0], e[1]))
        current = rng.random() > 0.1
        entries = [(KEPT, [n for _, n in kept], [s for s, _ in kept], bound)]
        half = int(rng.integers(0, len(new) + 1))
        for part in (new[:half], new[half:]):  # two chunks' new entries
            if part:
                entries.append((NEW, [n for _, n in part], [s for s, _ in part], None))
        own: list = []
        if item in stale:  # its partial lists from up to three tasks, each best first
            pool = rng.permutation(others)[: int(rng.integers(0, 3 * depth))].tolist()
            for task in np.array_split(np.array(pool, dtype=object), int(rng.integers(1, 4))):
                part = sorted(
                    ((float(np.float32(rng.integers(0, 12) / 12)), n) for n in task), key=lambda e: (-e[0], e[1])
                )
                part = part[:depth]
                own += part
                if part:
                    entries.append((OWN, [n for _, n in part], [s for s, _ in part], None))
        if current:
            entries.append((CURRENT, None, None, None))
        for at in rng.permutation(len(entries)):  # the kinds come in any order within an item
            kind, neighbours, scores, b = entries[at]
            rows.append(
                {
                    "item_id": item,
                    "kind": kind,
                    "fingerprint": fingerprints[item] if kind == CURRENT else None,
                    "neighbour_ids": neighbours,
                    "scores": scores,
                    "bound_score": None if b is None else b.score,
                    "bound_id": None if b is None else b.neighbour,
                }
            )
        if current:
            kept_left = [(n, s) for s, n in kept if n not in stale]
            if item in stale:
                best = sorted(own, key=lambda e: (-e[0], e[1]))[:depth]
                expected[item] = full_list([n for _, n in best], [s for s, _ in best], depth)
            else:
                expected[item] = merge_list(kept_left, [(n, s) for s, n in new], bound, depth, 3)
    table = pa.Table.from_pylist(rows, schema=arrow_schema(ENTRIES))
    return table, stale, expected, fingerprints


def test_the_table_merge_equals_the_per_item_rule():
    depth, seen = 6, set()
    for seed in range(8):
        table, stale, expected, fingerprints = _random_case(seed, depth)
        out = merge_table(table, pa.array(sorted(stale), pa.string()), depth, needed=3).to_pylist()
        assert [row["item_id"] for row in out] == sorted(expected)
        _check(out, expected, fingerprints)
        seen |= {"rescored" for row in out if row["rescore"]} | {"kept" for row in out if not row["rescore"]}
        seen |= {"changed" for row in out if row["item_id"] in stale and len(row["neighbour_ids"]) == depth}
    assert seen == {"rescored", "kept", "changed"}  # every case came up


def _check(out, expected, fingerprints):
    for row in out:
        merged = expected[row["item_id"]]
        assert row["fingerprint"] == fingerprints[row["item_id"]]
        assert row["rescore"] == (merged is None), row["item_id"]
        if merged is None:
            continue
        assert row["neighbour_ids"] == merged.neighbours, row["item_id"]
        assert row["scores"] == [float(s) for s in merged.scores], row["item_id"]
        bound = None if row["bound_id"] is None else (row["bound_score"], row["bound_id"])
        assert bound == (None if merged.bound is None else (float(merged.bound.score), merged.bound.neighbour))
