"""Running a neighbours Spark action under a progress watcher: the stages' long collects report
the share of queries done (tasks finished out of the stage's tasks) while they run."""

from __future__ import annotations

import logging

from lookalike.progress import Progress, StageWatcher

log = logging.getLogger(__name__)


def collect(spark, run_id: str, stage: str, n_queries: int, frame) -> list[dict]:
    """Run ``frame`` under a progress watcher (tasks done -> share of queries done)."""
    progress = Progress(log, stage, n_queries, "queries")
    group = f"lookalike-neighbours-{run_id}-{stage.replace(' ', '-').replace('/', 'of')}"
    with StageWatcher(
        spark, group, progress, lambda done, total: min(n_queries, int(n_queries * done / max(total, 1)))
    ):
        rows = [row.asDict() for row in frame.collect()]
    progress.update(n_queries, force=True)
    return rows
