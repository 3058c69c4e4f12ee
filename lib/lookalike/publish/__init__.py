"""Publishing outputs: Iceberg tables committed in one snapshot per table per run, run summaries
in the snapshots, lineage."""

from lookalike.io.current import Current, current
from lookalike.publish.outputs import OutputSet, catalog_spec
from lookalike.publish.summary import read_summary

__all__ = ["Current", "OutputSet", "catalog_spec", "current", "read_summary"]
