"""neighbours/incremental.refresh against brute force: the previous lists of an old catalogue,
brought up to date after items were changed, added and deleted, equal the lists computed from
scratch on the new catalogue, and only rows that lost more than their reserve are scored again."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.neighbours.incremental import EMPTY, Bound, Merged, full_list, merge_list, refresh


def normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Every item's best ``depth`` others, ties by position: the oracle."""
    n = len(vectors)
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    out_n = np.full((n, depth), EMPTY, np.int64)
    out_s = np.full((n, depth), -np.inf, np.float32)
    for row in range(n):
        order = np.lexsort((np.arange(n), -scores[row]))[: min(depth, n - 1)]
        out_n[row, : len(order)], out_s[row, : len(order)] = order, scores[row][order]
    return out_n, out_s


@pytest.mark.parametrize("seed, changed_share, deleted, added", [(0, 0.05, 2, 3), (1, 0.2, 5, 0), (2, 0.0, 0, 4)])
def test_refreshed_lists_equal_brute_force_on_the_new_catalogue(seed, changed_share, deleted, added):
    rng = np.random.default_rng(seed)
    k, reserve, n_old, dim = 5, 3, 80, 6
    old = normalised(rng.normal(size=(n_old, dim)))
    previous_n, previous_s = brute_force(old, k + reserve)

    # The new catalogue: some items deleted, some changed, some added (at the end of the order).
    keep = np.ones(n_old, bool)
    keep[rng.choice(n_old, deleted, replace=False)] = False
    position = np.cumsum(keep) - 1  # old position -> new position, for the kept items
    new = old[keep].copy()
    changed = np.zeros(len(new), bool)
    changed[rng.random(len(new)) < changed_share] = True
    new[changed] = normalised(rng.normal(size=(int(changed.sum()), dim)))
    new = np.vstack([new, normalised(rng.normal(size=(added, dim)))])
    changed = np.concatenate([changed, np.ones(added, bool)])

    # The previous lists in the new positions: deleted neighbours EMPTY (their scores stay).
    n = len(new)
    lists_n = np.full((n, k + reserve), EMPTY, np.int64)
    lists_s = np.full((n, k + reserve), -np.inf, np.float32)
    mapped = np.where(keep[previous_n], position[previous_n], EMPTY)
    lists_n[: int(keep.sum())], lists_s[: int(keep.sum())] = mapped[keep], previous_s[keep]

    got = refresh(lists_n, lists_s, changed, new, k, k + reserve)
    want_n, want_s = brute_force(new, k + reserve)
    for row in range(n):
        exact = got.neighbours[row] != EMPTY
        assert exact.sum() >= k, row
        # Every entry it kept is the brute-force entry at that rank.
        np.testing.assert_array_equal(got.neighbours[row][exact], want_n[row][: exact.sum()])
        np.testing.assert_allclose(got.scores[row][exact], want_s[row][: exact.sum()], atol=1e-6)
    # Changed and new rows were scored again; of the others only those that lost too much.
    assert got.rescored[changed].all()
    assert got.rescored[~changed].mean() < 0.25  # the point: most lists are updated, not recomputed


def test_nothing_changed_scores_nothing_and_keeps_every_list():
    rng = np.random.default_rng(3)
    vectors = normalised(rng.normal(size=(30, 4)))
    lists_n, lists_s = brute_force(vectors, 7)
    got = refresh(lists_n, lists_s, np.zeros(30, bool), vectors, 5, 7)
    assert not got.rescored.any()
    np.testing.assert_array_equal(got.neighbours, lists_n)


def test_a_list_that_lost_more_than_its_reserve_is_scored_again():
    rng = np.random.default_rng(4)
    vectors = normalised(rng.normal(size=(40, 4)))
    lists_n, lists_s = brute_force(vectors, 6)  # k 5 + reserve 1
    # Item 0's three best neighbours change into vectors far from it: its list keeps 3 of 6.
    changed = np.zeros(40, bool)
    changed[lists_n[0][:3]] = True
    moved = vectors.copy()
    moved[changed] = -vectors[0]
    got = refresh(lists_n, lists_s, changed, moved, 5, 6)
    assert got.rescored[0]
    want_n, _ = brute_force(moved, 6)
    np.testing.assert_array_equal(got.neighbours[0][:5], want_n[0][:5])


