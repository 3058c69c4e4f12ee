"""Catalogue adaptation of the unit vectors before scoring (neighbours.center, neighbours.augment),
in plain numpy; the Spark side is lookalike.neighbours.adapt_stage.

center   u_i -> normalise(u_i - mean), mean = float32(sum of the valid unit vectors / their count).
         The mean is rounded to float32 once, so that the order of the distributed sum (which
         depends on the partitioning) does not reach the vectors, and so that the value stored
         with an incremental run is the value used.
augment  v_i -> normalise(v_i + sum_r w_r v_{j_r}) over the item's first-pass top m neighbours
         j_1..j_m (best first), w_r = max(score_r, 0) with the canonical score. The item itself
         weighs 1; a negative score would push the vector away from a neighbour, so it weighs 0.
         With w >= 0, <v_i, sum> >= 1: the sum is never zero.

Sums run in float64 in a fixed order (self, then neighbours by rank), and ``normalise`` rounds to
float32 once, so the same lists give bit-identical vectors wherever they are computed.
"""

from __future__ import annotations

import base64

import numpy as np

from lookalike.neighbours.topk import normalise


def partial_sum(unit: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
    """(float64 sum of the valid rows, their count): one partition's share of the mean."""
    rows = np.asarray(unit, dtype=np.float64)[np.asarray(valid, dtype=bool)]
    return rows.sum(axis=0), len(rows)


def mean_of(sums: list[np.ndarray], counts: list[int]) -> np.ndarray:
    """The catalogue's mean unit vector (float32) from partial sums and counts."""
    total = int(sum(counts))
    if total == 0:
        raise ValueError("no valid vector to average")
    return (np.sum(np.stack(sums), axis=0) / total).astype(np.float32)


def center(unit: np.ndarray, valid: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Valid rows centred on ``mean`` and scaled to unit norm again (float32); other rows as given.
    A row equal to the mean (a catalogue of one repeated vector) has no direction left: it keeps
    its own unit vector rather than drop out of the table."""
    out = np.array(unit, dtype=np.float32, copy=True)
    rows = np.flatnonzero(np.asarray(valid, dtype=bool))
    if len(rows) == 0:
        return out
    centred, ok = normalise(np.asarray(unit, dtype=np.float64)[rows] - np.asarray(mean, dtype=np.float64))
    out[rows[ok]] = centred[ok]
    return out


def augment(own: np.ndarray, neighbours: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Database-side augmentation of n vectors: ``own`` (n, d) float32 unit vectors,
    ``neighbours`` (n, m, d) their first-pass neighbours' vectors best first, ``scores`` (n, m) the
    canonical scores (NaN or -inf where a list is shorter than m). Returns (n, d) float32."""
    total = np.asarray(own, dtype=np.float64).copy()
    weights = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, neginf=0.0)
    weights = np.maximum(weights, 0.0)
    for r in range(weights.shape[1] if weights.ndim == 2 else 0):
        total += weights[:, r, None] * np.asarray(neighbours[:, r], dtype=np.float64)
    unit, _ = normalise(total)
    return unit


def encode(mean: np.ndarray) -> str:
    """The float32 mean as base64 of its little-endian bytes: exact, and small enough for a
    snapshot property (6.8 KB at d = 1280)."""
    return base64.b64encode(np.asarray(mean, dtype="<f4").tobytes()).decode("ascii")


def decode(text: str, dim: int) -> np.ndarray | None:
    """``encode``'s value, or None when it is not a mean of ``dim`` values."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, AttributeError):
        return None
    if len(raw) != 4 * dim:
        return None
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
