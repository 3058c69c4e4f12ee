"""Approximate top-k by inverted lists (IVF): what ``ivf_stage`` runs in Spark. k-means is FAISS's;
the scan and its exact rescoring are numpy, as in ``topk``.

Exact search costs 2·N²·d: 10^20 FLOPs at 100M items of 512 floats. IVF clusters the candidates
into ``nlist`` lists around k-means centroids and scores each query only against the members of
its ``nprobe`` nearest lists, about N·nprobe/nlist candidates instead of N. A Spark task scans one
broadcast chunk of candidates, stored by list (``GroupCandidates``), for a batch of queries: each
list of the chunk meets every query of the batch that probes it in one matrix product.

What is found is scored exactly as ``topk`` does (float64-rescored, canonical order), so an IVF
table differs from the exact one only where a true neighbour sat in a list that was not probed:
with ``nprobe == nlist`` it is the exact table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lookalike.neighbours import topk

# k-means: iterations on the driver, and training points per list (FAISS warns under 39).
KMEANS_ITERATIONS = 12
TRAIN_PER_LIST = 64
TRAIN_MAX = 262_144
# Rows per matmul when assigning vectors to lists.
ASSIGN_ROWS = 4096


def auto_nlist(n_candidates: int) -> int:
    """About sqrt(N) lists: as many lists as items per list balances the two costs of a query
    (ranking the centroids, scanning the probed lists)."""
    return max(1, min(n_candidates, round(math.sqrt(n_candidates))))


def train_size(n_candidates: int, nlist: int) -> int:
    return int(min(n_candidates, max(nlist, min(TRAIN_MAX, nlist * TRAIN_PER_LIST))))


def nearest(vectors: np.ndarray, centroids: np.ndarray, n: int) -> np.ndarray:
    """(rows, n) int32: each unit vector's n most similar centroids, best first (ties: lower list)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty((len(vectors), n), dtype=np.int32)
    m = len(centroids)
    for start in range(0, len(vectors), ASSIGN_ROWS):
        scores = vectors[start : start + ASSIGN_ROWS] @ centroids.T
        if n < m:
            part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        else:
            part = np.broadcast_to(np.arange(m), scores.shape).copy()
        # Stable sort by (score desc, list asc) for deterministic probe order.
        part.sort(axis=1)
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[start : start + ASSIGN_ROWS] = np.take_along_axis(part, order, axis=1)
    return out


