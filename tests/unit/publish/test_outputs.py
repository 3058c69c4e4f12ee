"""OutputSet: a run's tables committed as Iceberg snapshots in a real SQLite catalog (and Glue and
S3 over HTTP from moto), checked before any work, never touching what lookalike did not write.
Data files are written with pyarrow into the staging folder, as the jobs' tasks write them."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike import publish, schemas
from lookalike.config import OutputConfig, S3Config
from lookalike.errors import ConfigError, OutputError
from lookalike.iceberg import retention
from lookalike.iceberg.catalogs import open_catalog
from lookalike.io.current import HINT, current, static_table
from tests.support.outputs import read_output

SCHEMA = schemas.arrow_schema(schemas.NEIGHBOURS)


def rows(items: dict[str, float]) -> pa.Table:
    ids = sorted(items)
    return pa.table(
        {
            "item_id": ids,
            "rank": pa.array([1] * len(ids), pa.int32()),
            "neighbour_id": [f"n-{i}" for i in ids],
            "score": pa.array([items[i] for i in ids], pa.float32()),
        },
        schema=SCHEMA,
    )


def write_into(staging: str, table: pa.Table, s3: S3Config | None = None) -> None:
    if staging.startswith("s3://"):
        from lookalike.io import arrowfs

        filesystem, where = arrowfs.filesystem(f"{staging}/part-00000.parquet", s3)
        pq.write_table(table, where, filesystem=filesystem)
    else:
        pq.write_table(table, os.path.join(staging, "part-00000.parquet"))


def run(output: OutputConfig, run_id: str, items: dict[str, float], s3: S3Config | None = None) -> None:
    with publish.OutputSet(None, output, ["neighbours"], run_id, s3) as out:
        write_into(out.staging("neighbours"), rows(items), s3)
        out.commit({"neighbours": {"run_id": run_id, "items": len(items)}})


def run_id(days_ago: float = 0, tag: str = "0000aaaa") -> str:
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days_ago)
    return when.strftime("%Y%m%dT%H%M%SZ") + "-" + tag


@pytest.fixture
def output(tmp_path) -> OutputConfig:
    return OutputConfig(
        embeddings=str(tmp_path / "out" / "embeddings"), neighbours=str(tmp_path / "out" / "neighbours")
    )


def test_each_run_is_a_snapshot_readers_find_by_location_and_by_name_and_the_previous_stays(output, tmp_path):
    one, two = run_id(tag="00000001"), run_id(tag="00000002")
    run(output, one, {"a": 0.5, "b": 0.25})
    first = current(output.neighbours)
    run(output, two, {"c": 0.75})
    second = current(output.neighbours)
    assert first.format == second.format == "iceberg" and first.snapshot_id != second.snapshot_id
    assert read_output(output.neighbours).column("item_id").to_pylist() == ["c"]
    assert second.summary == {"run_id": two, "items": 1}
    # By name, in the SQLite catalog beside the outputs, as Spark or DuckDB would find it.
    spec = publish.catalog_spec(output)
    assert spec.uri == str(tmp_path / "out" / "catalog.db")
    table = open_catalog(spec).load_table("lookalike.neighbours")
    hint = open(os.path.join(output.neighbours, HINT)).read()
    assert table.metadata_location.endswith(f"/{hint}.metadata.json")  # DuckDB's iceberg_scan form
    assert table.scan().to_arrow().column("item_id").to_pylist() == ["c"]
    # Time travel to the previous snapshot (kept for output.keep_days).
    before = table.scan(snapshot_id=first.snapshot_id).to_arrow()
    assert sorted(before.column("item_id").to_pylist()) == ["a", "b"]
    assert table.current_snapshot().summary.additional_properties["lookalike.run-id"] == two
    # The location holds the table alone: its data and metadata folders.
    assert sorted(os.listdir(output.neighbours)) == ["data", "metadata"]


def test_a_folder_the_user_owns_is_refused_before_anything_and_left_exactly_as_it_was(output):
    folder = output.neighbours
    os.makedirs(os.path.join(folder, ".git"))
    for name in ("catalog.parquet", ".env", "_NOTES"):
        with open(os.path.join(folder, name), "w") as f:
            f.write(name)
    before = sorted((d, tuple(sorted(f))) for d, _, f in os.walk(folder))
    with pytest.raises(OutputError, match=r"output.neighbours: .*neighbours holds files lookalike did not write"):
        with publish.OutputSet(None, output, ["neighbours"], run_id()):
            raise AssertionError("the run must not start")
    assert sorted((d, tuple(sorted(f))) for d, _, f in os.walk(folder)) == before
    assert not open_catalog(publish.catalog_spec(output)).table_exists("lookalike.neighbours")


def test_a_run_that_fails_before_its_commit_leaves_the_table_as_it_was_and_no_files(output):
    one = run_id(tag="00000001")
    run(output, one, {"a": 0.5})
    before = current(output.neighbours)
    with pytest.raises(RuntimeError, match="the scoring failed"):
        with publish.OutputSet(None, output, ["neighbours"], run_id(tag="00000002")) as out:
            write_into(out.staging("neighbours"), rows({"z": 0.1}))
            raise RuntimeError("the scoring failed")
    assert current(output.neighbours) == before
    assert os.listdir(os.path.join(output.neighbours, "data")) == [one]


def test_what_a_killed_run_left_is_deleted_by_the_next_successful_run_once_it_is_old(output):
    run(output, run_id(tag="00000001"), {"a": 0.5})
    data = os.path.join(output.neighbours, "data")
    # kill -9 mid-run: staged files, no commit, nothing else left behind (no lock to clear).
    killed_long_ago, killed_just_now = run_id(days_ago=3, tag="0000dead"), run_id(tag="0000beef")
    for killed in (killed_long_ago, killed_just_now):
        os.makedirs(os.path.join(data, killed))
        write_into(os.path.join(data, killed), rows({"x": 0.9}))
    run(output, run_id(tag="00000002"), {"b": 0.5})
    assert read_output(output.neighbours).column("item_id").to_pylist() == ["b"]
    left = sorted(os.listdir(data))
    # The old orphan is gone; a young one may be a run still writing, so it stays.
    assert killed_long_ago not in left and killed_just_now in left
    assert retention.ORPHAN_AGE < dt.timedelta(days=3)


def test_an_earlier_lookalikes_table_is_read_then_carried_over_and_its_version_kept(output, tmp_path):
    # The layout earlier releases published: versions beside the output, a symbolic link to one.
    versions = tmp_path / "out" / ".neighbours.versions"
    old = versions / "20260101T000000Z-0ldrun00"
    old.mkdir(parents=True)
    pq.write_table(rows({"old": 0.5}), old / "part-00000.parquet")
    (old / "_lookalike_summary.json").write_text('{"run_id": "20260101T000000Z-0ldrun00"}')
    os.symlink(os.path.join(".neighbours.versions", old.name), output.neighbours)
    found = current(output.neighbours)
    assert found.format == "lookalike-versions" and found.version == old.name
    assert found.summary == {"run_id": old.name}
    assert read_output(output.neighbours).column("item_id").to_pylist() == ["old"]

    run(output, run_id(), {"new": 0.5})
    assert current(output.neighbours).format == "iceberg"
    assert read_output(output.neighbours).column("item_id").to_pylist() == ["new"]
    assert not os.path.islink(output.neighbours) and (old / "part-00000.parquet").exists()
    assert not os.path.lexists(tmp_path / "out" / ".neighbours.legacy")


def test_a_failed_first_run_leaves_the_earlier_table_readable(output, tmp_path):
    old = tmp_path / "out" / ".neighbours.versions" / "20260101T000000Z-0ldrun00"
    old.mkdir(parents=True)
    pq.write_table(rows({"old": 0.5}), old / "part-00000.parquet")
    os.symlink(os.path.join(".neighbours.versions", old.name), output.neighbours)
    with pytest.raises(RuntimeError):
        with publish.OutputSet(None, output, ["neighbours"], run_id()):
            raise RuntimeError("killed")
    assert read_output(output.neighbours).column("item_id").to_pylist() == ["old"]


def test_a_catalog_entry_of_the_name_at_another_location_is_refused_before_anything(output, tmp_path):
    run(output, run_id(), {"a": 0.5})
    moved = OutputConfig(
        embeddings=output.embeddings,
        neighbours=str(tmp_path / "elsewhere" / "neighbours"),
        catalog={"uri": str(tmp_path / "out" / "catalog.db")},
    )
    with pytest.raises(
        ConfigError, match=r"output.neighbours: the catalog's table lookalike.neighbours is at .*out/neighbours"
    ):
        with publish.OutputSet(None, moved, ["neighbours"], run_id()):
            raise AssertionError("the run must not start")
    assert not os.path.exists(tmp_path / "elsewhere")


def test_outputs_on_s3_need_a_catalog_every_run_can_reach():
    with pytest.raises(ConfigError, match=r"output.catalog.uri: outputs on S3 .*glue"):
        publish.catalog_spec(OutputConfig(embeddings="s3://b/e", errors="s3://b/r", neighbours="s3://b/n"))


def test_on_s3_with_glue_an_earlier_pointer_is_carried_over_and_readers_find_the_table(s3, bucket, s3_endpoint):
    s3_cfg = S3Config(endpoint_url=s3_endpoint)
    output = OutputConfig(
        embeddings=f"s3://{bucket}/shop/embeddings",
        neighbours=f"s3://{bucket}/shop/neighbours",
        errors=f"s3://{bucket}/shop/errors",
        catalog={"type": "glue", "endpoint_url": s3_endpoint, "region": "us-east-1"},
    )
    version = f"s3://{bucket}/shop/.neighbours.versions/20260101T000000Z-0ldrun00"
    write_into(version, rows({"old": 0.5}), s3_cfg)
    s3.put_object(Bucket=bucket, Key="shop/neighbours/_LATEST", Body=(version + "\n").encode())
    assert current(output.neighbours, s3_cfg).format == "lookalike-versions"

    run(output, run_id(), {"new": 0.5}, s3_cfg)
    found = current(output.neighbours, s3_cfg)
    assert found.format == "iceberg" and read_output(output.neighbours, s3=s3_cfg).column("item_id").to_pylist() == [
        "new"
    ]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="shop/")["Contents"]}
    assert "shop/neighbours/_LATEST" not in keys and "shop/.neighbours.legacy" not in keys
    assert "shop/.neighbours.versions/20260101T000000Z-0ldrun00/part-00000.parquet" in keys
    assert static_table(found.metadata, s3_cfg).scan().to_arrow().column("item_id").to_pylist() == ["new"]


def test_what_a_run_killed_before_the_first_commit_staged_does_not_block_the_next_run(output):
    killed = os.path.join(output.neighbours, "data", run_id(tag="0000dead"))
    os.makedirs(killed)
    write_into(killed, rows({"x": 0.9}))
    run(output, run_id(tag="00000001"), {"a": 0.5})
    assert read_output(output.neighbours).column("item_id").to_pylist() == ["a"]
    # But a folder of the same shape with anything else in it is not lookalike's.
    other = OutputConfig(embeddings=output.embeddings, neighbours=output.neighbours + "-2", namespace="other")
    os.makedirs(os.path.join(other.neighbours, "data", "exports"))
    write_into(os.path.join(other.neighbours, "data", "exports"), rows({"y": 0.1}))
    with pytest.raises(OutputError, match=r"data/exports/part-00000.parquet"):
        with publish.OutputSet(None, other, ["neighbours"], run_id()):
            raise AssertionError("the run must not start")


def test_a_point_lookup_reads_the_footer_of_the_one_file_the_manifests_allow(output, monkeypatch):
    # Issue 23: the tools plan a lookup through the table's metadata: files pruned by their item_id
    # bounds in the manifests, then row groups by the footers.
    from lookalike.io import tables

    with publish.OutputSet(None, output, ["neighbours"], run_id()) as out:
        for part in range(5):
            ids = {f"item-{part}-{i:03d}": 0.5 for i in range(20)}
            pq.write_table(rows(ids), os.path.join(out.staging("neighbours"), f"part-{part:05d}.parquet"))
        out.commit({"neighbours": {}})
    footers = []
    real = tables._read_footer
    monkeypatch.setattr(tables, "_read_footer", lambda fs, path: footers.append(path) or real(fs, path))
    table = tables.ParquetTable(output.neighbours)
    assert len(table.files) == 5 and len(table.id_bounds) == 5
    found = table.lookup("item_id", ["item-3-007"], ["item_id", "neighbour_id"])
    assert found.to_pylist() == [{"item_id": "item-3-007", "neighbour_id": "n-item-3-007"}]
    # The first file's (for the column names) and the one that holds the id: not all five.
    assert sorted(os.path.basename(p) for p in set(footers)) == ["part-00000.parquet", "part-00003.parquet"]
    # The same answer a full read gives (the oracle), for ids in, between and outside the files.
    every = read_output(output.neighbours).to_pylist()
    for wanted in (["item-0-000", "item-4-019"], ["item-2-5"], ["zzz", "aaa"]):
        got = tables.ParquetTable(output.neighbours).lookup("item_id", wanted, ["item_id", "neighbour_id"])
        assert got.to_pylist() == [
            {"item_id": r["item_id"], "neighbour_id": r["neighbour_id"]} for r in every if r["item_id"] in wanted
        ]
