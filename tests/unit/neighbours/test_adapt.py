"""neighbours.center and neighbours.augment in numpy (lookalike.neighbours.adapt) against an oracle
written out with explicit loops: the mean, the centred and the augmented vectors, and the top-k
lists a brute force finds on them. The job's tables: tests/spark/neighbours/test_adapt_job.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lookalike.neighbours import adapt
from lookalike.neighbours.topk import normalise
from tests.support.brute_force import random_vectors


def _unit(row) -> list[float]:
    norm = math.sqrt(sum(float(v) * float(v) for v in row))
    return [float(v) / norm for v in row]


def _oracle_topk(vectors, k):
    """[(index, score), ...] per row: every other row scored by a plain loop, best first, ties by
    index."""
    out = []
    for q in range(len(vectors)):
        pool = []
        for j in range(len(vectors)):
            if j != q:
                score = sum(float(a) * float(b) for a, b in zip(vectors[q], vectors[j], strict=True))
                pool.append((-score, j))
        out.append([(j, -s) for s, j in sorted(pool)[:k]])
    return out


@pytest.fixture(scope="module")
def catalogue():
    x = random_vectors(60, 8, seed=3, clusters=4)
    # A common offset that centring takes away: the clusters then spread over the sphere.
    x += np.float32(3.0)
    unit, valid = normalise(x)
    return x, unit, valid


def test_mean_from_partial_sums_equals_the_plain_mean(catalogue):
    _, unit, valid = catalogue
    parts = [adapt.partial_sum(unit[a:b], valid[a:b]) for a, b in ((0, 7), (7, 7), (7, 41), (41, 60))]
    mean = adapt.mean_of([p[0] for p in parts], [p[1] for p in parts])
    want = [sum(float(unit[i, d]) for i in range(len(unit))) / len(unit) for d in range(unit.shape[1])]
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, want, rtol=1e-6)
    with pytest.raises(ValueError):
        adapt.mean_of([np.zeros(8)], [0])


def test_invalid_rows_count_neither_in_the_mean_nor_get_centred(catalogue):
    _, unit, valid = catalogue
    flags = valid.copy()
    flags[5] = False
    total, n = adapt.partial_sum(unit, flags)
    assert n == len(unit) - 1
    np.testing.assert_allclose(total, unit.astype(np.float64).sum(axis=0) - unit[5], rtol=1e-12)
    centred = adapt.center(unit, flags, total / n)
    assert np.array_equal(centred[5], unit[5])


def test_centring_against_a_loop(catalogue):
    _, unit, valid = catalogue
    mean = adapt.mean_of(*[[v] for v in adapt.partial_sum(unit, valid)])
    got = adapt.center(unit, valid, mean)
    for i in range(len(unit)):
        want = _unit([float(unit[i, d]) - float(mean[d]) for d in range(unit.shape[1])])
        np.testing.assert_allclose(got[i], want, atol=1e-7)
    assert abs(float(np.linalg.norm(got.astype(np.float64).mean(axis=0)))) < 0.3 * float(np.linalg.norm(mean))
    # And the neighbours on the centred vectors are the oracle's on them.
    want_lists = _oracle_topk(got, 5)
    scores = (got.astype(np.float64) @ got.astype(np.float64).T).astype(np.float32)
    for q, expected in enumerate(want_lists):
        np.testing.assert_allclose([scores[q, j] for j, _ in expected], [s for _, s in expected], atol=1e-6)


def test_a_row_equal_to_the_mean_keeps_its_own_direction():
    unit, valid = normalise(np.ones((3, 4), dtype=np.float32))
    mean = adapt.mean_of([unit.astype(np.float64).sum(axis=0)], [3])
    assert np.array_equal(adapt.center(unit, valid, mean), unit)


def test_augmentation_against_a_loop(catalogue):
    _, unit, _ = catalogue
    m = 3
    lists = _oracle_topk(unit, m)
    neighbours = np.stack([[unit[j] for j, _ in row] for row in lists])
    scores = np.array([[s for _, s in row] for row in lists], dtype=np.float32)
    # One short list (a group of two under `same`) and one negative score.
    scores[4, 2] = np.nan
    scores[9, 2] = -0.25
    got = adapt.augment(unit, neighbours, scores)
    for i in range(len(unit)):
        total = [float(v) for v in unit[i]]
        for r, (j, score) in enumerate(lists[i]):
            weight = 0.0 if (i, r) in ((4, 2), (9, 2)) else max(float(score), 0.0)
            total = [t + weight * float(v) for t, v in zip(total, unit[j], strict=True)]
        np.testing.assert_allclose(got[i], _unit(total), atol=1e-7)
    assert got.dtype == np.float32
    # Moved towards its neighbours: a smaller angle to their weighted sum than before.
    pulled = np.einsum("ir,ird->id", np.maximum(np.nan_to_num(scores, nan=0.0), 0), neighbours.astype(np.float64))
    pulled /= np.linalg.norm(pulled, axis=1, keepdims=True)
    before = np.einsum("ij,ij->i", unit.astype(np.float64), pulled)
    after = np.einsum("ij,ij->i", got.astype(np.float64), pulled)
    assert (after >= before - 1e-6).all() and (after > before).mean() > 0.9


def test_augmentation_without_neighbours_is_the_vector_itself(catalogue):
    _, unit, _ = catalogue
    got = adapt.augment(unit[:4], np.zeros((4, 2, unit.shape[1]), dtype=np.float32), np.full((4, 2), np.nan))
    np.testing.assert_allclose(got, unit[:4], atol=1e-7)


def test_the_mean_round_trips_through_its_stored_text(catalogue):
    _, unit, valid = catalogue
    mean = adapt.mean_of(*[[v] for v in adapt.partial_sum(unit, valid)])
    assert np.array_equal(adapt.decode(adapt.encode(mean), 8), mean)
    assert adapt.decode(adapt.encode(mean), 9) is None
    assert adapt.decode("not base64!", 8) is None


def test_augment_with_incremental_is_refused_in_one_line():
    from lookalike.config import Config, ConfigError
    from lookalike.config.loading import validate

    with pytest.raises(ConfigError, match=r"neighbours.augment.*neighbours.incremental") as caught:
        validate(Config(neighbours={"augment": 2, "incremental": True}))
    assert "\n" not in str(caught.value)
    # Either alone, or center with incremental, is fine.
    validate(Config(neighbours={"augment": 2}))
    validate(Config(neighbours={"center": True, "incremental": True}))
