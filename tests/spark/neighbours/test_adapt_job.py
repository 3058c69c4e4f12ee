"""neighbours.center and neighbours.augment through the job on a real local SparkSession, against a
numpy oracle computed apart (the brute force of tests/support on vectors adapted here with plain
loops): exact and IVF, several partitions and broadcast chunks, an invalid vector, and an
incremental run that reuses the stored catalogue mean. The arithmetic alone:
tests/unit/neighbours/test_adapt.py."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.jobs import neighbours as job
from lookalike.neighbours.topk import normalise
from tests.support.brute_force import brute_force, random_vectors
from tests.support.neighbour_tables import (
    assert_matches,
    config,
    embeddings_dir,
    make_ids,
    publish_embeddings,
    read_lists,
)
from tests.support.outputs import output_summary

N, DIM, K = 150, 12, 6


def _centred(x: np.ndarray, mean_of: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(every valid vector minus the mean unit vector of ``mean_of``'s valid rows (default ``x``),
    the mean). Invalid rows stay as they are: the job leaves them out."""
    unit, valid = normalise(x)
    source_unit, source_valid = normalise(x if mean_of is None else mean_of)
    mean = np.zeros(x.shape[1])
    for row in source_unit[source_valid]:
        mean += row.astype(np.float64)
    mean = (mean / source_valid.sum()).astype(np.float32)
    out = np.array(x, dtype=np.float64)
    for i in np.flatnonzero(valid):
        out[i] = unit[i].astype(np.float64) - mean.astype(np.float64)
    return out, mean


def _augmented(ids: list[str], x: np.ndarray, m: int) -> np.ndarray:
    """Every valid vector plus its m nearest (the oracle's lists) weighted by max(score, 0)."""
    unit, valid = normalise(x)
    position = {item: i for i, item in enumerate(ids)}
    out = np.array(x, dtype=np.float64)
    for item, neighbours in brute_force(ids, x, m).items():
        i = position[item]
        total = unit[i].astype(np.float64)
        for neighbour, score in neighbours:
            total = total + max(float(score), 0.0) * unit[position[neighbour]].astype(np.float64)
        out[i] = total
    assert valid.sum() == len(brute_force(ids, x, m))
    return out


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    ids = make_ids(N, seed=5)
    # Clusters around a common offset: centring changes the lists.
    x = random_vectors(N, DIM, seed=6, clusters=6) + np.float32(1.5)
    x[17] = 0  # invalid: neither in the mean nor in any list
    return tmp, ids, x, embeddings_dir(tmp, ids, x)


def test_center_matches_the_oracle_and_changes_the_lists(spark, catalogue):
    tmp, ids, x, embeddings = catalogue
    out = tmp / "center"
    summary = job.run(spark, config(out, embeddings, k=K, center=True, partitions=3, broadcast_max_mb=0.002))
    centred, mean = _centred(x)
    got = read_lists(str(out / "neighbours"))
    assert_matches(got, brute_force(ids, centred, K))
    assert got != {item: [(r + 1, n, s) for r, (n, s) in enumerate(v)] for item, v in brute_force(ids, x, K).items()}
    assert summary["center"] == {"mean_norm": pytest.approx(float(np.linalg.norm(mean)), abs=1e-5), "reused": False}
    assert summary["chunks"] > 1 and ids[17] not in got and summary["invalid"] == 1


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_augment_matches_the_oracle(spark, catalogue, method):
    tmp, ids, x, embeddings = catalogue
    out = tmp / f"augment-{method}"
    # IVF probing every list is exact: both passes must then give the oracle's lists.
    extra = {"nlist": 4, "nprobe": 4} if method == "ivf" else {"broadcast_max_mb": 0.002}
    summary = job.run(spark, config(out, embeddings, k=K, augment=3, method=method, partitions=4, **extra))
    assert_matches(read_lists(str(out / "neighbours")), brute_force(ids, _augmented(ids, x, 3), K))
    assert summary["augment"]["m"] == 3 and summary["phase_seconds"]["augment"] > 0


def test_center_and_augment_together(spark, catalogue):
    tmp, ids, x, embeddings = catalogue
    out = tmp / "both"
    job.run(spark, config(out, embeddings, k=K, center=True, augment=2, partitions=2))
    centred, _ = _centred(x)
    assert_matches(read_lists(str(out / "neighbours")), brute_force(ids, _augmented(ids, centred, 2), K))


def test_incremental_runs_reuse_the_stored_mean(spark, tmp_path):
    ids = make_ids(120, seed=8)
    x = random_vectors(120, DIM, seed=9, clusters=5) + np.float32(1.0)
    embeddings = str(tmp_path / "embeddings")

    def run(day, items, vectors):
        publish_embeddings(spark, embeddings, items, vectors, content=f"day-{day}", run_id=f"2026010{day}T000000Z-e")
        cfg = config(tmp_path, embeddings, k=K, center=True, incremental=True, reserve=3, partitions=3)
        return job.run(spark, cfg)

    first = run(1, ids, x)
    assert first["mode"] == "full" and first["center"]["reused"] is False
    assert "center" in output_summary(str(tmp_path / "neighbours_lists"))
    # New items far from the old mean: a mean computed afresh would move every vector.
    more_ids = ids + [f"new-{i}" for i in range(4)]
    more = np.vstack([x, random_vectors(4, DIM, seed=10) + np.float32(6.0)])
    second = run(2, more_ids, more)
    assert second["mode"] == "incremental", second["mode_reason"]
    assert second["center"]["reused"] is True
    assert second["center"]["mean_norm"] == first["center"]["mean_norm"]
    centred, _ = _centred(more, mean_of=x)
    assert_matches(read_lists(str(tmp_path / "neighbours")), brute_force(more_ids, centred, K))
