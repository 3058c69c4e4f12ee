"""Where the repository and its shipped sample are."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = ROOT / "samples" / "clothing"
SAMPLE_LABELS = ROOT / "samples" / "clothing-labels.csv"
