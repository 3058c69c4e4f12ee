"""The duplicates job (near-duplicate groups) against brute force: every pair scored in float64, the
groups from a union-find over the pairs; ids, sizes, representatives and scores compared exactly.
Also the numpy core alone, and a real-image case: a shipped photo and its altered copies with
EfficientNet-Lite0's ImageNet weights, through the pipeline job."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.support.paths import ROOT, SAMPLE_DIR
from lookalike import schemas
from lookalike.config import from_dict, load_config
from lookalike.duplicates.pairs import block_calls, pairs_above
from lookalike.duplicates.write import group_id
from lookalike.errors import InputError
from lookalike.jobs import duplicates as job
from lookalike.neighbours.topk import normalise
from tests.support.tablekit import embeddings_table, write_table
from tests.support.neighbour_tables import make_ids, publish_embeddings

DIM = 48
THRESHOLD = 0.9


# --- the oracle --------------------------------------------------------------------------------

def brute_pairs(x: np.ndarray, threshold: float) -> dict:
    """{(i, j): score} for every pair i < j of valid rows with float32 cosine >= float32(threshold)."""
    unit, valid = normalise(x)
    wide = unit.astype(np.float64)
    scores = (wide @ wide.T).astype(np.float32)
    i, j = np.triu_indices(len(x), 1)
    keep = (scores[i, j] >= np.float32(threshold)) & valid[i] & valid[j]
    return {(int(a), int(b)): scores[a, b] for a, b in zip(i[keep], j[keep])}


def brute_groups(ids: list[str], x: np.ndarray, threshold: float) -> set:
    """The expected table as a set of (group_id, item_id, group_size, representative, max_score)."""
    pairs = brute_pairs(x, threshold)
    parent = list(range(len(ids)))

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    best: dict = {}
    for (a, b), score in pairs.items():
        parent[root(a)] = root(b)
        for v in (a, b):
            best[v] = max(best.get(v, -np.inf), score)
    members: dict = {}
    for v in best:
        members.setdefault(root(v), []).append(ids[v])
    rows = set()
    for group in members.values():
        representative = min(group)  # code point order = UTF-8 byte order = Spark's string order
        gid = hashlib.sha1(representative.encode()).hexdigest()[:16]
        rows |= {(gid, ids[v], len(group), representative, float(best[v])) for v in best
                 if ids[v] in group}
    return rows


def read_groups(path) -> set:
    return {tuple(r.values()) for r in pq.read_table(path).to_pylist()}


# --- the numpy core ----------------------------------------------------------------------------

def as_dict(rows, cols, scores) -> dict:
    assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows), "a pair reported twice"
    assert (rows < cols).all()
    return {(int(a), int(b)): s for a, b, s in zip(rows, cols, scores)}


@pytest.fixture(scope="module")
def clustered():
    """Vectors around a few centres (many scores near any threshold), with exact copies."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((6, 16))
    x = centres[rng.integers(0, 6, 240)] + 0.35 * rng.standard_normal((240, 16))
    x[[5, 77, 150]] = x[40] * np.float32(2)  # identical after normalising
    return x.astype(np.float32)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_pairs_above_equals_brute_force(clustered, threshold):
    unit, _ = normalise(clustered)
    want = brute_pairs(clustered, threshold)
    assert 20 < len(want) < len(clustered) ** 2 / 4
    assert as_dict(*pairs_above(unit, unit, threshold)) == want
    # Several sub-blocks of columns, one of them ragged.
    assert as_dict(*pairs_above(unit, unit, threshold, sub_block=37)) == want


