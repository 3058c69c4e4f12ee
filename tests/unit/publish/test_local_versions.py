"""Atomic publishing on a local file system (lib/lookalike/publish/): symlinked versions that
readers see whole, nothing published on a failure, the locks that keep a second writer out, and
the pointer layout on pyarrow's local file system (the HDFS code path). No Spark."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike import publish
from lookalike.errors import OutputError, OutputLockedError
from lookalike.io.hadoop import HadoopStorage
from lookalike.publish.layouts import PointerLayout
from tests.support.neighbours_versions import ROWS, publish_local, table_of, versions_dir, write_parts


def test_local_publish_is_a_symlink_switch_and_keeps_only_current_and_previous(tmp_path):
    out = str(tmp_path / "tables" / "t")
    for version in range(1, 4):
        publish_local(out, version)
    assert os.path.islink(out)
    assert pq.read_table(out).column("version").to_pylist() == [3] * ROWS  # readers can use the path itself
    assert publish.current_version(out) == "run-0003"
    assert publish.resolve(out) == os.path.join(versions_dir(out), "run-0003")
    assert publish.read_summary(out) == {"run_id": "run-0003", "version": 3}
    assert sorted(os.listdir(versions_dir(out))) == ["run-0002", "run-0003"]
    # Nothing but the output, its versions and no lock is left next to it.
    assert sorted(os.listdir(tmp_path / "tables")) == [".t.versions", "t"]
    # Relative link: the tree can be moved or mounted elsewhere.
    assert not os.path.isabs(os.readlink(out))


def test_readers_see_one_complete_version_while_versions_are_published(tmp_path):
    out = str(tmp_path / "t")
    publish_local(out, 0)
    stop = threading.Event()
    seen, vanished, problems = [], [], []

    def reader():
        while not stop.is_set():
            try:
                table = pq.read_table(publish.resolve(out))
            except (OSError, pa.ArrowInvalid) as exc:
                vanished.append(exc)  # two publishes during one read: the version was collected
                continue
            versions = set(table.column("version").to_pylist())
            if table.num_rows != ROWS or len(versions) != 1:
                problems.append((table.num_rows, sorted(versions)))
            seen.extend(versions)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, 31):
            publish_local(out, version)
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert problems == []
    assert len(set(seen)) > 3, "the readers should have seen several versions"
    assert len(vanished) < len(seen)
    assert pq.read_table(out).column("version").to_pylist() == [30] * ROWS


def test_an_exception_before_commit_publishes_nothing_and_removes_the_staging(tmp_path):
    out = str(tmp_path / "t")
    publish_local(out, 1)
    with pytest.raises(RuntimeError, match="injected"):
        with publish.OutputSet(None, {"t": out}, "run-0002") as outputs:
            write_parts(outputs.staging("t"), 2)
            raise RuntimeError("injected failure after the data was staged")
    assert pq.read_table(out).column("version").to_pylist() == [1] * ROWS
    assert os.listdir(versions_dir(out)) == ["run-0001"]
    assert not os.path.exists(tmp_path / ".t.lock")
    publish_local(out, 3)  # the lock was released
    assert pq.read_table(out).column("version").to_pylist() == [3] * ROWS


def test_a_second_writer_is_refused_with_the_owner_and_force_unlock_cannot_break_a_live_lock(tmp_path):
    out = str(tmp_path / "t")
    with publish.OutputSet(None, {"t": out}, "holder-run"):
        for force in (False, True):
            with pytest.raises(OutputLockedError) as info:
                publish_local(out, 1, force_unlock=force)
            message = str(info.value)
            assert "holder-run" in message and socket.gethostname() in message and str(os.getpid()) in message
            assert "still running on this host" in message
        assert "never removes the lock of a live process" in message
    publish_local(out, 1)  # released on exit


def _crashed_lock_holder(out: str) -> int:
    """A real process that takes the lock and dies without releasing it."""
    code = (
        "import os, sys; from lookalike import publish; "
        "s = publish.OutputSet(None, {'t': sys.argv[1]}, 'crashed-run'); s.__enter__(); os._exit(9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    with open(os.path.join(os.path.dirname(out), ".t.lock"), encoding="utf-8") as handle:
        return json.load(handle)["pid"]


def test_a_stale_lock_of_a_dead_process_is_explained_and_removed_only_with_force_unlock(tmp_path):
    out = str(tmp_path / "t")
    publish_local(out, 1)
    pid = _crashed_lock_holder(out)
    with pytest.raises(OutputLockedError, match=rf"pid {pid} no longer runs on this host.*output.force_unlock=true"):
        publish_local(out, 2)
    assert pq.read_table(out).column("version").to_pylist() == [1] * ROWS
    publish_local(out, 2, force_unlock=True)
    assert pq.read_table(out).column("version").to_pylist() == [2] * ROWS
    assert not os.path.exists(tmp_path / ".t.lock")


def test_a_lock_from_another_host_names_its_age_and_yields_to_force_unlock(tmp_path):
    out = str(tmp_path / "t")
    old = time.time() - 30 * 3600
    (tmp_path / ".t.lock").write_text(
        json.dumps(
            {
                "host": "emr-core-7",
                "pid": 4242,
                "run_id": "yesterday",
                "started": old,
                "started_at": "2020-01-01T00:00:00+00:00",
            }
        )
    )
    with pytest.raises(
        OutputLockedError, match=r"run yesterday \(host emr-core-7, pid 4242\).*30\.0 h ago.*probably stale"
    ):
        publish_local(out, 1)
    publish_local(out, 1, force_unlock=True)
    assert publish.current_version(out) == "run-0001"


def test_pointer_layout_on_a_pyarrow_file_system_the_hdfs_code_path(tmp_path):
    """hdfs:// goes through pyarrow's FileSystem API; its local implementation runs the same code."""
    uri = f"file://{tmp_path}/out/emb"
    location = PointerLayout(uri, HadoopStorage())
    for version in (1, 2, 3):
        assert location.lock_create("{}") and not location.lock_create("{}")
        write_parts(location.prepare_staging(f"run-{version}")[len("file://") :], version)
        assert location.staged(f"run-{version}")
        previous = location.switch(f"run-{version}")
        assert previous == (f"run-{version - 1}" if version > 1 else None)
        location.lock_delete()
    assert location.read_location() == f"file://{tmp_path}/out/.emb.versions/run-3"
    assert location.versions_list() == ["run-1", "run-2", "run-3"]
    location.remove_version("run-1")
    assert location.versions_list() == ["run-2", "run-3"]
    assert set(pq.read_table(location.read_location()[len("file://") :]).column("version").to_pylist()) == {3}
    assert sorted(os.listdir(tmp_path / "out" / "emb")) == ["_LATEST"]


