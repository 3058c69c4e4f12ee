"""Iceberg tables in a real SQLite catalog (lib/lookalike/iceberg/): one snapshot per commit, the
previous one readable, the run's properties on the snapshot, locations lookalike refuses, races
between two writers, retention by time. No Spark: the data files are written with pyarrow, as
Spark tasks write them through the storage layer."""

from __future__ import annotations

import datetime as dt
import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.errors import ConfigError, OutputError, TransientError
from lookalike.iceberg import commit, retention
from lookalike.iceberg.catalogs import CatalogSpec, open_catalog

SCHEMA = pa.schema([pa.field("item_id", pa.string(), nullable=False), pa.field("score", pa.float32())])


def write_run(location, run: str, values: dict[str, float], parts: int = 2) -> list[str]:
    """Files of one run, under data/<run>/, the way tasks write them."""
    folder = os.path.join(str(location), "data", run)
    os.makedirs(folder, exist_ok=True)
    items = sorted(values)
    paths = []
    for part in range(parts):
        chunk = items[part::parts]
        path = os.path.join(folder, f"part-{part:05d}.parquet")
        pq.write_table(pa.table({"item_id": chunk, "score": [values[i] for i in chunk]}, schema=SCHEMA), path)
        paths.append("file://" + path)
    return paths


@pytest.fixture
def spec(tmp_path) -> CatalogSpec:
    return CatalogSpec(type="sql", uri=str(tmp_path / "catalog" / "lookalike.db"))


def open_table(spec, location, name="neighbours"):
    return commit.open_table(open_catalog(spec), spec, f"output.{name}", f"lookalike.{name}", str(location), SCHEMA)


def read(table, snapshot_id=None) -> dict:
    rows = table.scan(snapshot_id=snapshot_id).to_arrow().to_pylist()
    return {r["item_id"]: r["score"] for r in rows}


def test_each_commit_is_one_snapshot_replacing_the_table_and_the_previous_stays_readable(spec, tmp_path):
    location = tmp_path / "tables" / "neighbours"
    table = open_table(spec, location)
    first = commit.replace_files(
        table, spec, write_run(location, "run-1", {"a": 1.0, "b": 2.0}), {"lookalike.run_id": "run-1"}
    )
    second = commit.replace_files(
        table, spec, write_run(location, "run-2", {"a": 5.0, "c": 3.0}), {"lookalike.run_id": "run-2", "inputs": "x"}
    )
    # A fresh catalog reads the table by name: the second run's rows only.
    again = open_catalog(spec).load_table("lookalike.neighbours")
    assert read(again) == {"a": 5.0, "c": 3.0}
    assert read(again, first) == {"a": 1.0, "b": 2.0}  # time travel to the previous run
    snapshots = again.snapshots()
    assert [s.snapshot_id for s in snapshots] == [first, second]  # one snapshot per commit, no empty one between
    props = snapshots[-1].summary.additional_properties
    assert props["lookalike.run_id"] == "run-2" and props["inputs"] == "x"
    assert again.format_version == 2 and again.properties["lookalike.table"] == "true"
    assert commit.current_files(again) == sorted(write_run(location, "run-2", {"a": 5.0, "c": 3.0}))


