"""duplicates.incremental on a real local SparkSession: after every run of a seeded sequence of days
(new, changed, deleted and invalidated items, a member deleted that bridged a group, an item added
that joins two groups, two new near-duplicates scored in different chunks), the published table
equals the brute-force oracle on that day's embeddings, group ids included, and incremental days
score a fraction of the pairs. The full job against the oracle: test_duplicates_job.py."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.config import from_dict
from lookalike.duplicates import incremental
from lookalike.duplicates.write import group_id
from lookalike.io.current import Current
from lookalike.jobs import duplicates as job
from tests.support.neighbour_tables import make_ids, publish_embeddings
from tests.support.neighbours_duplicates import brute_groups, brute_pairs
from tests.support.outputs import output_summary, read_output

DIM = 48
THRESHOLD = 0.9
N = 300
STEP = np.arccos(0.95)  # neighbours on an arc at 0.95; two steps apart at 0.805, below THRESHOLD


class Catalogue:
    """One day's embeddings (id -> float32 vector), with planted groups, changed with a seeded
    generator. Random vectors are far from each other: cosines about N(0, 1/48)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.items = {i: self.rng.standard_normal(DIM).astype(np.float32) for i in make_ids(N, seed=seed)}
        self.free = list(self.rng.permutation(list(self.items)))  # ids not planted in a group
        self.planted: dict[str, list[list[str]]] = {}

    def near(self, base, noise: float = 1e-3):
        return (base * self.rng.uniform(0.5, 3) + noise * self.rng.standard_normal(DIM)).astype(np.float32)

    def plant(self, kind: str, vectors) -> list[str]:
        ids = [self.free.pop() for _ in vectors]
        self.items.update(zip(ids, vectors, strict=True))
        self.planted.setdefault(kind, []).append(ids)
        return ids

    def arc(self, angles) -> list[np.ndarray]:
        e1, e2 = np.linalg.qr(self.rng.standard_normal((DIM, 2)))[0].T
        self.plane = (e1, e2)
        return [(np.cos(a) * e1 + np.sin(a) * e2).astype(np.float32) for a in angles]

    def random(self) -> np.ndarray:
        return self.rng.standard_normal(DIM).astype(np.float32)

    def arrays(self) -> tuple[list[str], np.ndarray]:
        return list(self.items), np.stack(list(self.items.values()))


def _day0() -> Catalogue:
    days = Catalogue(seed=21)
    base = days.random()
    days.plant("stable", [days.near(base) for _ in range(3)])  # never touched: keeps its group_id
    days.plant("bridge", days.arc([k * STEP for k in range(5)]))  # a chain: its middle holds it together
    first, second = days.arc([0.0, 2 * STEP])  # two groups one item apart
    days.plant("join", [days.near(first) for _ in range(2)])
    days.plant("join", [days.near(second) for _ in range(2)])
    for _ in range(4):
        base = days.random()
        days.plant("pair", [days.near(base) for _ in range(2)])
    base = days.random()
    days.plant("spread", [days.near(base) for _ in range(6)])
    return days


def _day1(days: Catalogue) -> dict:
    """Returns the counts the plan must find."""
    items, free = days.items, days.free
    del items[days.planted["bridge"][0][2]]
    for _ in range(2):
        del items[free.pop()]
    items[free.pop()] = np.zeros(DIM, np.float32)  # invalid now: deleted from the valid items
    for _ in range(3):
        items[free.pop()] = days.random()
    items[free.pop()] = days.near(items[days.planted["pair"][1][0]])  # the pair becomes a triple
    items[free.pop()] *= 2  # the same direction: no change
    for k in range(3):
        items[f"new-{k}"] = days.random()
    # Near-duplicates of each other, both new, at either end of the id order: scored in two chunks.
    base = days.random()
    items["B-new"] = days.near(base)
    items["日本-new"] = days.near(base)
    return {"new_items": 5, "changed_items": 4, "deleted_items": 4}


def _day2(days: Catalogue) -> dict:
    items, free = days.items, days.free
    e1, e2 = days.plane
    items["a-join"] = days.near(np.cos(STEP) * e1 + np.sin(STEP) * e2)  # 0.95 with both groups
    items["new-3"] = days.random()
    items["ß-new"] = days.near(items[free[-1]])  # a pair of a new and an unchanged item
    items[days.planted["spread"][0][0]] = days.random()  # leaves its group
    for k in (-2, -3):
        items[free[k]] = days.random()
    del items[days.planted["pair"][0][1]]  # the pair dissolves
    del items[free[-4]]
    return {"new_items": 3, "changed_items": 3, "deleted_items": 2}


