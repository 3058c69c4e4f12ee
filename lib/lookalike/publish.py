"""Publishing outputs: staging, atomic switch, locks. (Minimal version; see issue 5.)"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

from .storage import is_hadoop, is_s3, local_path

log = logging.getLogger(__name__)


def resolve(path: str) -> str:
    """The location readers should read for the current version of ``path``."""
    return path


class OutputSet:
    """Stage several outputs of one run and publish them together."""

    def __init__(self, spark, targets: dict[str, str], run_id: str, force_unlock: bool = False):
        self.spark, self.targets, self.run_id, self.force_unlock = spark, targets, run_id, force_unlock

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def staging(self, name: str) -> str:
        return self.targets[name]

    def commit(self, summaries: Optional[dict[str, dict]] = None) -> None:
        for name, summary in (summaries or {}).items():
            write_summary(self.targets[name], summary)


def write_summary(path: str, summary: dict) -> None:
    if is_s3(path) or is_hadoop(path):
        return
    target = os.path.join(local_path(path), "_lookalike_summary.json")
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True, default=str)
