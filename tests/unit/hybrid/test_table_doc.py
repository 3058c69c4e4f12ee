"""docs/hybrid.md shows the hybrid table's schema as schemas.py defines it, and the job writes
through the same definition."""

from __future__ import annotations

from lookalike import schemas
from tests.support.paths import ROOT


def test_docs_show_the_hybrid_schema_and_it_extends_the_neighbours_one():
    page = (ROOT / "docs" / "hybrid.md").read_text(encoding="utf-8")
    assert schemas.markdown(schemas.HYBRID) in page
    assert [c.name for c in schemas.HYBRID] == [c.name for c in schemas.NEIGHBOURS] + ["source"]
    assert [c.type for c in schemas.HYBRID[:-1]] == [c.type for c in schemas.NEIGHBOURS]
    assert schemas.STAGE_TABLES["hybrid"] is schemas.HYBRID
