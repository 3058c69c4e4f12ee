"""neighbours.incremental on a real local SparkSession: after every run of a seeded sequence of days
(new, changed and deleted items, deletions that exhaust reserves, exact ties, a rerun with nothing
changed, a run that dies before its commit), the published table equals the brute-force oracle on
that day's embeddings, and incremental days score a fraction of the pairs. With the rules (same,
a candidates table, min_score) an item that changes group or candidacy counts as changed.
The merge itself, without Spark: tests/unit/neighbours/test_incremental.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.jobs import neighbours as job
from lookalike.publish import outputs as outputs_module
from tests.support.brute_force import brute_force, random_vectors
from tests.support.neighbour_tables import assert_matches, config, make_ids, publish_embeddings, read_lists

DIM, K, RESERVE = 8, 5, 3


class Catalogue:
    """The embeddings of one day, changed day by day with a seeded generator."""

    def __init__(self, n: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.ids = make_ids(n, seed=seed)
        self.vectors = random_vectors(n, DIM, seed=seed, clusters=12)
        self.added = 0

    def churn(self, new: int, changed: int, deleted: int, exhaust: int = 0) -> None:
        """``exhaust``: delete the nearest ``RESERVE + 1`` neighbours of that many items, so that
        their lists lose more than their reserve."""
        unit = self.vectors / np.linalg.norm(self.vectors, axis=1, keepdims=True)
        gone = set(self.rng.choice(len(self.ids), deleted, replace=False).tolist())
        for row in self.rng.choice(len(self.ids), exhaust, replace=False):
            scores = unit @ unit[row]
            scores[row] = -np.inf
            gone |= set(np.argsort(-scores)[: RESERVE + 1].tolist())
        keep = [i for i in range(len(self.ids)) if i not in gone]
        self.ids = [self.ids[i] for i in keep]
        self.vectors = self.vectors[keep].copy()
        moved = self.rng.choice(len(self.ids), changed, replace=False)
        self.vectors[moved] += self.rng.normal(0, 0.3, size=(changed, DIM)).astype(np.float32)
        fresh = random_vectors(new, DIM, seed=int(self.rng.integers(1 << 30)), clusters=12)
        fresh[0] = self.vectors[3] * 2  # an exact tie with an existing item
        self.ids += [f"new-{self.added + i}" for i in range(new)]
        self.added += new
        self.vectors = np.vstack([self.vectors, fresh])


def _publish(spark, tmp, catalogue: Catalogue, day: int) -> str:
    return publish_embeddings(
        spark,
        str(tmp / "embeddings"),
        catalogue.ids,
        catalogue.vectors,
        content=f"day-{day}",
        run_id=f"202601{day + 1:02d}T000000Z-embed{day:03d}",
    )


def _run(spark, tmp, embeddings, **settings) -> dict:
    cfg = config(tmp, embeddings, k=K, incremental=True, reserve=RESERVE, partitions=3, block_rows=16, **settings)
    return job.run(spark, cfg)


def test_a_sequence_of_days_equals_a_full_recompute_every_day(spark, tmp_path, monkeypatch):
    catalogue = Catalogue(240, seed=11)
    full_pairs = None
    days = [
        {},  # the first run: no lists yet
        {"new": 4, "changed": 3, "deleted": 3, "exhaust": 2},
        None,  # nothing changed: the run skips
        {"new": 2, "changed": 2, "deleted": 2, "exhaust": 1},
        "killed",  # this day's run dies before its commit: nothing moves
        {"new": 3, "changed": 1, "deleted": 4},
    ]
    for day, change in enumerate(days):
        if isinstance(change, dict) and change:
            catalogue.churn(**change)
        if change == "killed":
            catalogue.churn(new=2, changed=2, deleted=1)
            embeddings = _publish(spark, tmp_path, catalogue, day)
            with monkeypatch.context() as patched:

                def dies(self, *args, **kwargs):
                    raise RuntimeError("killed before the commit")

                patched.setattr(outputs_module.OutputSet, "commit", dies)
                with pytest.raises(RuntimeError, match="killed"):
                    _run(spark, tmp_path, embeddings, broadcast_max_mb=0.002)
            continue  # the next day's run must catch up with this day's changes too
        embeddings = _publish(spark, tmp_path, catalogue, day) if change is not None else embeddings
        summary = _run(spark, tmp_path, embeddings, broadcast_max_mb=0.002)
        want = brute_force(catalogue.ids, catalogue.vectors, K)
        assert_matches(read_lists(str(tmp_path / "neighbours")), want)
        if change is None:
            assert summary.get("skipped") is True
            continue
        if day == 0:
            assert summary["mode"] == "full" and "no previous lists" in summary["mode_reason"]
            full_pairs = summary["scored_pairs"]
            continue
        assert summary["mode"] == "incremental", summary["mode_reason"]
        assert summary["scored_pairs"] < 0.35 * full_pairs
        assert summary["rows_rescored"] >= summary["new_items"] + summary["changed_items"]
        if day == 1:
            assert (summary["new_items"], summary["changed_items"]) == (4, 3)
            # The emptied lists were scored again, beyond the new and changed items.
            assert summary["rows_rescored"] > 7
    # The lists table sits beside the published one, in the same catalog.
    lists = pq.read_table(list((tmp_path / "neighbours_lists" / "data").rglob("*.parquet"))[0])
    assert set(lists.column_names) >= {"item_id", "fingerprint", "neighbour_ids", "bound_score"}


def test_rules_hold_and_a_change_of_group_or_candidacy_counts_as_a_change(spark, tmp_path):
    catalogue = Catalogue(180, seed=12)
    rng = np.random.default_rng(3)
    group = {item: f"g{rng.integers(4)}" for item in catalogue.ids}
    chosen = {item for item in catalogue.ids if rng.random() < 0.8}

    def tables():
        pq.write_table(
            pa.Table.from_pylist([{"item_id": i, "category": group.get(i)} for i in catalogue.ids]),
            tmp_path / "attributes.parquet",
        )
        (tmp_path / "candidates.csv").write_text("item_id\n" + "".join(f"{i}\n" for i in sorted(chosen)))

    def allow(item, other):
        return group.get(item) is not None and group.get(item) == group.get(other)

    settings = {
        "attributes": str(tmp_path / "attributes.parquet"),
        "same": "category",
        "candidates": str(tmp_path / "candidates.csv"),
        "min_score": 0.1,
        "broadcast_max_mb": 0.002,
    }
    for day in range(3):
        if day:
            catalogue.churn(new=3, changed=2, deleted=2, exhaust=1)
            for item in catalogue.ids:
                group.setdefault(item, f"g{rng.integers(4)}")
                if item.startswith("new-"):
                    chosen.add(item)
            moved, dropped = catalogue.ids[5], catalogue.ids[9]
            group[moved] = "g-other" if group[moved] != "g-other" else "g0"  # changes group only
            chosen.symmetric_difference_update({dropped})  # changes candidacy only
        tables()
        embeddings = _publish(spark, tmp_path, catalogue, day)
        summary = _run(spark, tmp_path, embeddings, **settings)
        want = brute_force(catalogue.ids, catalogue.vectors, K, sorted(chosen), 0.1, allow)
        assert_matches(read_lists(str(tmp_path / "neighbours")), want)
        assert summary["mode"] == ("full" if day == 0 else "incremental"), summary["mode_reason"]
        if day:
            # The two items changed in place besides the vectors moved: their fingerprints differ.
            assert summary["changed_items"] >= 3


def test_hide_duplicates_a_member_that_changes_group_is_scored_again(spark, tmp_path):
    from lookalike.config import from_dict

    catalogue = Catalogue(150, seed=13)
    ids = catalogue.ids
    # Pairs and one triple of near-duplicates, as the duplicates job writes them.
    groups = {ids[i]: f"p{i // 2}" for i in range(0, 40)} | {ids[40]: "p19", ids[41]: "t", ids[42]: "t"}

    def write_groups():
        sizes = {g: list(groups.values()).count(g) for g in set(groups.values())}
        rows = [
            {"group_id": g, "item_id": i, "group_size": sizes[g], "representative": "-", "max_score": 1.0}
            for i, g in sorted(groups.items())
        ]
        directory = tmp_path / "duplicates"
        directory.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), directory / "part-00000.parquet")

    def oracle():
        def allow(item, other):
            return groups.get(item) is None or groups.get(other) != groups[item]

        out, everyone = {}, len(catalogue.ids)
        for item, ranked in brute_force(catalogue.ids, catalogue.vectors, everyone, None, None, allow).items():
            best, seen = [], set()
            for other, score in ranked:
                group = groups.get(other)
                if group is None or group not in seen:
                    seen.add(group)
                    best.append((other, score))
            out[item] = best[:K]
        return out

    for day in range(2):
        if day:
            catalogue.churn(new=2, changed=2, deleted=0)
            groups[ids[1]] = "p-moved"  # leaves its pair for a new one with a new item
            groups[catalogue.ids[-1]] = "p-moved"
        write_groups()
        embeddings = _publish(spark, tmp_path, catalogue, day)
        cfg = from_dict(
            {
                "output": {
                    "embeddings": embeddings,
                    "neighbours": str(tmp_path / "neighbours"),
                    "duplicates": str(tmp_path / "duplicates"),
                    "catalog": {"uri": str(tmp_path / "catalog.db")},
                },
                "neighbours": {"k": K, "incremental": True, "reserve": RESERVE, "hide_duplicates": True},
            }
        )
        summary = job.run(spark, cfg)
        assert_matches(read_lists(str(tmp_path / "neighbours")), oracle())
        assert summary["mode"] == ("full" if day == 0 else "incremental"), summary["mode_reason"]
    # The moved member counts as changed (its group code is in its fingerprint), beside the vectors
    # moved (which may include it); without that its list would still hold its old partner's ban.
    assert summary["changed_items"] >= 2 and summary["new_items"] == 2
