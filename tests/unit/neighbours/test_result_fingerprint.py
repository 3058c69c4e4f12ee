"""Which neighbours settings count towards the fingerprint of the job's result (the unchanged-input
skip recomputes when it changes): exactly NEIGHBOURS_RESULT_KEYS, plus the IVF ones for IVF; a
candidates list by its ids, a candidates table by its content. The skip in the job:
tests/spark/neighbours/test_skip_job.py."""

from __future__ import annotations

import pytest

from lookalike.config import (
    NEIGHBOURS_AUTO_NPROBE_KEYS,
    NEIGHBOURS_IVF_RESULT_KEYS,
    NEIGHBOURS_RESULT_KEYS,
    NeighboursConfig,
    updated,
)

# One other value for every neighbours key: a key added to NeighboursConfig fails the test below
# until it is put on one side or the other of NEIGHBOURS_RESULT_KEYS.
OTHER_VALUE = {
    "k": 11,
    "min_score": 0.5,
    "broadcast_max_mb": 1.0,
    "block_rows": 7,
    "candidates": ["a"],
    "method": None,
    "symmetric": False,
    "nlist": 5,
    "nprobe": 3,
    "recall_sample": 0,
    "seed": 9,
    "partitions": 4,
    "row_group_rows": 10,
    "attributes": "a.csv",
    "same": "category",
    "exclude_same": "family",
    "hide_duplicates": True,
    "incremental": True,
    "reserve": 3,
    "target_recall": 0.9,
    "center": True,
    "augment": 2,
}


@pytest.mark.parametrize("method,nprobe", [("exact", 0), ("ivf", 0), ("ivf", 8)])
def test_result_fingerprint_counts_exactly_the_result_keys(method, nprobe):
    base = NeighboursConfig(method=method, nprobe=nprobe)
    assert set(OTHER_VALUE) == set(NeighboursConfig.model_fields)
    for key, value in OTHER_VALUE.items():
        if key == "method":
            value = "exact" if method == "ivf" else "ivf"
        # With nprobe 0 (chosen from target_recall on the recall sample) those two decide too.
        chosen = method == "ivf" and nprobe == 0 and key in NEIGHBOURS_AUTO_NPROBE_KEYS
        counts = key in NEIGHBOURS_RESULT_KEYS or (method == "ivf" and key in NEIGHBOURS_IVF_RESULT_KEYS) or chosen
        changed = updated(base, **{key: value}).result_fingerprint() != base.result_fingerprint()
        assert changed == counts, key


def test_result_fingerprint_of_candidates():
    def fingerprint(candidates):
        return NeighboursConfig(candidates=candidates).result_fingerprint()

    assert fingerprint(["b", "a", "b"]) == fingerprint(["a", "b"]) != fingerprint(["a", "c"])
    assert fingerprint([1, 2]) == fingerprint(["2", "1"])  # the job reads ids as strings
    # A table counts by its content (candidates_identity), not by where it is.
    assert fingerprint("s3://x/likes.csv") == fingerprint("/data/likes.csv") != fingerprint(None)


def test_center_and_augment_off_leave_the_fingerprint_of_older_tables():
    """Off, the two keys are left out: a table published before they existed still skips."""
    import hashlib
    import json

    base = NeighboursConfig()
    values = {key: getattr(base, key) for key in NEIGHBOURS_RESULT_KEYS}
    for key in ("attributes", "same", "exclude_same", "hide_duplicates", "center", "augment"):
        del values[key]
    before = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    assert base.result_fingerprint() == before
    assert updated(base, center=True).result_fingerprint() != before
    assert updated(base, augment=1).result_fingerprint() != updated(base, augment=2).result_fingerprint()
