"""The merge step of neighbours.incremental on Arrow tables: every item's kept list, minus the
stale entries, plus its new entries, cut at the old bound, in one sort per table instead of a
Python loop per item (the rule is ``incremental.merge_list``'s, and the tests hold the two equal).

Input rows (ENTRIES), sorted by item: an item's previous list (KEPT, with its bound), its new
entries among one chunk of changed items (NEW, one row per chunk), a new or changed item's
partial list among one task's candidates (OWN, one row per task), and its current fingerprint
(CURRENT: the item still exists and is valid). Output rows (MERGED): one per current item, with
its fingerprint: an unchanged item's merged list, a changed item's list merged from its partial
ones (``full_list``'s rule), or ``rescore`` for a list that lost more entries than its reserve.
"""

from __future__ import annotations

import numpy as np

KEPT, NEW, CURRENT, OWN = 0, 1, 2, 3
ENTRIES = (
    "item_id string, kind int, fingerprint long, neighbour_ids array<string>, scores array<float>, "
    "bound_score float, bound_id string"
)
MERGED = (
    "item_id string, fingerprint long, neighbour_ids array<string>, scores array<float>, bound_score float, "
    "bound_id string, rescore boolean"
)


def merge_table(table, stale_ids, depth: int, needed: int):
    """ENTRIES rows of whole items, sorted by item_id -> one MERGED RecordBatch. ``stale_ids``: a
    pyarrow string array of the new, changed and deleted items; ``depth``: how deep lists are kept;
    ``needed``: the fewest exact entries a list may keep (k, or hide_duplicates' depth)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from lookalike.neighbours.changed_pass import arrow_schema

    ids = table.column("item_id").to_numpy(zero_copy_only=False)
    kind = table.column("kind").to_numpy(zero_copy_only=False)
    starts = np.r_[True, ids[1:] != ids[:-1]] if len(ids) else np.zeros(0, bool)
    group = np.cumsum(starts) - 1  # each row's item, 0 .. items - 1
    items = ids[starts]
    n = len(items)
    current = np.zeros(n, bool)
    current_rows = np.flatnonzero(kind == CURRENT)
    current[group[current_rows]] = True
    fingerprint = np.zeros(n, np.int64)
    fingerprint[group[current_rows]] = table.column("fingerprint").take(pa.array(current_rows)).to_numpy()
    stale = pc.is_in(pa.array(items, pa.string()), value_set=stale_ids).to_numpy(zero_copy_only=False)
    live = current & ~stale

    # Each item's bound, from its previous list (none: the list held every candidate there was).
    kept_rows = np.flatnonzero(kind == KEPT)
    bound_ids = table.column("bound_id").take(pa.array(kept_rows)).to_numpy(zero_copy_only=False)
    bound_scores = table.column("bound_score").take(pa.array(kept_rows)).fill_null(0.0).to_numpy()
    has_bound = np.zeros(n, bool)
    has_bound[group[kept_rows]] = bound_ids != None  # noqa: E711  (elementwise on an object array)
    has_bound &= ~stale  # a changed item's list is made anew from its own entries
    bound_score = np.zeros(n, np.float32)
    bound_score[group[kept_rows]] = bound_scores
    bound_id = np.full(n, "", dtype=object)
    bound_id[group[kept_rows]] = np.where(bound_ids != None, bound_ids, "")  # noqa: E711

    # Every entry of the live items' kept and new lists, the kept ones without stale neighbours,
    # and of the changed items' own partial lists.
    rows = np.flatnonzero((((kind == KEPT) | (kind == NEW)) & live[group]) | ((kind == OWN) & current[group]))
    taken = pa.array(rows, pa.int64())
    neighbour_lists = table.column("neighbour_ids").take(taken).combine_chunks()
    score_lists = table.column("scores").take(taken).combine_chunks()
    parent = pc.list_parent_indices(neighbour_lists).to_numpy()
    neighbours = pc.list_flatten(neighbour_lists)
    scores = pc.list_flatten(score_lists).to_numpy(zero_copy_only=False)
    from_kept = kind[rows][parent] == KEPT
    drop = from_kept & pc.is_in(neighbours, value_set=stale_ids).to_numpy(zero_copy_only=False)
    entries = pa.table(
        {"group": group[rows][parent][~drop], "score": scores[~drop], "neighbour": neighbours.filter(pa.array(~drop))}
    )
    # The canonical order within each item: score descending, then the smaller id.
    order = [("group", "ascending"), ("score", "descending"), ("neighbour", "ascending")]
    entries = entries.take(pc.sort_indices(entries, sort_keys=order))
    owner = entries.column("group").to_numpy()
    score = entries.column("score").to_numpy()
    neighbour = entries.column("neighbour").combine_chunks()

    # Entries ranking before the bound (or the bound itself) are exact; the list is cut at the
    # first one after it, where an unchanged candidate the list never held may belong.
    ties = pc.less_equal(neighbour, pa.array(bound_id[owner], pa.string())).to_numpy(zero_copy_only=False)
    exact = ~has_bound[owner] | (score > bound_score[owner]) | ((score == bound_score[owner]) & ties)
    first = np.searchsorted(owner, np.arange(n))  # each item's first entry
    position = np.arange(len(owner)) - first[owner]
    known = np.bincount(owner[exact], minlength=n)
    rescore = live & has_bound & (known < needed)
    keep = exact & (position < depth) & ~rescore[owner]

    # A list cut at ``depth`` gets its last entry as the new bound: a candidate dropped there
    # ranks after it.
    # (A list that held every candidate and is now full may not: the new entries stop at depth.)
    cut = current & ~rescore & ((known > depth) | (~has_bound & (known == depth)))
    last = first + depth - 1
    new_score = np.where(cut, score[np.minimum(last, len(score) - 1)] if len(score) else 0.0, bound_score)
    new_id = bound_id.copy()
    if cut.any():
        new_id[cut] = np.asarray(neighbour.take(pa.array(last[cut])).to_pylist(), dtype=object)
    bounded = (has_bound | cut) & ~rescore

    out = np.flatnonzero(current)
    counts = np.bincount(owner[keep], minlength=n)[out]
    offsets = pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32))
    return pa.RecordBatch.from_arrays(
        [
            pa.array(items[out], pa.string()),
            pa.array(fingerprint[out], pa.int64()),
            pa.ListArray.from_arrays(offsets, neighbour.filter(pa.array(keep))),
            pa.ListArray.from_arrays(offsets, pa.array(score[keep], pa.float32())),
            pa.array(new_score[out].astype(np.float32), pa.float32(), mask=~bounded[out]),
            pa.array(new_id[out], pa.string(), mask=~bounded[out]),
            pa.array(rescore[out]),
        ],
        schema=arrow_schema(MERGED),
    )
