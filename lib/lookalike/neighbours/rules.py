"""Which candidates a query may get, beyond its own column: neighbours.same, neighbours.exclude_same
and neighbours.hide_duplicates as integer codes per item (one column per rule, NULL where the item
has no value), checked inside the kernels before selection.

A masked pair scores -inf, which no cosine of unit vectors does, so the selection drops it like a
query's own column and the running top-k fills up with allowed candidates: every item still gets
k neighbours when k allowed ones exist.

Layout of the codes: with ``same``, column 0 must be equal (a NULL query or candidate matches
nothing: such an item has no neighbours and is never recommended); every other column must differ
(a NULL matches nothing, so it excludes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NULL = -1


@dataclass(frozen=True)
class Layout:
    """What the code columns mean; travels to the executors with the scoring functions."""

    same: bool = False
    width: int = 0  # code columns, ``same``'s first

    @property
    def active(self) -> bool:
        return self.width > 0


# No rules: the default of the scoring functions (a frozen Layout, so one instance serves all).
NO_RULES = Layout()


@dataclass(frozen=True)
class Rules:
    """Codes of a block of queries and of the candidates they are scored against; with
    ``probes``, also IVF's rule (``with_probes``)."""

    query: np.ndarray  # (b, width) int64
    candidate: np.ndarray  # (m, width) int64
    same: bool
    probes: np.ndarray | None = None  # (b, nprobe): the lists each query probes
    lists: np.ndarray | None = None  # (m,): each candidate's list

    def rows(self, index) -> Rules:
        probes = None if self.probes is None else self.probes[index]
        return Rules(self.query[index], self.candidate, self.same, probes, self.lists)

    def columns(self, index) -> Rules:
        lists = None if self.lists is None else self.lists[index]
        return Rules(self.query, self.candidate[index], self.same, self.probes, lists)

    def mask(self, scores: np.ndarray, first: int = 0) -> None:
        """Scores of the pairs the rules forbid -> -inf, in place; ``scores`` (b, w) is against
        candidates first .. first + w - 1."""
        width = scores.shape[1]
        for j in range(self.query.shape[1]):
            q = self.query[:, j][:, None]
            c = self.candidate[first : first + width, j][None, :]
            if self.same and j == 0:
                banned = (q != c) | (q == NULL)
            else:
                banned = (q == c) & (q != NULL)
            scores[banned] = -np.inf
        if self.probes is not None and self.lists is not None:
            lists = self.lists[first : first + width][None, :]
            probed = self.probes[:, :1] == lists
            for j in range(1, self.probes.shape[1]):
                probed |= self.probes[:, j : j + 1] == lists
            scores[~probed] = -np.inf


def with_probes(rules: Rules | None, probes: np.ndarray, lists: np.ndarray) -> Rules:
    """``rules`` (None: none) plus IVF's: a query only gets candidates of the lists it probes.
    What an IVF search returns, as a mask, so that the exact kernel computes it for any subset of
    queries and candidates (neighbours.incremental with method ivf)."""
    if rules is None:
        rules = Rules(np.zeros((len(probes), 0), np.int64), np.zeros((len(lists), 0), np.int64), False)
    return Rules(rules.query, rules.candidate, rules.same, np.asarray(probes), np.asarray(lists))


def make(layout: Layout, query_codes: np.ndarray | None, candidate_codes: np.ndarray | None) -> Rules | None:
    if not layout.active:
        return None
    return Rules(
        np.asarray(query_codes, dtype=np.int64).reshape(-1, layout.width),
        np.asarray(candidate_codes, dtype=np.int64).reshape(-1, layout.width),
        layout.same,
    )


def codes_of(column, layout: Layout) -> np.ndarray | None:
    """The (n, width) codes of an Arrow list<int64> column of PREPARED rows (None without rules)."""
    if not layout.active:
        return None
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.int64).reshape(-1, layout.width)


def without_same(layout: Layout, codes: np.ndarray) -> tuple[Layout, np.ndarray]:
    """The exclusion columns alone: what is left to check once the search is already partitioned by
    the ``same`` column."""
    if not layout.same:
        return layout, codes
    return Layout(False, layout.width - 1), codes[:, 1:]