def _config(tmp, embeddings: str, **duplicates):
    return from_dict(
        {
            "output": {
                "embeddings": embeddings,
                "duplicates": str(tmp / "duplicates"),
                "catalog": {"uri": str(tmp / "catalog.db")},
            },
            "duplicates": {
                "min_score": THRESHOLD,
                "incremental": True,
                "partitions": 3,
                "block_rows": 16,
                **duplicates,
            },
        }
    )


def _groups(tmp) -> dict:
    """{item_id: (group_id, item_id, group_size, representative, max_score)} as published."""
    return {row["item_id"]: tuple(row.values()) for row in read_output(tmp / "duplicates").to_pylist()}


def test_a_sequence_of_days_equals_a_full_recompute_every_day(spark, tmp_path):
    days = _day0()
    stable = days.planted["stable"][0]
    changes = [_day1, _day2]
    for day in range(3):
        expected = changes[day - 1](days) if day else {}
        ids, x = days.arrays()
        content, run = f"day-{day}", f"202601{day + 1:02d}T000000Z-embed{day:03d}"
        embeddings = publish_embeddings(spark, str(tmp_path / "embeddings"), ids, x, content=content, run_id=run)
        # 0.002 MB / (4 * 48 + 64) bytes per item: chunks of 8 changed items (the full run: one chunk).
        summary = job.run(spark, _config(tmp_path, embeddings, broadcast_max_mb=0.002 if day else 8))
        got = _groups(tmp_path)
        assert set(got.values()) == brute_groups(ids, x, THRESHOLD)
        # Every pair once: two changed items pair from both sides, the smaller id's side keeps it.
        assert summary["pairs"] == len(brute_pairs(x, THRESHOLD))
        assert {got[i][0] for i in stable} == {group_id(min(stable))}
        if day == 0:
            assert summary["mode"] == "full" and "no previous pairs" in summary["mode_reason"]
            assert summary["scored_pairs"] == N * (N - 1) // 2
            continue
        assert summary["mode"] == "incremental", summary["mode_reason"]
        assert {key: summary[key] for key in expected} == expected
        assert summary["scored_pairs"] < 0.1 * summary["valid"] * (summary["valid"] - 1) // 2
        if day == 1:
            assert summary["chunks"] == 2  # 9 new and changed items, 8 to a chunk
            a, b, middle, c, d = days.planted["bridge"][0]
            assert middle not in got and got[a][0] == got[b][0] != got[c][0] == got[d][0]
            assert got["B-new"][0] == got["日本-new"][0] == group_id("B-new")
        else:
            joined = [*days.planted["join"][0], *days.planted["join"][1], "a-join"]
            assert len({got[i][0] for i in joined}) == 1 and got["a-join"][2] == 5

    # The state: every valid item once, each pair under its smaller id.
    state = read_output(tmp_path / "duplicates_pairs").to_pylist()
    assert sorted(r["item_id"] for r in state) == sorted(i for i, v in days.items.items() if v.any())
    listed = [(r["item_id"], p, s) for r in state for p, s in zip(r["partner_ids"], r["scores"], strict=True)]
    assert all(item < partner for item, partner, _ in listed) and len(listed) == summary["pairs"]
    assert output_summary(tmp_path / "duplicates_pairs")["min_score"] == THRESHOLD
    again = job.run(spark, _config(tmp_path, embeddings))
    assert again.get("skipped") is True


@pytest.mark.parametrize(
    ("summary", "reason"),
    [(None, "no previous pairs"), ({"min_score": 0.8}, "found with min_score 0.8, this run's is 0.9")],
)
def test_no_state_or_another_min_score_is_a_full_run(summary, reason):
    previous = None if summary is None else Current("x", ("x/part-00000.parquet",), "iceberg", summary=summary)
    decided, stale = incremental.plan(previous, object() if previous else None, None, THRESHOLD)
    assert decided.mode == "full" and reason in (decided.full_reason or "") and stale == set()
