"""Pipeline job: embed, then near-duplicate groups (when duplicates.enabled), then neighbours, then
the hybrid table (when hybrid.interactions is set), in one Spark application (one session, one
config). The groups come before the neighbours because neighbours.hide_duplicates reads them: this
run's, not the previous run's."""

from __future__ import annotations

import json
import logging
from typing import Any

from lookalike.config import Config
from lookalike.jobs import duplicates, embed, hybrid, neighbours
from lookalike.jobs.common import job_main

log = logging.getLogger(__name__)

REQUIRED = tuple(dict.fromkeys(embed.REQUIRED + neighbours.REQUIRED))


def run(spark, cfg: Config) -> dict:
    embedded = embed.run(spark, cfg)
    summary: dict[str, Any] = {"job": "pipeline", "embed": embedded}
    if cfg.duplicates.enabled:
        summary["duplicates"] = duplicates.run(spark, cfg)
    summary["neighbours"] = ranked = neighbours.run(spark, cfg)
    if cfg.hybrid.interactions is not None:
        summary["hybrid"] = hybrid.run(spark, cfg)
    summary["ok"] = all(
        bool(summary[stage].get("ok", True))
        for stage in ("embed", "duplicates", "neighbours", "hybrid")
        if stage in summary
    )
    log.info(
        "pipeline done: %d images embedded, %d errors, neighbours written to %s",
        embedded.get("embedded", 0),
        embedded.get("errors", 0),
        cfg.output.neighbours,
    )
    print(
        json.dumps(
            {
                "job": "pipeline",
                "ok": summary["ok"],
                "embed_run_id": embedded.get("run_id"),
                "neighbours_run_id": ranked.get("run_id"),
                "duplicates_run_id": summary.get("duplicates", {}).get("run_id"),
                "hybrid_run_id": summary.get("hybrid", {}).get("run_id"),
            },
            sort_keys=True,
        )
    )
    return summary


def main(argv: list[str] | None = None, spark=None) -> int:
    """The command line (``jobs/pipeline.py``); ``spark``: run in a session the caller owns."""
    return job_main(
        argv,
        run,
        "Embed every image, then compute every item's top-k neighbours "
        "(and near-duplicate groups when duplicates.enabled).",
        REQUIRED,
        spark=spark,
    )