def assignment(vectors: np.ndarray, centroids: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(the ``nprobe`` lists each unit vector probes as a query, best first; the list it belongs
    to as a candidate: the first of them), as the search routes them."""
    probes = nearest(vectors, centroids, nprobe)
    return probes, probes[:, 0]


# One-sided 95%: nprobe is chosen so that the recall of the whole catalogue reaches the target with
# that confidence, not just the sample's (the fewest lists that pass on one sample are, more often
# than not, lists that the sample flatters).
CONFIDENCE_Z = 1.645


@dataclass(frozen=True)
class Chosen:
    """nprobe chosen for a target recall: the recall@k it gives on the sample, the lower
    confidence bound of that estimate, and whether that bound reaches the target (it may not
    within ``cap`` lists)."""

    nprobe: int
    recall: float | None
    target_met: bool
    lower_bound: float | None = None


@dataclass(frozen=True)
class SampledRecall:
    """IVF's recall@k on a sample of queries at every nprobe (index p: probing p lists), and the
    standard error of each as an estimate of the recall over every query."""

    recall: np.ndarray  # (nlist + 1,)
    error: np.ndarray  # (nlist + 1,)

    def __getitem__(self, nprobe: int) -> float:
        return float(self.recall[nprobe])


def recall_by_nprobe(
    query_probes: np.ndarray, neighbour_lists: list[np.ndarray], population: int | None = None
) -> SampledRecall:
    """IVF's recall@k on a sample at every nprobe. ``query_probes`` (sample, nlist): every list by
    each sampled query's ranking, best first; ``neighbour_lists[q]``: the lists of query q's exact
    top k; ``population``: the queries the sample was drawn from (finite-population correction;
    None: many). IVF rescores the candidates of the probed lists exactly, so an exact neighbour
    is found exactly when its list is probed: at nprobe p, when the list's rank for that query is
    below p. The recall is a ratio (found / wanted, summed over the queries); its standard error
    is the ratio estimator's, from the spread of the queries' own recalls."""
    n, nlist = query_probes.shape
    rank = np.empty_like(query_probes)
    rank[np.arange(n)[:, None], query_probes] = np.arange(nlist)
    wanted = np.array([len(lists) for lists in neighbour_lists], dtype=np.float64)
    if not wanted.sum():
        return SampledRecall(np.full(nlist + 1, np.nan), np.full(nlist + 1, np.nan))
    # found[q, p]: query q's exact neighbours whose list ranks below p.
    queries = np.repeat(np.arange(n), wanted.astype(np.int64))
    ranks = np.concatenate([rank[q, lists] for q, lists in enumerate(neighbour_lists)])
    found = np.zeros((n, nlist + 1), dtype=np.int32)
    np.add.at(found, (queries, ranks + 1), 1)
    found = np.cumsum(found, axis=1)
    recall = found.sum(axis=0) / wanted.sum()
    if n < 2:
        return SampledRecall(recall, np.zeros(nlist + 1))
    residual = found - recall[None, :] * wanted[:, None]
    variance = (residual**2).sum(axis=0) / (n * (n - 1)) / wanted.mean() ** 2
    if population is not None:
        variance *= max(0.0, 1 - n / max(population, n))
    return SampledRecall(recall, np.sqrt(variance))


def choose_nprobe(sampled: SampledRecall, target: float, cap: int) -> Chosen:
    """The fewest lists (1 .. cap) whose recall reaches ``target`` at the lower bound of a
    one-sided 95% confidence interval; else ``cap``."""
    recalls = sampled.recall
    if np.isnan(recalls).all():
        return Chosen(max(1, cap), None, False)
    lower = recalls - CONFIDENCE_Z * sampled.error
    reached = np.flatnonzero(lower[1 : cap + 1] >= target - 1e-12)
    nprobe = int(reached[0]) + 1 if len(reached) else cap
    return Chosen(nprobe, float(recalls[nprobe]), bool(len(reached)), float(lower[nprobe]))


def train(sample: np.ndarray, nlist: int, iterations: int = KMEANS_ITERATIONS, seed: int = 0) -> np.ndarray:
    """Spherical k-means (FAISS): (nlist, d) unit float32 centroids of the unit rows of ``sample``.

    Deterministic for a given sample and seed, whatever the number of threads. FAISS re-seeds an
    empty list by splitting a large one, so every list ends up with members of the sample. The
    sample is already drawn to size (``train_size``), so FAISS is told not to subsample it."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if len(sample) < nlist:
        raise ValueError(f"cannot train {nlist} lists on {len(sample)} vectors")
    kmeans = faiss.Kmeans(
        sample.shape[1],
        nlist,
        niter=iterations,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(1, -(-len(sample) // nlist)),
    )
    kmeans.train(sample)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def list_stats(list_sizes: np.ndarray) -> dict:
    """How uneven the lists are: a query's cost grows with the size of the lists it probes."""
    sizes = np.asarray(list_sizes)
    return {
        "lists": int(len(sizes)),
        "empty_lists": int((sizes == 0).sum()),
        "list_size": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "mean": round(float(sizes.mean()), 1),
            "p99": float(np.percentile(sizes, 99)),
            "max": int(sizes.max()),
        },
        "largest_list_vs_mean": round(float(sizes.max() / max(sizes.mean(), 1e-9)), 2),
    }


# --------------------------------------------------------------------------------------------
# Scoring one group


@dataclass(frozen=True)
class GroupCandidates:
    """A group's candidates ordered by (list, global index), with where each list starts."""

    lists: np.ndarray  # list ids present, ascending
    bounds: np.ndarray  # (len(lists) + 1,) row bounds
    indices: np.ndarray  # int64 global candidate indices (id order)
    ids: np.ndarray  # object array of item ids
    vectors: np.ndarray  # float32 (n, d)
    codes: np.ndarray | None = None  # (n, width) int64 rule codes (lookalike.neighbours.rules)

    def ids_of(self, indices: np.ndarray) -> np.ndarray:
        """Item ids of global candidate indices of this group."""
        order = np.argsort(self.indices, kind="stable")
        return self.ids[order[np.searchsorted(self.indices[order], indices)]]

    @classmethod
    def build(cls, lists, indices, ids, vectors, codes=None) -> GroupCandidates:
        lists = np.asarray(lists, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        order = np.lexsort((indices, lists))
        lists, indices = lists[order], indices[order]
        present, starts = np.unique(lists, return_index=True)
        return cls(
            present,
            np.append(starts, len(lists)),
            indices,
            np.asarray(ids, dtype=object)[order],
            np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[order]),
            None if codes is None else np.asarray(codes, dtype=np.int64)[order],
        )


def score_group(
    group: GroupCandidates,
    probes: np.ndarray,
    self_index: np.ndarray,
    vectors: np.ndarray,
    k: int,
    min_score: float | None = None,
    block_rows: int = 1024,
    rules=None,
):
    """Top-k of each query (rows of ``vectors``) among the members of the group's lists that it
    probes, its own index (``self_index``, -1 for none) excluded. Returns (scores (b, k), global
    indices (b, k)) in canonical order, padded with topk.EMPTY_*.

    As in ``topk.topk_block``, float32 scores only select: each list keeps its best
    k + POOL_MARGIN per query, the pool over all probed lists is cut at the k-th best minus the
    error bound, and only what is left is rescored exactly, once per query rather than once per
    list (rescoring is memory-bound and would otherwise cost as much as the matmuls). A query for
    which a list may have dropped a candidate within the bound (many near-ties) is redone list by
    list with ``topk.topk_block``. ``rules``: lookalike.neighbours.rules.Rules of these queries
    against the group's candidates (``group.codes``), forbidden pairs masked before selection."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    b = len(vectors)
    size = k + topk.POOL_MARGIN
    eps = np.float32(topk.tolerance(vectors.shape[1]))
    floor = np.float32(-np.inf if min_score is None else min_score - eps)
    rows_all, cols_all, scores_all = [], [], []
    dropped = np.full(b, -np.inf, dtype=np.float32)  # best float32 score a list left out, per query
    # The queries of each list, from one sort of the probes (a query probes a list at most once;
    # the stable sort keeps each list's queries in row order).
    flat = probes.ravel()
    by_list = np.argsort(flat, kind="stable")
    probed = flat[by_list]
    query_of = by_list // probes.shape[1]
    starts = np.searchsorted(probed, group.lists, side="left")
    stops = np.searchsorted(probed, group.lists, side="right")
    for j in range(len(group.lists)):
        if starts[j] == stops[j]:
            continue
        probing = query_of[starts[j] : stops[j]]
        lo, hi = int(group.bounds[j]), int(group.bounds[j + 1])
        for first in range(0, len(probing), block_rows):
            rows = probing[first : first + block_rows]
            picked_rows, cols, picked = _best_of_list(
                group,
                lo,
                hi,
                vectors,
                rows,
                self_index,
                size,
                floor,
                dropped,
                None if rules is None else rules.rows(rows),
            )
            rows_all.append(picked_rows)
            cols_all.append(cols)
            scores_all.append(picked)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    rows, cols, scores = (np.concatenate(a) for a in (rows_all, cols_all, scores_all)) if rows_all else empty
    pool_s, pool_i = topk.keep_best(rows, cols.astype(np.int64), scores, b, size)
    bound = np.maximum(pool_s[:, k - 1] - eps, floor)
    overflow = ((pool_i[:, -1] != topk.EMPTY_ID) & (pool_s[:, -1] >= bound)) | (dropped >= bound)
    r, slot = np.nonzero((pool_i != topk.EMPTY_ID) & (pool_s >= bound[:, None]) & ~overflow[:, None])
    c = pool_i[r, slot]
    exact = topk.exact_scores(vectors, group.vectors, r, c)
    if min_score is not None:
        ok = exact >= np.float32(min_score)
        r, c, exact = r[ok], c[ok], exact[ok]
    best_s, best_i = topk.keep_best(r, group.indices[c], exact, b, k)
    redo = np.flatnonzero(overflow)
    if len(redo):
        best_s[redo], best_i[redo] = _score_group_listwise(
            group,
            probes[redo],
            self_index[redo],
            vectors[redo],
            k,
            min_score,
            None if rules is None else rules.rows(redo),
        )
    return best_s, best_i


def _best_of_list(
    group: GroupCandidates,
    lo: int,
    hi: int,
    vectors,
    rows,
    self_index,
    size: int,
    floor,
    dropped: np.ndarray,
    rules=None,
):
    """(rows, group positions, float32 scores) of the ``size`` best members of list rows lo..hi
    for each query in ``rows`` (at least ``floor``); raises ``dropped[row]`` to the best score
    left out."""
    scores = vectors[rows] @ group.vectors[lo:hi].T
    own = np.flatnonzero(self_index[rows] >= 0)
    if len(own):
        pos = np.minimum(np.searchsorted(group.indices[lo:hi], self_index[rows][own]), hi - lo - 1)
        mine = group.indices[lo:hi][pos] == self_index[rows][own]
        scores[own[mine], pos[mine]] = -np.inf
    if rules is not None:
        rules.mask(scores, lo)
    width = hi - lo
    if width > size:
        cut = np.argpartition(scores, width - size - 1, axis=1)
        keep, out = cut[:, width - size :], cut[:, width - size - 1]
        dropped[rows] = np.maximum(dropped[rows], scores[np.arange(len(rows)), out])
        picked = np.take_along_axis(scores, keep, axis=1)
        cols = keep + lo
    else:
        picked = scores
        cols = np.broadcast_to(np.arange(lo, hi), scores.shape)
    # A forbidden pair (-inf) passes a floor of -inf but must not be rescored into a real score.
    ok = (picked >= floor) & (picked != -np.inf)
    return np.broadcast_to(rows[:, None], picked.shape)[ok], cols[ok], picked[ok]


def _score_group_listwise(group: GroupCandidates, probes, self_index, vectors, k: int, min_score, rules=None):
    """``score_group`` the slow, simple way: exact top-k per probed list, then merged."""
    b = len(vectors)
    rows_all, ids_all, scores_all = [], [], []
    for j, list_id in enumerate(group.lists):
        rows = np.flatnonzero((probes == list_id).any(axis=1))
        if not len(rows):
            continue
        lo, hi = group.bounds[j], group.bounds[j + 1]
        members = group.indices[lo:hi]
        own = self_index[rows]
        pos = np.minimum(np.searchsorted(members, own), len(members) - 1)
        scores, found = topk.topk_block(
            vectors[rows],
            group.vectors[lo:hi],
            k,
            self_index=np.where(members[pos] == own, pos, -1),
            min_score=min_score,
            rules=None if rules is None else rules.rows(rows).columns(slice(lo, hi)),
        )
        present = found != topk.EMPTY_ID
        rows_all.append(np.broadcast_to(rows[:, None], found.shape)[present])
        ids_all.append(members[found[present]])
        scores_all.append(scores[present])
    if not rows_all:
        return topk.keep_best(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32), b, k)
    return topk.keep_best(np.concatenate(rows_all), np.concatenate(ids_all), np.concatenate(scores_all), b, k)


def recall(found: dict, exact: dict) -> float | None:
    """Share of the exact neighbours that were found, over the sampled queries: {query: set}."""
    wanted = sum(len(v) for v in exact.values())
    if not wanted:
        return None
    return sum(len(set(found.get(q, ())) & set(v)) for q, v in exact.items()) / wanted
