"""The blend of behaviour and pictures, in numpy.

An item's blended vector is [sqrt(alpha) * c, sqrt(1 - alpha) * v], c its unit behaviour factor
(ALS' for a warm item, the ridge map's prediction for a cold one) and v its unit visual
embedding. It is a unit vector, and the dot product of two of them is exactly the blended score

    alpha * cos(c1, c2) + (1 - alpha) * cos(v1, v2)

so the neighbours kernels (exact or IVF, with every rule) find the top-k of the blended score
unchanged, as they find the top-k cosine of embeddings.

``source`` names what a neighbour's score comes from: ``visual`` when either item is cold (its
behaviour part is itself predicted from its picture); otherwise by the behaviour term's share
b / (b + v) of the two terms clipped at 0 (b = alpha * cf, v = (1 - alpha) * visual):
``behaviour`` above 2/3, ``visual`` below 1/3, ``blend`` in between (and when both are 0)."""

from __future__ import annotations

import numpy as np

SOURCES = ("behaviour", "visual", "blend")
# A term that brings at least twice the other's share "dominates".
DOMINANT_SHARE = 2 / 3


def blended_vectors(unit_factor: np.ndarray, unit_visual: np.ndarray, alpha: float) -> np.ndarray:
    """float32 (n, rank + dim): the vectors whose dot products are the blended scores."""
    return np.hstack(
        [np.sqrt(alpha) * unit_factor.astype(np.float64), np.sqrt(1.0 - alpha) * unit_visual.astype(np.float64)]
    ).astype(np.float32)


def blended_score(cf: np.ndarray, visual: np.ndarray, alpha: float) -> np.ndarray:
    """The definition: alpha * cf + (1 - alpha) * visual (cosines)."""
    return alpha * np.asarray(cf, np.float64) + (1.0 - alpha) * np.asarray(visual, np.float64)


def sources(cf: np.ndarray, visual: np.ndarray, alpha: float, cold: np.ndarray) -> np.ndarray:
    """The ``source`` of each pair (object array of SOURCES) from its two cosines; ``cold``: either
    item of the pair has no interactions."""
    return by_terms(alpha * np.asarray(cf, np.float64), (1.0 - alpha) * np.asarray(visual, np.float64), cold)


def sources_of_scores(score: np.ndarray, cf: np.ndarray, alpha: float, cold: np.ndarray) -> np.ndarray:
    """``sources`` from a pair's blended score and behaviour cosine: the visual term is the rest
    of the score (also when alpha is 1, where it is 0 but for rounding)."""
    b = alpha * np.asarray(cf, np.float64)
    return by_terms(b, np.asarray(score, np.float64) - b, cold)


def by_terms(b: np.ndarray, v: np.ndarray, cold: np.ndarray) -> np.ndarray:
    b, v = np.maximum(b, 0.0), np.maximum(v, 0.0)
    total = b + v
    share = np.divide(b, total, out=np.full(len(total), 0.5), where=total > 0)
    out = np.where(share > DOMINANT_SHARE, "behaviour", np.where(share < 1 - DOMINANT_SHARE, "visual", "blend"))
    return np.where(np.asarray(cold, bool), "visual", out).astype(object)
