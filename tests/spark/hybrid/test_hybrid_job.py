"""The hybrid job end to end on a small embeddings table and interactions file: ALS factors equal
MLlib's ALS fitted directly (same ids, seed and settings), the table's scores equal the blend
computed in numpy from those factors, the ridge map and the pictures; cold items get full lists;
every bad-interaction case is counted; a table with nothing usable is exit status 2; the pipeline
runs the stage when hybrid.interactions is set."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.config import from_dict
from lookalike.errors import EXIT_USER
from lookalike.hybrid import als, blend, ridge, vectors
from lookalike.jobs import hybrid as job
from tests.support.neighbour_tables import embeddings_dir, read_lists
from tests.support.outputs import output_summary, read_output

N, DIM, K = 48, 6, 5
IDS = [f"item-{i:02d}" for i in range(N)]
COLD = IDS[40:]  # nobody interacted with these
SETTINGS = {"rank": 3, "iterations": 4, "reg_param": 0.1, "confidence": 5.0, "seed": 7, "ridge": 0.5}


def _interactions() -> list[dict]:
    rng = np.random.default_rng(11)
    rows = []
    for user in range(40):
        # Every one of the 40 warm items has interactions: its own user's, and the next user's.
        chosen = {user, (user + 1) % 40} | {int(i) for i in rng.choice(40, size=2, replace=False)}
        for i in sorted(chosen):
            rows.append({"user_id": f"u{user:02d}", "item_id": IDS[i], "weight": float(rng.integers(1, 4))})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hybrid")
    vectors_ = np.random.default_rng(5).normal(size=(N, DIM)).astype(np.float32)
    embeddings = embeddings_dir(tmp, IDS, vectors_, parts=2)
    good = _interactions()
    bad = [
        {"user_id": None, "item_id": IDS[0], "weight": "1"},  # missing_ids
        {"user_id": "u00", "item_id": IDS[1], "weight": "-2"},  # invalid_weights
        {"user_id": "u00", "item_id": IDS[2], "weight": "lots"},  # invalid_weights
        {"user_id": "u01", "item_id": "no-such-item", "weight": "1"},  # unknown_items
        {"user_id": "lonely", "item_id": IDS[3], "weight": "1"},  # single_interaction_users
    ]
    rows = (
        [{**r, "weight": str(int(r["weight"]))} for r in good]
        + bad
        + [{**good[0], "weight": str(int(good[0]["weight"]))}]
    )
    csv = tmp / "interactions.csv"
    csv.write_text(
        "user_id,item_id,weight\n" + "".join(f"{r['user_id'] or ''},{r['item_id']},{r['weight']}\n" for r in rows),
        encoding="utf-8",
    )
    clean = tmp / "clean.parquet"
    pq.write_table(pa.Table.from_pylist(good), clean)
    return tmp, embeddings, vectors_, good, str(csv), str(clean)


def _config(tmp, embeddings, interactions, name, alpha=0.5, **neighbours):
    out = tmp / name
    return from_dict(
        {
            "output": {
                "embeddings": embeddings,
                "neighbours": str(out / "neighbours"),
                "errors": str(out / "errors"),
                "hybrid": str(out / "hybrid"),
                "catalog": {"uri": str(out / "catalog.db")},
            },
            "neighbours": {"k": K, "partitions": 2, **neighbours},
            "hybrid": {"interactions": interactions, "alpha": alpha, **SETTINGS},
        }
    ), out


def _direct_factors(spark, good) -> dict:
    """MLlib ALS fitted directly: ids numbered in sorted order, as the job documents it."""
    from pyspark.ml.recommendation import ALS

    users = sorted({r["user_id"] for r in good})
    items = sorted({r["item_id"] for r in good})
    rows = [(users.index(r["user_id"]), items.index(r["item_id"]), r["weight"]) for r in good]
    frame = spark.createDataFrame(rows, "user int, item int, weight double")
    model = ALS(
        rank=3,
        maxIter=4,
        regParam=0.1,
        alpha=5.0,
        implicitPrefs=True,
        seed=7,
        userCol="user",
        itemCol="item",
        ratingCol="weight",
    ).fit(frame)
    return {items[r["id"]]: np.array(r["features"]) for r in model.itemFactors.collect()}


def test_factors_equal_mllib_als_and_scores_equal_the_numpy_blend(spark, data, caplog):
    tmp, embeddings, visual, good, _, clean = data
    # center and augment are for the picture neighbours: said, and left out of the blend's scores.
    cfg, out = _config(tmp, embeddings, clean, "clean", alpha=0.4, center=True, augment=2)
    usable = spark.createDataFrame(good, "user_id string, item_id string, weight double")
    ours = {r["item_id"]: np.array(r["factor"]) for r in als.item_factors(spark, usable, cfg.hybrid).collect()}
    direct = _direct_factors(spark, good)
    assert sorted(ours) == sorted(direct) == IDS[:40]
    for item in direct:
        np.testing.assert_allclose(ours[item], direct[item], rtol=1e-4, atol=1e-5)

    with caplog.at_level(logging.INFO, logger="lookalike.jobs.hybrid"):
        summary = job.run(spark, cfg)
    said = [r.getMessage() for r in caplog.records if "does not apply to the hybrid table" in r.getMessage()]
    assert [m.split()[0] for m in said] == ["neighbours.center", "neighbours.augment"]
    assert summary["warm_items"] == 40 and summary["cold_items"] == 8
    assert summary["interactions"]["usable_pairs"] == len(good) and summary["ridge"]["warm_items_used"] == 40

    # The oracle: unit factors (ALS for warm items, the ridge map's prediction for cold ones from
    # a numpy solve), unit pictures, the blend's definition, every pair scored.
    unit_visual = vectors.unit_rows(visual)
    warm = np.array([i not in COLD for i in IDS])
    factors = np.array([direct.get(i, np.zeros(3)) for i in IDS], np.float32)
    xtx, xty = ridge.normal_sums(unit_visual[warm], vectors.unit_rows(factors[warm]))
    w = ridge.solve(xtx, xty, SETTINGS["ridge"])
    factors[~warm] = ridge.predict(w, unit_visual[~warm])
    unit_factor = vectors.unit_rows(factors).astype(np.float64)
    cf = unit_factor @ unit_factor.T
    vis = unit_visual.astype(np.float64) @ unit_visual.T.astype(np.float64)
    score = blend.blended_score(cf, vis, 0.4)
    table = read_output(str(out / "hybrid")).to_pylist()
    assert len(table) == N * K
    lists = read_lists(str(out / "hybrid"))
    for q, item in enumerate(IDS):
        order = sorted((j for j in range(N) if j != q), key=lambda j: (-score[q, j], IDS[j]))[:K]
        got = lists[item]
        # Ranks follow the blended score (ties within 1e-4 may swap: ALS runs in float32).
        np.testing.assert_allclose([s for _, _, s in got], score[q, order], atol=2e-4)
        assert [n for _, n, _ in got][:2] == [IDS[j] for j in order][:2] or np.isclose(
            score[q, order[0]], score[q, order[1]], atol=2e-4
        )
    # Cold items have full lists; each pair's source follows the rule.
    for row in table:
        q, j = IDS.index(row["item_id"]), IDS.index(row["neighbour_id"])
        cold = IDS[q] in COLD or IDS[j] in COLD
        assert row["source"] == blend.sources(cf[q, j : j + 1], vis[q, j : j + 1], 0.4, np.array([cold]))[0]
    assert all(len(lists[c]) == K for c in COLD)
    assert all(r["source"] == "visual" for r in table if r["item_id"] in COLD)
    assert sum(summary["sources"].values()) == N * K == summary["rows"]
    assert output_summary(str(out / "hybrid"))["inputs"] == summary["inputs"]


def test_bad_interactions_are_counted_with_samples_and_nothing_usable_is_exit_2(spark, data):
    tmp, embeddings, _, good, csv, _ = data
    # Also the IVF kernel (every list probed: exact) and a rule, as the neighbours job applies them.
    allowed = IDS[::2]
    ivf = {"method": "ivf", "nlist": 3, "nprobe": 3, "recall_sample": 10, "candidates": allowed}
    cfg, out = _config(tmp, embeddings, csv, "bad", **ivf)
    summary = job.run(spark, cfg)
    table = read_output(str(out / "hybrid")).to_pylist()
    assert summary["recall_at_k"] == 1.0 and summary["method"] == "ivf"
    assert {r["neighbour_id"] for r in table} <= set(allowed) and len(table) == N * K
    assert all(r["item_id"] != r["neighbour_id"] for r in table)
    counts = summary["interactions"]
    assert counts["rows"] == len(good) + 6
    assert counts["missing_ids"] == 1
    assert counts["invalid_weights"] == 2 and sorted(summary["samples"]["invalid_weights"]) == ["-2", "lots"]
    assert counts["unknown_items"] == 1 and summary["samples"]["unknown_items"] == ["no-such-item"]
    assert counts["duplicate_rows"] == 1
    assert counts["single_interaction_users"] == 1 and summary["samples"]["single_interaction_users"] == ["lonely"]
    assert counts["usable_pairs"] == len(good)

    useless = tmp / "useless.csv"
    useless.write_text("user_id,item_id,weight\nu1,no-such-item,1\nu1,item-01,-1\nu2,item-02,1\n", encoding="utf-8")
    cfg, out = _config(tmp, embeddings, str(useless), "useless")
    argv = [
        f"--set=hybrid.interactions={useless}",
        f"--set=output.embeddings={embeddings}",
        f"--set=output.hybrid={out / 'hybrid'}",
        f"--set=output.catalog.uri={out / 'catalog.db'}",
    ]
    assert job.main(argv, spark=spark) == EXIT_USER
    assert not (out / "hybrid" / "metadata").exists()
    nocolumn = tmp / "nocolumn.csv"
    nocolumn.write_text("customer,item_id\nu1,item-01\n", encoding="utf-8")
    argv[0] = f"--set=hybrid.interactions={nocolumn}"
    assert job.main(argv, spark=spark) == EXIT_USER


def test_pipeline_runs_the_hybrid_stage_when_interactions_are_set(spark, sample_images, toy_overrides, tmp_path):
    from lookalike.jobs import pipeline

    images = tmp_path / "images"
    images.mkdir()
    chosen = sample_images[:: max(1, len(sample_images) // 12)][:12]
    for path in chosen:
        (images / path.name).write_bytes(path.read_bytes())
    ids = sorted(p.stem for p in chosen)
    rng = np.random.default_rng(3)
    rows = [{"user_id": f"u{u}", "item_id": ids[i]} for u in range(8) for i in rng.choice(9, 3, replace=False)]
    interactions = tmp_path / "interactions.parquet"
    pq.write_table(pa.Table.from_pylist(rows), interactions)
    argv = [f"--set={o}" for o in toy_overrides] + [
        f"--set=input.uri={images}",
        "--set=model.batch_size=4",
        "--set=input.partition_size=6",
        f"--set=output.embeddings={tmp_path / 'embeddings'}",
        f"--set=output.errors={tmp_path / 'errors'}",
        f"--set=output.neighbours={tmp_path / 'neighbours'}",
        f"--set=output.hybrid={tmp_path / 'hybrid'}",
        f"--set=hybrid.interactions={interactions}",
        "--set=hybrid.rank=2",
        "--set=hybrid.iterations=2",
        "--set=neighbours.k=3",
    ]
    assert pipeline.main(argv, spark=spark) == 0
    table = read_output(str(tmp_path / "hybrid")).to_pylist()
    assert {r["item_id"] for r in table} == set(ids) and len(table) == 3 * len(ids)
    assert all(r["item_id"] != r["neighbour_id"] for r in table)
    assert {r["source"] for r in table} <= set(blend.SOURCES)
    summary = output_summary(str(tmp_path / "hybrid"))
    warm = {r["item_id"] for r in rows}
    assert summary["warm_items"] == len(warm) and summary["cold_items"] == len(ids) - len(warm) >= 3
    # The cold items' lists come from their pictures and predicted factors.
    assert all(r["source"] == "visual" for r in table if r["item_id"] not in warm)
