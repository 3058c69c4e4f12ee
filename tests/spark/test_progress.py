"""The progress watcher (lookalike/progress.py) in the tests' session: it reports a Spark job's
tasks as items, and leaves the caller's job group and description as they were."""

from __future__ import annotations

import logging

from lookalike.progress import Progress, StageWatcher


def test_the_watcher_reports_progress_and_restores_the_callers_job_group(spark, caplog):
    caplog.set_level(logging.INFO, logger="lookalike.test")
    sc = spark.sparkContext
    sc.setJobGroup("callers-group", "the caller's own description")
    try:
        progress = Progress(logging.getLogger("lookalike.test"), "probe", 8, "items", every=0)
        with StageWatcher(spark, "lookalike-probe", progress, lambda done, total: done, interval=0.05):
            assert sc.getLocalProperty("spark.jobGroup.id") == "lookalike-probe"
            sc.parallelize(range(8), 8).map(lambda x: __import__("time").sleep(0.2) or x).collect()
        assert [r for r in caplog.records if r.name == "lookalike.test"]  # it did report
        # Issue 24: the group stayed lookalike's after the stage, for every later job of the caller.
        assert sc.getLocalProperty("spark.jobGroup.id") == "callers-group"
        assert sc.getLocalProperty("spark.job.description") == "the caller's own description"
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
        sc.setLocalProperty("spark.job.interruptOnCancel", None)
    with StageWatcher(spark, "lookalike-probe", progress, lambda done, total: done):
        pass
    assert sc.getLocalProperty("spark.jobGroup.id") is None  # none before, none after
