"""``lookalike similar`` without Spark: a missing table, and a table of many row groups whose every
read is recorded (what makes a point lookup cheap). On a table the neighbours job wrote:
tests/spark/tools/test_query.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.support.procs import run_script
from tests.support.row_groups import bytes_read, ranked_table, record_reads, write_row_groups

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def similar(*args: str):
    return run_script([LOOKALIKE, "similar", *args])


def test_similar_missing_table_exits_2(tmp_path):
    result = similar("x", "--neighbours", str(tmp_path / "nothing-here"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nothing-here" in result.stderr


@pytest.mark.parametrize("kind", ["directory", "latin-1"])
def test_a_config_that_is_a_directory_or_not_utf8_is_one_line_and_exit_2(tmp_path, kind):
    # Issue 24: each was a traceback (IsADirectoryError, UnicodeDecodeError).
    config = tmp_path / "conf"
    if kind == "directory":
        config.mkdir()
    else:
        config.write_bytes("input:\n  uri: /data/caf\u00e9\n".encode("latin-1"))
    result = similar("x", "--neighbours", str(tmp_path / "t"), "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"config file {config}" in result.stderr
    assert ("is a directory" if kind == "directory" else "is not UTF-8") in result.stderr


# --- reading only what is shown: a table of many row groups, every read recorded ------------------


@pytest.fixture(scope="module")
def large_neighbours(tmp_path_factory):
    """200,000 items x k=5 in 4 files of 5,000-row (1,000-item) row groups: 200 row groups."""
    table = ranked_table(200_000, 5)
    path = write_row_groups(table, tmp_path_factory.mktemp("large") / "neighbours", files=4, rows_per_group=5000)
    return path, table


def test_similar_reads_one_row_group_and_matches_the_whole_table(large_neighbours, monkeypatch):
    import pyarrow.compute as pc

    from lookalike.tools.query import similar as lookup

    path, table = large_neighbours
    whole = pq.read_table(path)  # the brute-force answer: every row
    reads = record_reads(monkeypatch)
    for item in ["item-000000", "item-123456", "item-199999"]:
        reads.clear()
        got = lookup(path, item)
        want = sorted(whole.filter(pc.equal(whole.column("item_id"), item)).to_pylist(), key=lambda r: r["rank"])
        assert [(n["rank"], n["neighbour_id"]) for n in got] == [(r["rank"], r["neighbour_id"]) for r in want]
        np.testing.assert_allclose([n["score"] for n in got], [r["score"] for r in want], atol=1e-6)
        assert len(reads) == 1 and len(reads.groups()) == 1, reads  # of 200 row groups
        assert reads.columns() == {"item_id", "rank", "neighbour_id", "score"}
    assert [n["rank"] for n in lookup(path, "item-000042", k=2)] == [1, 2]


def test_similar_unknown_id_suggests_close_ids_from_one_row_group(large_neighbours, monkeypatch):
    from lookalike.errors import ItemNotFoundError
    from lookalike.tools.query import similar as lookup

    path, _ = large_neighbours
    reads = record_reads(monkeypatch)
    with pytest.raises(ItemNotFoundError, match=r"not in the neighbour table.*Similar ids: 'item-012345'"):
        lookup(path, "item-012345x")
    assert len(reads.groups()) <= 3 and reads.columns() <= {"item_id", "rank", "neighbour_id", "score"}
    reads.clear()
    with pytest.raises(ItemNotFoundError, match=r"Ids in this table look like 'item-199"):
        lookup(path, "~")  # sorts after every id: the last row group's ids
    assert len(reads.groups()) <= 3


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io to count bytes read")
def test_similar_reads_a_small_part_of_the_files(large_neighbours):
    from lookalike.tools.query import similar as lookup

    path, _ = large_neighbours
    table_bytes = sum(p.stat().st_size for p in Path(path).glob("*.parquet"))
    lookup(path, "item-000001")  # imports and first-use costs out of the way
    before = bytes_read()
    lookup(path, "item-015000")
    read = bytes_read() - before
    # Four footers (pyarrow reads at least 64 kB of each) and one row group of 200.
    assert read < table_bytes / 10, f"read {read} bytes of a {table_bytes}-byte table"


def test_control_characters_in_ids_are_escaped_on_the_terminal_and_exact_in_json(tmp_path, capsys):
    # Issue 24: an OSC sequence in a file name retitled the terminal through `lookalike similar`.
    import json

    import pyarrow as pa

    from lookalike.tools import cli

    evil = "shirt\x1b]0;pwned\x07\nrank 1"
    table = pa.table(
        {
            "item_id": ["a", "a"],
            "rank": pa.array([1, 2], pa.int32()),
            "neighbour_id": [evil, "b\x9bc"],
            "score": pa.array([0.9, 0.8], pa.float32()),
        }
    )
    (tmp_path / "t").mkdir()
    pq.write_table(table, tmp_path / "t" / "part-0.parquet")
    assert cli.main(["similar", "a", "--neighbours", str(tmp_path / "t")]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert "shirt\\x1b]0;pwned\\x07\\nrank 1" in shown and "b\\x9bc" in shown
    assert len(shown.strip().splitlines()) == 4  # title, header, two rows: no forged line
    assert cli.main(["similar", "a", "--neighbours", str(tmp_path / "t"), "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [n["neighbour_id"] for n in record["neighbours"]] == [evil, "b\x9bc"]  # exact


def test_log_lines_escape_control_characters_from_file_names():
    import logging

    from lookalike.jobs.common import _Redact

    record = logging.LogRecord("lookalike", logging.WARNING, __file__, 1, "cannot read %s", ("a\x1b[2Jb\nFAKE",), None)
    assert _Redact().filter(record) and record.getMessage() == "cannot read a\\x1b[2Jb\\nFAKE"


def test_tracebacks_in_log_lines_are_redacted_too():
    # Issue 24: redaction covered messages, not the traceback of log.exception.
    import logging

    from lookalike.jobs.common import _Redact

    secret = "Credential=AKIAABCDEFGHIJKLMNOP/20260101/us-east-1/s3/aws4_request"
    try:
        raise RuntimeError(f"server said: {secret}")
    except RuntimeError:
        import sys

        record = logging.LogRecord("lookalike", logging.ERROR, __file__, 1, "crashed", (), sys.exc_info())
    assert _Redact().filter(record)
    line = logging.Formatter("%(message)s").format(record)
    assert "RuntimeError: server said: Credential=***" in line and "AKIA" not in line