def test_merge_keeps_a_tie_with_the_bound_only_where_its_id_comes_first():
    # The previous list (depth 2) held a and m; anything it did not hold ranks after (0.5, "m").
    bound = Bound(0.5, "m")
    kept = [("a", 0.9), ("m", 0.5)]
    # A changed item tied with the bound but with a smaller id ranks before m: certain.
    before = merge_list(kept, [("c", 0.5)], bound, depth=2, needed=2)
    assert before is not None and before.neighbours == ["a", "c"] and before.bound == Bound(0.5, "c")
    # One with a larger id might rank after an unchanged item the list never held: cut.
    after = merge_list(kept, [("z", 0.5)], bound, depth=2, needed=2)
    assert after is not None and after.neighbours == ["a", "m"]
    # With m deleted, a and c are all that is certain: fewer than needed, so score it again.
    assert merge_list([("a", 0.9)], [("z", 0.5)], bound, depth=2, needed=2) is None
    assert merge_list([("a", 0.9)], [("c", 0.5)], bound, depth=2, needed=2).neighbours == ["a", "c"]


def test_a_list_that_held_every_candidate_takes_new_entries_at_any_score():
    complete = merge_list([("a", 0.2)], [("b", -0.7), ("c", 0.4)], None, depth=5, needed=3)
    assert complete is not None and complete.neighbours == ["c", "a", "b"] and complete.bound is None
    # Cut to depth, it gets a bound: what it dropped ranks after its last entry.
    cut = merge_list([("a", 0.2)], [("b", -0.7), ("c", 0.4)], None, depth=2, needed=2)
    assert cut is not None and cut.neighbours == ["c", "a"] and cut.bound == Bound(np.float32(0.2), "a")
    assert full_list(["x", "y"], [0.5, 0.1], depth=2).bound == Bound(np.float32(0.1), "y")
    assert full_list(["x"], [0.5], depth=2).bound is None


def test_day_after_day_with_bounds_carried_the_lists_stay_those_of_brute_force():
    # Lists cut short on one day keep their bound for the next (a shorter list is not one that
    # held every candidate): several days of churn, reserves small enough to run out.
    rng = np.random.default_rng(9)
    k, depth, dim = 4, 6, 5
    vectors = rng.normal(size=(120, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    lists_n, lists_s = brute_force(vectors, depth)
    bounds = (lists_s[:, -1].copy(), lists_n[:, -1].copy())
    rescored_unchanged = 0
    for _ in range(6):
        n = len(vectors)
        keep = np.ones(n, bool)
        keep[rng.choice(n, 6, replace=False)] = False
        position = np.cumsum(keep) - 1
        new = vectors[keep].copy()
        changed = np.zeros(len(new), bool)
        changed[rng.choice(len(new), 3, replace=False)] = True
        new[changed] = rng.normal(size=(3, dim))
        new = np.vstack([new, rng.normal(size=(5, dim))])
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        changed = np.concatenate([changed, np.ones(5, bool)])
        at = np.where(lists_n != EMPTY, lists_n, 0)
        moved = np.where((lists_n != EMPTY) & keep[at], position[at], EMPTY)
        previous_n = np.vstack([moved[keep], np.full((5, depth), EMPTY, np.int64)])
        previous_s = np.vstack([lists_s[keep], np.full((5, depth), -np.inf, np.float32)])
        at = np.where(bounds[1] != EMPTY, bounds[1], 0)
        bound_p = np.where((bounds[1] != EMPTY) & keep[at], position[at], EMPTY)
        carried = (
            np.concatenate([bounds[0][keep], np.full(5, -np.inf, np.float32)]),
            np.concatenate([bound_p[keep], np.full(5, EMPTY, np.int64)]),
        )
        got = refresh(previous_n, previous_s, changed, new, k, depth, carried)
        want_n, _ = brute_force(new, depth)
        np.testing.assert_array_equal(got.neighbours[:, :k], want_n[:, :k])
        rescored_unchanged += int((got.rescored & ~changed).sum())
        vectors, lists_n, lists_s = new, got.neighbours, got.scores
        bounds = (got.bound_scores, got.bound_positions)
    assert rescored_unchanged > 0  # the reserves did run out on some days


def test_a_list_that_held_every_candidate_and_fills_up_gets_a_bound():
    # No candidate before (alone in its `same` group, say); the changed items offer their best
    # `depth` of more: the list is full, and an item the new entries left out ranks after its
    # last entry, so that entry is its bound (without one, a later deletion would leave a gap).
    new = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    merged = merge_list([], new, None, depth=3, needed=1)
    assert merged == Merged(["a", "b", "c"], [np.float32(0.9), np.float32(0.8), np.float32(0.7)], Bound(0.7, "c"))
    # One fewer than the depth: every candidate there was, no bound.
    assert merge_list([], new[:2], None, depth=3, needed=1).bound is None