def _tree(root) -> dict:
    """Every file under ``root`` with its bytes, and every directory: what 'intact' means."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))} | {
        ".": None
    }


def test_a_users_folder_given_as_an_output_is_refused_every_run_and_left_exactly_as_it_was(tmp_path):
    # What a new user tried (issue 23): their own project folder as output.neighbours.
    folder = tmp_path / "my-project"
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / ".env").write_text("TOKEN=mine\n")
    (folder / "_NOTES").write_text("notes\n")
    pq.write_table(table_of(7), folder / "catalog.parquet")  # a Parquet file, but not lookalike's
    before = _tree(folder)
    for _ in range(2):  # once moved it aside and the next run deleted it
        with pytest.raises(OutputError) as refused:
            publish_local(str(folder), 1)
        message = str(refused.value)
        assert message.startswith(f"output.t: output {folder} is a directory lookalike did not write")
        assert "it holds .env, .git, _NOTES ..." in message and "move the directory away" in message
        assert _tree(folder) == before
    # Nothing of lookalike's is left beside it either: no versions, no lock.
    assert sorted(os.listdir(tmp_path)) == ["my-project"]


@pytest.mark.parametrize(
    "contents",
    [
        {"part-00000.parquet": b"PAR1"},  # Spark's files, but no lookalike summary: someone else's table
        {"_lookalike_summary.json": b"{}", "part-00000.parquet": b"PAR1", "README": b"mine"},
        {},  # an empty folder someone made
    ],
)
def test_a_plain_directory_is_taken_over_only_when_it_is_a_lookalike_table(tmp_path, contents):
    folder = tmp_path / "out"
    folder.mkdir()
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    before = _tree(folder)
    with pytest.raises(OutputError, match="is a directory lookalike did not write"):
        publish_local(str(folder), 1)
    assert _tree(folder) == before and sorted(os.listdir(tmp_path)) == ["out"]
