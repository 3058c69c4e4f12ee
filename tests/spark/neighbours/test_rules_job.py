"""neighbours.same, exclude_same, attributes and hide_duplicates against a brute-force oracle of each
rule: exact ids and ranks, with groups of very unequal sizes (one larger than a broadcast chunk),
null and missing values, a candidates filter and k larger than a small group; exact and IVF.
The rule kernel without Spark: tests/unit/neighbours/test_rules.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.config import from_dict
from lookalike.errors import ConfigError, InputError
from lookalike.jobs import neighbours as job
from tests.support.brute_force import brute_force, random_vectors
from tests.support.neighbour_tables import assert_matches, embeddings_dir, make_ids, publish_embeddings, read_lists

N, DIM, K = 300, 8, 7
IDS = make_ids(N, seed=5)
# Exact ties (copies) so that the id tie-break is exercised inside groups too.
VECTORS = random_vectors(N, DIM, seed=5, duplicates=20)
SIZES = [150, 60, 30, 15, 8, 4, 2, 1]  # the rest (30) have no group: 10 null values, 20 no row


def _groups() -> dict:
    rng = np.random.default_rng(6)
    order = rng.permutation(N)
    value, at = {}, 0
    for g, size in enumerate(SIZES):
        for i in order[at : at + size]:
            value[IDS[i]] = f"cat-{g}"
        at += size
    for i in order[at : at + 10]:
        value[IDS[i]] = None
    return value  # the other 20 items have no attributes row


CATEGORY = _groups()
FAMILY = {item: f"fam-{j % 40}" for j, item in enumerate(IDS) if j % 5 and item in CATEGORY}  # some: no family


def oracle(k, same=None, exclude=None, hide=None, candidates=None, min_score=None) -> dict:
    """The rules applied to every pair: {item: [(neighbour, score), ...]}, best first."""

    def allow(item, other):
        if same is not None and (same.get(item) is None or same.get(other) != same[item]):
            return False
        for key in (exclude, hide):
            if key is not None and key.get(item) is not None and key.get(other) == key[item]:
                return False
        return True

    out = {}
    for item, ranked in brute_force(IDS, VECTORS, N, candidates, min_score, allow).items():
        best, seen = [], set()
        for other, score in ranked:
            group = None if hide is None else hide.get(other)
            if group is None or group not in seen:
                seen.add(group)
                best.append((other, score))
        out[item] = best[:k]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("groups")
    rows = [
        {"item_id": i, "category": CATEGORY[i], "family": FAMILY.get(i), "in_stock": j % 3 > 0}
        for j, i in enumerate(IDS)
        if i in CATEGORY
    ]
    rows.append({"item_id": "not-an-item", "category": "cat-0", "family": None, "in_stock": True})
    parquet = tmp / "attributes.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    csv = tmp / "attributes.csv"
    csv.write_text(
        "item_id,category,family\n"
        + "".join(f"{r['item_id']},{r['category'] or ''},{r['family'] or ''}\n" for r in rows),
        encoding="utf-8",
    )
    return tmp, embeddings_dir(tmp, IDS, VECTORS), str(parquet), str(csv)


def run(spark, tmp, embeddings, name, **neighbours):
    # Three partitions (auto would make eight of these 300 rows): still several partitions, each
    # group spread over them, at a third of the tasks per broadcast chunk.
    neighbours.setdefault("partitions", 3)
    out = tmp / name
    cfg = from_dict(
        {
            "output": {
                "embeddings": embeddings,
                "neighbours": str(out / "neighbours"),
                "duplicates": str(tmp / "duplicates"),
                "catalog": {"uri": str(out / "catalog.db")},
            },
            "neighbours": neighbours,
        }
    )
    return job.run(spark, cfg), read_lists(str(out / "neighbours"))


# --------------------------------------------------------------------------------------------
# The job: same


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_same_group_matches_brute_force_restricted_to_the_group(spark, data, method):
    tmp, embeddings, parquet, _ = data
    extra = {"nlist": 4, "nprobe": 4, "recall_sample": 20} if method == "ivf" else {}
    # 0.005 MB / (4 * 8 + 64) bytes -> 54 candidates per chunk: the largest group spans three.
    summary, got = run(
        spark,
        tmp,
        embeddings,
        f"same-{method}",
        k=K,
        attributes=parquet,
        same="category",
        broadcast_max_mb=0.005,
        block_rows=16,
        method=method,
        **extra,
    )
    assert_matches(got, oracle(K, same=CATEGORY))
    assert summary["items_without_group"] == 30 and summary["groups"] == len(SIZES)
    assert summary["attributes_unknown"] == 1 and summary["attributes_unknown_sample"] == ["not-an-item"]
    assert summary["items_without_attributes"] == 20
    if method == "exact":
        # Whole groups packed into chunks; the groups of 150 and 60 are cut into 3 and 2 pieces.
        assert summary["chunks"] == summary["group_packs"] + 3 >= 7 and summary["symmetric"] is False
    else:
        assert summary["recall_at_k"] == 1.0


def test_same_group_with_candidates_min_score_and_exclusion_from_csv(spark, data):
    tmp, embeddings, _, csv = data
    allowed = IDS[::2]
    summary, got = run(
        spark,
        tmp,
        embeddings,
        "same-csv",
        k=K,
        attributes=csv,
        same="category",
        exclude_same="family",
        candidates=allowed,
        min_score=-0.2,
        broadcast_max_mb=0.005,
    )
    # The CSV reads empty values as null, as the Parquet table's nulls.
    assert_matches(got, oracle(K, same=CATEGORY, exclude=FAMILY, candidates=allowed, min_score=-0.2))
    assert summary["items_without_group"] == 30


def test_same_group_when_no_candidate_has_a_group_gives_an_empty_readable_table(spark, data):
    tmp, embeddings, parquet, _ = data
    ungrouped = [item for item in IDS if CATEGORY.get(item) is None]  # 30: null value or no row
    # 0.001 MB -> 10 candidates per chunk: more candidates than one chunk, so chunks are packed by
    # group, and there is no group to pack.
    summary, got = run(
        spark,
        tmp,
        embeddings,
        "same-no-group",
        k=K,
        attributes=parquet,
        same="category",
        candidates=ungrouped,
        broadcast_max_mb=0.001,
    )
    assert got == {} and summary["rows"] == 0 and summary["group_packs"] == summary["chunks"] == 0
    assert summary["items_without_neighbours"] == summary["queries"] == N


# --------------------------------------------------------------------------------------------
# exclude_same


@pytest.mark.parametrize("method,chunk_mb", [("exact", 0.005), ("exact", 256), ("ivf", 256)])
def test_exclude_same_matches_brute_force_and_keeps_k(spark, data, method, chunk_mb):
    tmp, embeddings, parquet, _ = data
    extra = {"nlist": 3, "nprobe": 3, "recall_sample": 0} if method == "ivf" else {}
    summary, got = run(
        spark,
        tmp,
        embeddings,
        f"exclude-{method}-{chunk_mb}",
        k=K,
        attributes=parquet,
        exclude_same="family",
        broadcast_max_mb=chunk_mb,
        method=method,
        **extra,
    )
    assert_matches(got, oracle(K, exclude=FAMILY))
    assert all(len(rows) == K for rows in got.values())  # excluded inside the top-k, not afterwards
    assert summary["items_without_neighbours"] == 0


# --------------------------------------------------------------------------------------------
# hide_duplicates


def test_hide_duplicates_one_member_per_group(spark, data):
    tmp, embeddings, _, _ = data
    # Near-duplicate groups as the duplicates job writes them, with members spread over chunks.
    rng = np.random.default_rng(8)
    members = rng.permutation(N)[:90]
    groups = {IDS[i]: f"g{j % 25}" for j, i in enumerate(members)}
    sizes = {g: list(groups.values()).count(g) for g in set(groups.values())}
    table = pa.Table.from_pylist(
        [
            {"group_id": g, "item_id": i, "group_size": sizes[g], "representative": "-", "max_score": 1.0}
            for i, g in sorted(groups.items())
        ]
    )
    (tmp / "duplicates").mkdir(exist_ok=True)
    pq.write_table(table, tmp / "duplicates" / "part-00000.parquet")
    summary, got = run(spark, tmp, embeddings, "hide", k=K, hide_duplicates=True, broadcast_max_mb=0.005)
    assert_matches(got, oracle(K, hide=groups))
    for item, rows in got.items():
        seen = [groups[n] for _, n, _ in rows if n in groups]
        assert len(seen) == len(set(seen)) and groups.get(item) not in seen
    assert summary["hide_duplicates"]["largest_group"] == max(sizes.values())


def test_hide_duplicates_without_the_table_says_how_to_make_it(spark, data, tmp_path):
    _, embeddings, _, _ = data
    cfg = from_dict(
        {
            "output": {
                "embeddings": embeddings,
                "neighbours": str(tmp_path / "n"),
                "duplicates": str(tmp_path / "missing"),
                "catalog": {"uri": str(tmp_path / "catalog.db")},
            },
            "neighbours": {"hide_duplicates": True},
        }
    )
    with pytest.raises(InputError, match="duplicates job|duplicates.enabled"):
        job.run(spark, cfg)


# --------------------------------------------------------------------------------------------
# attributes: errors


def test_missing_column_names_the_column_and_those_there_are(spark, data):
    tmp, embeddings, parquet, _ = data
    with pytest.raises(ConfigError, match="'colour'.*item_id, category, family, in_stock"):
        run(spark, tmp, embeddings, "missing", attributes=parquet, same="colour")


def test_duplicate_attribute_ids_are_an_input_error(spark, data, tmp_path):
    _, embeddings, _, _ = data
    path = tmp_path / "twice.csv"
    path.write_text(f"item_id,category\n{IDS[0]},a\n{IDS[0]},b\n{IDS[1]},a\n", encoding="utf-8")
    with pytest.raises(InputError, match="1 item ids on more than one row.*" + IDS[0]):
        run(spark, tmp_path, embeddings, "twice", attributes=str(path), same="category")


def test_a_changed_attributes_table_recomputes_an_unchanged_one_skips(spark, tmp_path):
    # Published, so that the embeddings have the content id the unchanged-input check compares.
    embeddings = publish_embeddings(spark, str(tmp_path / "embeddings"), IDS, VECTORS, "content-1")
    path = tmp_path / "attributes.csv"
    path.write_text(
        "item_id,category\n" + "".join(f"{i},{CATEGORY[i] or ''}\n" for i in IDS if i in CATEGORY), encoding="utf-8"
    )
    first, _ = run(spark, tmp_path, embeddings, "skip", k=3, attributes=str(path), same="category")
    again, _ = run(spark, tmp_path, embeddings, "skip", k=3, attributes=str(path), same="category")
    assert again.get("skipped") is True and "attributes" in first["inputs"]
    path.write_text("item_id,category\n" + "".join(f"{i},one\n" for i in IDS), encoding="utf-8")
    changed, got = run(spark, tmp_path, embeddings, "skip", k=3, attributes=str(path), same="category")
    assert not changed.get("skipped") and changed["items_without_group"] == 0
    assert_matches(got, oracle(3, same={i: "one" for i in IDS}))
