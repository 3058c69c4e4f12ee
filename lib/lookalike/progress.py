"""Progress lines with counts, rate and ETA for long stages."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


def format_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Logs ``stage: done/total (pct) rate unit/s, ETA`` at most every ``every`` seconds."""

    def __init__(self, log: logging.Logger, stage: str, total: int, unit: str = "items", every: float = 10.0):
        self.log, self.stage, self.total, self.unit, self.every = log, stage, total, unit, every
        self.started = time.monotonic()
        self.last = 0.0

    def line(self, done: int) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = done / elapsed
        remaining = (self.total - done) / rate if rate > 0 else float("inf")
        pct = 100.0 * done / self.total if self.total else 100.0
        return (
            f"{self.stage}: {done}/{self.total} {self.unit} ({pct:.0f}%), "
            f"{rate:.1f} {self.unit}/s, ETA {format_eta(remaining)}"
        )

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            self.log.info(self.line(done))


class StageWatcher:
    """Reports the progress of the Spark job(s) running under a job group, from the driver.

    Counts completed tasks through the status tracker and converts them to items with
    ``items_per_task``; works on any cluster manager because it only asks the driver.
    """

    def __init__(
        self, spark, group: str, progress: Progress, items_per_task: Callable[[int, int], int], interval: float = 5.0
    ):
        self.sc = spark.sparkContext
        self.group, self.progress, self.items_per_task = group, progress, items_per_task
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        tracker = self.sc.statusTracker()
        while not self._stop.wait(self.interval):
            try:
                done = total = 0
                for job_id in tracker.getJobIdsForGroup(self.group):
                    job = tracker.getJobInfo(job_id)
                    for stage_id in job.stageIds if job else []:
                        stage = tracker.getStageInfo(stage_id)
                        if stage:
                            done += stage.numCompletedTasks
                            total += stage.numTasks
                if total:
                    self.progress.update(self.items_per_task(done, total))
            except Exception:  # progress must never break the job
                pass

    # What setJobGroup sets: the caller's values come back on exit (a library is a good guest).
    _GROUP_PROPERTIES = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")

    def __enter__(self) -> StageWatcher:
        self._saved = {key: self.sc.getLocalProperty(key) for key in self._GROUP_PROPERTIES}
        self.sc.setJobGroup(self.group, self.progress.stage)
        self._thread = threading.Thread(target=self._poll, daemon=True, name="lookalike-progress")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        for key, value in self._saved.items():
            self.sc.setLocalProperty(key, value)  # None removes it
