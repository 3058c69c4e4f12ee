"""The numpy parts of the hybrid job: the ridge map against np.linalg.solve of the normal
equations written out, partial sums added in pieces, the blended vectors' dot product against the
blend's definition, and the source rule."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.hybrid import blend, ridge, vectors


def _unit(rng, n, d):
    return vectors.unit_rows(rng.normal(size=(n, d)).astype(np.float32))


def test_ridge_map_equals_a_direct_solve_of_the_penalised_normal_equations():
    rng = np.random.default_rng(0)
    x, y = _unit(rng, 200, 12), _unit(rng, 200, 5)
    lam = 0.7
    xtx, xty = ridge.normal_sums(x, y)
    got = ridge.solve(xtx, xty, lam)
    # Written out: X with a ones column, the penalty on every weight but the bias row.
    design = np.hstack([x.astype(np.float64), np.ones((200, 1))])
    penalty = lam * np.eye(13)
    penalty[12, 12] = 0.0
    want = np.linalg.solve(design.T @ design + penalty, design.T @ y.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

    # It minimises the objective: any nudge costs more.
    def cost(w):
        return np.sum((design @ w - y) ** 2) + lam * np.sum(w[:12] ** 2)

    for _ in range(5):
        assert cost(got) < cost(got + 1e-3 * rng.normal(size=got.shape))
    np.testing.assert_allclose(ridge.predict(got, x[:3]), design[:3] @ want, rtol=1e-10)


def test_normal_sums_added_over_pieces_equal_the_whole():
    rng = np.random.default_rng(1)
    x, y = _unit(rng, 90, 6), _unit(rng, 90, 3)
    parts = [ridge.normal_sums(x[a:b], y[a:b]) for a, b in ((0, 10), (10, 55), (55, 90))]
    whole = ridge.normal_sums(x, y)
    np.testing.assert_allclose(sum(p[0] for p in parts), whole[0], atol=1e-12)
    np.testing.assert_allclose(sum(p[1] for p in parts), whole[1], atol=1e-12)


def test_ridge_without_penalty_and_too_few_rows_still_answers():
    rng = np.random.default_rng(2)
    x, y = _unit(rng, 3, 8), _unit(rng, 3, 2)
    w = ridge.solve(*ridge.normal_sums(x, y), 0.0)
    # Singular: the least-norm solution, which fits the three rows exactly.
    np.testing.assert_allclose(ridge.predict(w, x), y, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_blended_vectors_dot_product_is_the_blended_score(alpha):
    rng = np.random.default_rng(3)
    c, v = _unit(rng, 40, 4), _unit(rng, 40, 9)
    mixed = blend.blended_vectors(c, v, alpha)
    assert mixed.shape == (40, 13) and mixed.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), 1.0, atol=1e-6)
    cf = c.astype(np.float64) @ c.T.astype(np.float64)
    visual = v.astype(np.float64) @ v.T.astype(np.float64)
    want = alpha * cf + (1 - alpha) * visual
    np.testing.assert_allclose(mixed.astype(np.float64) @ mixed.T.astype(np.float64), want, atol=1e-6)
    np.testing.assert_allclose(blend.blended_score(cf, visual, alpha), want)


def test_source_names_the_dominant_term_and_visual_for_cold_pairs():
    cf = np.array([0.9, 0.1, 0.5, -0.4, 0.8, 0.0])
    visual = np.array([0.1, 0.9, 0.5, 0.6, 0.8, 0.0])
    cold = np.array([False, False, False, False, True, False])
    got = blend.sources(cf, visual, 0.5, cold)
    # 0.45 vs 0.05: behaviour; 0.05 vs 0.45: visual; equal: blend; negative cf clipped: visual;
    # cold pair: visual whatever the terms; both zero: blend.
    assert got.tolist() == ["behaviour", "visual", "blend", "visual", "visual", "blend"]
    # The same from the blended score and cf (how the job finds it).
    score = blend.blended_score(cf, visual, 0.5)
    assert blend.sources_of_scores(score, cf, 0.5, cold).tolist() == got.tolist()
    # alpha weighs the terms: at 0.9 a pair with equal cosines is behaviour's, at 0.1 visual's.
    equal = np.array([0.5]), np.array([0.5]), np.array([False])
    assert blend.sources(*equal[:2], 0.9, equal[2]).tolist() == ["behaviour"]
    assert blend.sources(*equal[:2], 0.1, equal[2]).tolist() == ["visual"]
    assert blend.sources(*equal[:2], 0.0, equal[2]).tolist() == ["visual"]
    assert blend.sources(*equal[:2], 1.0, equal[2]).tolist() == ["behaviour"]


def test_unit_rows_and_matrix():
    import pyarrow as pa

    column = pa.array([[3.0, 4.0], [0.0, 0.0]], pa.list_(pa.float32()))
    rows = vectors.matrix(column, 2)
    np.testing.assert_array_equal(rows, [[3, 4], [0, 0]])
    np.testing.assert_allclose(vectors.unit_rows(rows), [[0.6, 0.8], [0, 0]])
    with pytest.raises(ValueError):
        vectors.matrix(column, 3)


def test_with_sources_adds_each_pairs_source_from_its_score_and_factors():
    import pyarrow as pa

    from lookalike import schemas
    from lookalike.hybrid import sources

    unit = vectors.unit_rows(np.array([[1, 0], [1, 0.2], [0, 1], [0.6, 0.8]], np.float32))
    factors = sources.Factors(np.array(["a", "b", "c", "d"], dtype=object), unit, np.array([True, True, True, False]))
    alpha = 0.5
    cf_ab = float(unit[0] @ unit[1])  # about 0.98
    rows = pa.table(
        {
            "item_id": ["a", "a", "a"],
            "rank": pa.array([1, 2, 3], pa.int32()),
            "neighbour_id": ["b", "c", "d"],
            # a-b: behaviour 0.49 against visual 0.05; a-c: cf 0, visual 0.45; a-d: d is cold.
            "score": pa.array([alpha * cf_ab + 0.05, 0.45, 0.9], pa.float32()),
        }
    )
    got = sources.with_sources(rows, factors, alpha)
    assert got.schema == schemas.arrow_schema(schemas.HYBRID)
    assert got.column("source").to_pylist() == ["behaviour", "visual", "visual"]
    with pytest.raises(RuntimeError):
        sources.with_sources(rows.set_column(2, "neighbour_id", pa.array(["b", "c", "zz"])), factors, alpha)
