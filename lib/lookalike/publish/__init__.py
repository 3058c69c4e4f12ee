"""Publishing outputs: versioned tables switched in one step, locks, run summaries, lineage."""

from lookalike.publish.versions import SUMMARY, OutputSet, current_version, read_summary, resolve

__all__ = ["SUMMARY", "OutputSet", "current_version", "read_summary", "resolve"]