def test_pairs_above_threshold_equal_to_a_score_keeps_that_pair(clustered):
    unit, _ = normalise(clustered)
    want = brute_pairs(clustered, 0.6)
    levels = sorted(set(want.values()))
    for score in levels[::len(levels) // 8]:
        at = as_dict(*pairs_above(unit, unit, float(score)))
        assert at == {p: s for p, s in want.items() if s >= score}
        above = as_dict(*pairs_above(unit, unit, float(np.nextafter(score, np.float32(2)))))
        assert above == {p: s for p, s in want.items() if s > score}
    # Copies of one vector score the same, exactly: a threshold at that score keeps them all.
    copies = as_dict(*pairs_above(unit, unit, float(want[(5, 40)])))
    assert {(5, 40), (5, 77), (5, 150), (40, 77), (40, 150), (77, 150)} <= set(copies)


@pytest.mark.parametrize("queries,candidates", [((0, 100), (100, 240)), ((100, 240), (0, 100)),
                                                ((30, 130), (60, 200)), ((60, 200), (30, 130))])
def test_pairs_above_on_ranges_reports_each_pair_of_the_ranges_once(clustered, queries, candidates):
    unit, _ = normalise(clustered)
    (qa, qb), (ca, cb) = queries, candidates
    got = as_dict(*pairs_above(unit[qa:qb], unit[ca:cb], 0.7, query_offset=qa, candidate_offset=ca))
    inside = lambda v, r: r[0] <= v < r[1]  # noqa: E731
    want = {(a, b): s for (a, b), s in brute_pairs(clustered, 0.7).items()
            if (inside(a, queries) and inside(b, candidates)) or (inside(b, queries) and inside(a, candidates))}
    assert got == want and want


@pytest.mark.parametrize("chunk", [240, 37, 16])
def test_the_spark_tasks_calls_score_every_pair_once(clustered, chunk):
    """What the tasks do, without Spark: every block of every partition against every broadcast
    chunk (chunk edges inside blocks and partitions included), through ``block_calls``."""
    unit, _ = normalise(clustered)
    bounds = [0, 50, 90, 170, 171, 240]
    found: dict = {}
    for lo in range(0, 240, chunk):
        hi = min(lo + chunk, 240)
        for p in range(len(bounds) - 1):
            for start in range(bounds[p], bounds[p + 1], 16):
                stop = min(start + 16, bounds[p + 1])
                for rows, a, b in block_calls(bounds, p, start, stop - start, lo, hi):
                    got = as_dict(*pairs_above(unit[start:start + rows], unit[a:b], 0.7,
                                               query_offset=start, candidate_offset=a))
                    assert not set(got) & set(found)
                    found.update(got)
    assert found == brute_pairs(clustered, 0.7)


# --- the job on planted groups -----------------------------------------------------------------

def planted(n: int = 400, seed: int = 1) -> tuple[np.ndarray, dict]:
    """Random vectors (cosines about N(0, 1/48): far below THRESHOLD) with planted groups at random
    positions of the id order; returns the vectors and the planted rows by kind."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM))
    free = iter(rng.permutation(n).tolist())
    kinds: dict = {}

    def plant(kind, vectors):
        rows = [next(free) for _ in vectors]
        x[rows] = vectors
        kinds.setdefault(kind, []).append(rows)

    def near(count, noise=1e-3):
        base = rng.standard_normal(DIM)
        return [base * rng.uniform(0.5, 3) + noise * rng.standard_normal(DIM) for _ in range(count)]

    plant("spread", near(12))  # a dozen members over every chunk and partition
    for _ in range(6):
        plant("pair", near(2))
    for _ in range(3):
        plant("triple", near(3))
    e1, e2 = np.linalg.qr(rng.standard_normal((DIM, 2)))[0].T
    step = np.arccos(0.95)  # neighbours at 0.95, every second one at cos(2 step) = 0.805
    plant("chain", [np.cos(k * step) * e1 + np.sin(k * step) * e2 for k in range(7)])
    base = rng.standard_normal(DIM)
    plant("copies", [base * 2.0 ** k for k in range(3)])  # identical once normalised
    plant("invalid", [np.zeros(DIM), np.full(DIM, np.nan)])
    # Near-duplicates of the spread group, but unusable: left out, and no member of anything.
    broken = x[kinds["spread"][0][0]].copy()
    broken[3] = np.inf
    plant("invalid", [broken])
    return x.astype(np.float32), kinds


@pytest.fixture(scope="module")
def planted_table(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("duplicates")
    ids = make_ids(400)  # shuffled, mixed length, non-ASCII: Spark's string order and Python's agree
    x, kinds = planted()
    return tmp, ids, x, kinds, publish_embeddings(spark, str(tmp / "embeddings"), ids, x, "400-planted")


def config(out, embeddings: str, **duplicates):
    return from_dict({"output": {"embeddings": embeddings, "duplicates": str(out / "duplicates")},
                      "duplicates": {"min_score": THRESHOLD, **duplicates}})


@pytest.fixture(scope="module")
def chunked_run(spark, planted_table):
    tmp, _, _, _, embeddings = planted_table
    out = tmp / "chunked"
    # 0.025 MB / (4 * 48 + 64) bytes per item -> 102 items per broadcast chunk -> 4 chunks.
    summary = job.run(spark, config(out, embeddings, broadcast_max_mb=0.025, partitions=5, block_rows=16))
    return summary, out / "duplicates"


def test_groups_equal_the_connected_components_of_brute_force(planted_table, chunked_run):
    _, ids, x, kinds, _ = planted_table
    summary, path = chunked_run
    want = brute_groups(ids, x, THRESHOLD)
    got = read_groups(path)
    assert got == want
    # The planted structure is what the oracle found: the spread group whole, the chain as one
    # group although its ends are far apart, pairs and triples, no random vector in any group.
    by_item = {row[1]: row for row in got}
    for kind, size in (("spread", 12), ("pair", 2), ("triple", 3), ("chain", 7), ("copies", 3)):
        for rows in kinds[kind]:
            members = {ids[r] for r in rows}
            assert {by_item[i][0] for i in members} == {group_id(min(members))}
            assert {by_item[i][2] for i in members} == {size} and {by_item[i][3] for i in members} == {min(members)}
    chain = kinds["chain"][0]
    unit, _ = normalise(x)
    assert float(unit[chain[0]] @ unit[chain[2]]) < THRESHOLD <= float(unit[chain[0]] @ unit[chain[1]])
    planted_items = {ids[r] for k, groups in kinds.items() if k != "invalid" for rows in groups for r in rows}
    assert set(by_item) == planted_items
    assert summary["chunks"] == 4 and summary["partitions"] == 5
    assert summary["pairs"] == len(brute_pairs(x, THRESHOLD))
    assert summary["groups"] == 1 + 6 + 3 + 1 + 1 and summary["items_in_groups"] == len(planted_items)
    assert summary["largest_group"] == 12 and summary["min_score"] == THRESHOLD
    assert summary["invalid"] == 3 and summary["items"] == 400 and summary["component_rounds"] >= 2
    copies = kinds["copies"][0]
    assert all(by_item[ids[r]][4] == pytest.approx(1.0, abs=1e-6) for r in copies)


def test_table_schema_files_and_summary(chunked_run):
    summary, path = chunked_run
    files = sorted(p for p in path.iterdir() if p.name.endswith(".parquet"))
    assert len(files) == summary["files"] >= 1
    table = pq.read_table(files[0])
    assert table.schema.equals(schemas.arrow_schema(schemas.DUPLICATES), check_metadata=False)
    ids = [r for f in files for r in pq.read_table(f, columns=["item_id"]).column(0).to_pylist()]
    assert ids == sorted(ids)
    stored = (path / "_lookalike_summary.json").read_text()
    for key in ("job", "run_id", "ok", "items", "pairs", "groups", "items_in_groups", "largest_group",
                "min_score", "seconds", "inputs"):
        assert f'"{key}"' in stored and key in summary


@pytest.mark.heavy  # CI's compat run leaves it out (pytest.ini)
def test_one_chunk_rerun_is_identical_then_skipped_and_a_new_threshold_is_not(spark, planted_table, chunked_run):
    tmp, ids, x, _, embeddings = planted_table
    out = tmp / "one-chunk"
    first = job.run(spark, config(out, embeddings))
    assert first["chunks"] == 1
    # Whatever the chunking and partitioning: the same table, group ids included.
    order = [("item_id", "ascending")]
    assert pq.read_table(out / "duplicates").sort_by(order).equals(pq.read_table(chunked_run[1]).sort_by(order))
    again = job.run(spark, config(out, embeddings, broadcast_max_mb=1, partitions=3))  # the same answer
    assert again["skipped"] is True and again["unchanged_since"] == first["run_id"]
    stricter = job.run(spark, config(out, embeddings, min_score=0.99))
    assert not stricter.get("skipped") and stricter["groups"] < first["groups"]
    assert read_groups(out / "duplicates") == brute_groups(ids, x, 0.99)


def test_no_pair_above_the_threshold_writes_an_empty_table(spark, tmp_path):
    ids = make_ids(50, seed=2)
    x = np.random.default_rng(2).standard_normal((50, DIM)).astype(np.float32)
    embeddings = write_table(embeddings_table(ids, [f"file:///x/{i}.jpg" for i in ids], x), tmp_path / "embeddings")
    summary = job.run(spark, config(tmp_path, embeddings))
    assert summary["pairs"] == summary["groups"] == summary["largest_group"] == 0
    table = pq.read_table(tmp_path / "duplicates")
    assert table.num_rows == 0 and table.schema.equals(schemas.arrow_schema(schemas.DUPLICATES), check_metadata=False)


def test_missing_embeddings_is_a_clear_error(spark, tmp_path):
    with pytest.raises(InputError, match="cannot read the embeddings table at .*nowhere.*run the embed job first"):
        job.run(spark, config(tmp_path, str(tmp_path / "nowhere")))
    assert not (tmp_path / "duplicates").exists()


# --- real photos, real weights, through the pipeline -------------------------------------------

def _threshold_bench():
    """bench/duplicates_threshold.py, whose altered copies measured the default min_score."""
    spec = importlib.util.spec_from_file_location("duplicates_threshold", ROOT / "bench" / "duplicates_threshold.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # embeds 14 photos with EfficientNet-Lite0 in a Spark worker
def test_a_photo_and_its_altered_copies_form_one_group_through_the_pipeline(spark, tmp_path):
    from lookalike.jobs import pipeline

    bench = _threshold_bench()
    photos = sorted(SAMPLE_DIR.rglob("*.jpg"))
    source = photos[0]
    others = [p for p in photos[1::6] if p != source][:10]
    images = tmp_path / "images"
    for path in [source, *others]:
        target = images / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    original = f"{source.parent.name}/{source.stem}"
    # Slightly cropped: 2% a side. A 5% crop costs as much similarity as a different garment has
    # (docs/duplicates.md, "Choosing min_score"), so it is not a near-duplicate at the default.
    kinds = ("resized", "jpeg60", "cropped2")
    for kind in kinds:
        (images / f"{original}-{kind}.jpg").write_bytes(bench.altered(source.read_bytes(), kind))
    out = tmp_path / "out"
    cfg = load_config(None, [
        f"input.uri={images}", "model.name=efficientnet_lite0", "model.weights=imagenet",
        "model.precision=float32", "model.runtime=keras", f"model.cache_dir={tmp_path / 'cache'}",
        "neighbours.k=5", "duplicates.enabled=true", f"output.embeddings={out}/embeddings",
        f"output.errors={out}/errors", f"output.neighbours={out}/neighbours", f"output.duplicates={out}/duplicates"])
    summary = pipeline.run(spark, cfg)
    assert summary["ok"] and summary["embed"]["embedded"] == 14
    grouped = summary["duplicates"]
    assert grouped["min_score"] == cfg.duplicates.min_score and grouped["groups"] == 1
    members = {f"{original}-{kind}" for kind in kinds} | {original}
    assert {(row[1], row[2], row[3]) for row in read_groups(out / "duplicates")} == \
        {(item, 4, original) for item in members}
