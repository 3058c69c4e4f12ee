"""Whole processes: the repository's scripts run as a user would run them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.paths import ROOT


def run_script(args: list[str], timeout: float = 600, env: dict | None = None, cwd: Path = ROOT):
    """Run a command from the repo root; returns CompletedProcess with text output."""
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
