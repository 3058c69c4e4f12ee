"""Publishing outputs: versioned tables switched in one step, locks, run summaries, lineage."""

from lookalike.io.current import current_version, resolve
from lookalike.publish.layouts import SUMMARY
from lookalike.publish.summary import read_summary
from lookalike.publish.versions import OutputSet

__all__ = ["SUMMARY", "OutputSet", "current_version", "read_summary", "resolve"]
