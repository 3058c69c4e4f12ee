"""The envcheck job in the tests' session (local mode): the executors' Python is this one, and the
comparison names what differs. On a standalone cluster with the environment archive:
tests/e2e/test_cluster.py."""

from __future__ import annotations

from lookalike.config import load_config
from lookalike.jobs import envcheck


def test_envcheck_in_local_mode_finds_this_python_and_flags_differences(spark):
    summary = envcheck.run(spark, load_config(None))
    assert summary["ok"] and summary["executors"]
    # Local mode: the driver is the one executor, and it answered.
    assert summary["executors_registered"] == summary["executors_answered"] == 1
    assert all(e["code"] == summary["driver"]["code"] for e in summary["executors"])
    other = dict(summary["executors"][0], code="0" * 16, python="3.9.1")
    problems = envcheck.compare(summary["driver"], [other])
    assert len(problems) == 2 and "rebuild the archive" in problems[0] and "3.9.1" in problems[1]