def test_a_location_holding_anything_else_is_refused_and_left_intact(spec, tmp_path):
    folder = tmp_path / "my-folder"
    (folder / ".git").mkdir(parents=True)
    (folder / "catalog.parquet").write_bytes(b"mine")
    (folder / "_NOTES").write_text("notes")
    before = sorted((p.relative_to(folder), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))
    for _ in range(2):
        with pytest.raises(OutputError) as refused:
            open_table(spec, folder)
        assert str(refused.value).startswith(f"output.neighbours: file://{folder} holds files lookalike did not write")
        assert ".git/" in str(refused.value) and "catalog.parquet" in str(refused.value)
    after = sorted((p.relative_to(folder), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))
    assert after == before and not open_catalog(spec).table_exists("lookalike.neighbours")
    # The table's own location with a stranger's file in it is refused too, before any commit.
    location = tmp_path / "t"
    table = open_table(spec, location)
    commit.replace_files(table, spec, write_run(location, "run-1", {"a": 1.0}), {})
    (location / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds its own files lookalike did not write as this table .e.g. notes.txt"):
        open_table(spec, location)


def test_a_catalog_entry_at_another_location_is_a_config_error_naming_both(spec, tmp_path):
    open_table(spec, tmp_path / "a")
    with pytest.raises(ConfigError) as refused:
        open_table(spec, tmp_path / "b")
    message = str(refused.value)
    assert f"is at file://{tmp_path}/a, not at file://{tmp_path}/b" in message and "output.namespace" in message


def test_a_lost_race_is_retried_while_the_input_is_unchanged_and_refused_once_it_changed(spec, tmp_path):
    location = tmp_path / "t"
    table = open_table(spec, location)
    commit.replace_files(table, spec, write_run(location, "run-0", {"a": 0.0}), {})
    # Two runs load the table at the same snapshot; the other one commits first.
    mine = open_catalog(spec).load_table("lookalike.neighbours")
    other = open_catalog(spec).load_table("lookalike.neighbours")
    commit.replace_files(other, spec, write_run(location, "run-other", {"b": 1.0}), {"lookalike.run_id": "other"})
    with pytest.raises(commit.CommitConflictError) as lost:
        commit.replace_files(mine, spec, write_run(location, "run-mine", {"c": 2.0}), {}, still_valid=lambda: False)
    assert lost.value.exit_code == 75 and "nothing was committed" in str(lost.value)
    assert read(open_catalog(spec).load_table("lookalike.neighbours")) == {"b": 1.0}
    # Same input: the retry commits against the winner's snapshot and replaces it whole.
    stale = open_catalog(spec).load_table("lookalike.neighbours")
    commit.replace_files(other, spec, write_run(location, "run-other2", {"d": 3.0}), {})
    commit.replace_files(stale, spec, write_run(location, "run-mine2", {"e": 4.0}), {"lookalike.run_id": "mine"})
    final = open_catalog(spec).load_table("lookalike.neighbours")
    assert (
        read(final) == {"e": 4.0}
        and final.current_snapshot().summary.additional_properties["lookalike.run_id"] == "mine"
    )


def test_two_writers_at_once_leave_one_consistent_snapshot(spec, tmp_path):
    location = tmp_path / "t"
    open_table(spec, location)
    runs = {f"run-{i}": {f"item-{i}-{j}": float(i) for j in range(5)} for i in range(4)}
    files = {run: write_run(location, run, values) for run, values in runs.items()}
    failures = []

    def writer(run):
        try:
            table = open_catalog(spec).load_table("lookalike.neighbours")
            commit.replace_files(table, spec, files[run], {"lookalike.run_id": run})
        except Exception as exc:  # a writer that gave up must say so as a transient error
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(f, TransientError) for f in failures), failures
    final = open_catalog(spec).load_table("lookalike.neighbours")
    winner = final.current_snapshot().summary.additional_properties["lookalike.run_id"]
    assert read(final) == runs[winner]  # exactly one run's rows, never a mix


def test_retention_expires_old_snapshots_and_deletes_only_files_no_kept_snapshot_needs(spec, tmp_path):
    location = tmp_path / "t"
    table = open_table(spec, location)
    ids = [
        commit.replace_files(table, spec, write_run(location, f"run-{i}", {"a": float(i), f"x{i}": 1.0}), {})
        for i in range(3)
    ]
    stranger = location / "data" / "not-ours.txt"  # under data/, but no snapshot references it
    stranger.write_text("x")
    snapshot_time = {s.snapshot_id: s.timestamp_ms for s in table.snapshots()}
    # "now" such that the first two snapshots are older than 7 days and the last is not.
    now = dt.datetime.fromtimestamp(snapshot_time[ids[2]] / 1000, dt.timezone.utc) + dt.timedelta(days=7)
    now -= dt.timedelta(milliseconds=(snapshot_time[ids[2]] - snapshot_time[ids[1]]) / 2)
    done = retention.expire(table, keep_days=7, now=now)
    if not retention.can_expire(table):  # pyiceberg 0.8.1 (the Spark 3.5 environment): everything is kept
        assert done == {"expired_snapshots": 0, "deleted_files": 0} and len(table.snapshots()) == 3
        kept = set().union(*(retention.referenced_files(table, snapshot) for snapshot in table.snapshots()))
        assert len(kept) > 3 and all(os.path.exists(p[len("file://") :]) for p in kept)
        assert read(open_catalog(spec).load_table("lookalike.neighbours"), ids[0]) == {"a": 0.0, "x0": 1.0}
        return
    assert done["expired_snapshots"] == (2 if snapshot_time[ids[1]] < snapshot_time[ids[2]] else 1)
    again = open_catalog(spec).load_table("lookalike.neighbours")
    assert ids[2] in [s.snapshot_id for s in again.snapshots()] and ids[0] not in [
        s.snapshot_id for s in again.snapshots()
    ]
    assert read(again) == {"a": 2.0, "x2": 1.0}
    assert not (location / "data" / "run-0").exists() or not any((location / "data" / "run-0").iterdir())
    assert all(os.path.exists(p[len("file://") :]) for p in commit.current_files(again))
    assert stranger.read_text() == "x"  # never referenced by this table: never deleted
    # Everything the current snapshot needs is still there: a new reader reads it whole.
    assert read(open_catalog(spec).load_table("lookalike.neighbours")) == {"a": 2.0, "x2": 1.0}
    # The current snapshot is never expired, however old.
    far = now + dt.timedelta(days=365)
    retention.expire(again, keep_days=7, now=far)
    assert read(open_catalog(spec).load_table("lookalike.neighbours")) == {"a": 2.0, "x2": 1.0}
