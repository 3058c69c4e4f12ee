"""The output section: where each table lives and the catalog that registers it."""

from __future__ import annotations

import os
import posixpath
import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from lookalike.config.base import Settings, setting


class CatalogConfig(Settings):
    prefix: ClassVar[str] = "output.catalog."
    type: Literal["sql", "glue", "rest"] = setting(
        "sql",
        "Where the tables are registered: `sql` (a SQLite file, no server), `glue` (AWS Glue: Athena and "
        "EMR see the tables by name) or `rest` (an Iceberg REST catalog: S3 Tables, Polaris, Nessie).",
    )
    uri: str | None = setting(
        None,
        "`sql`: the SQLite file (or a SQLAlchemy URL); null puts `catalog.db` beside local outputs. `rest`: "
        "the catalog's URL.",
    )
    endpoint_url: str | None = setting(None, "`glue`: a Glue-compatible endpoint; null for AWS.")
    region: str | None = setting(None, "`glue`: the region; null uses `s3.region`.")
    warehouse: str | None = setting(
        None,
        "`rest`: the warehouse the catalog wants (e.g. an S3 Tables bucket ARN). Credentials come from "
        "LOOKALIKE_CATALOG_CREDENTIAL or LOOKALIKE_CATALOG_TOKEN.",
    )


class OutputConfig(Settings):
    prefix: ClassVar[str] = "output."
    embeddings: str = setting("output/embeddings", "Location of the embeddings Iceberg table.")
    errors: str = setting("output/errors", "Location of the errors Iceberg table.")
    neighbours: str = setting("output/neighbours", "Location of the neighbours Iceberg table.")
    duplicates: str = setting(
        "output/duplicates", "Location of the near-duplicate groups Iceberg table, written by the duplicates job."
    )
    hybrid: str = setting(
        "output/hybrid",
        "Location of the hybrid neighbours Iceberg table (behaviour blended with pictures), written by "
        "the hybrid job ([hybrid](hybrid.md)).",
    )
    catalog: CatalogConfig = Field(
        default_factory=CatalogConfig, description="Where the tables are registered (the `output.catalog.*` keys)."
    )
    namespace: str = setting(
        "lookalike",
        "Namespace (Glue database) of the tables, named after their stages: `lookalike.neighbours`, ...",
    )
    keep_days: float = setting(
        7.0,
        "Snapshots older than this many days expire after a successful commit (the current one always "
        "stays); time travel reaches back this far.",
        "a number of days, 0 or more",
        ge=0,
    )
    force_unlock: bool = setting(
        False, "Ignored: kept so that older configs still load (runs take no locks; the catalog decides)."
    )

    @property
    def neighbours_lists(self) -> str:
        """neighbours.incremental's state: each item's list k + reserve deep, beside the published
        table (schemas.NEIGHBOUR_LISTS)."""
        return self.neighbours.rstrip("/") + "_lists"

    @property
    def neighbours_centroids(self) -> str:
        """neighbours.incremental with method ivf: the centroids of its lists, beside the published
        table (schemas.IVF_CENTROIDS)."""
        return self.neighbours.rstrip("/") + "_centroids"

    @property
    def duplicates_pairs(self) -> str:
        """duplicates.incremental's state: each item's pairs, beside the published table
        (schemas.DUPLICATE_PAIRS)."""
        return self.duplicates.rstrip("/") + "_pairs"

    @field_validator("namespace")
    @classmethod
    def _namespace_name(cls, value: str) -> str:
        # Glue, Athena and Trino accept lower-case letters, digits and underscores in database names.
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,254}", value):
            raise ValueError(f"{value!r} is not a namespace name: use lower-case letters, digits and underscores")
        return value

    @model_validator(mode="after")
    def _separate_locations(self) -> OutputConfig:
        # A table published over another, or inside it, would replace or corrupt it on the next run.
        tables = (
            "embeddings",
            "errors",
            "neighbours",
            "duplicates",
            "hybrid",
            "neighbours_lists",
            "neighbours_centroids",
            "duplicates_pairs",
        )
        where = {name: _location(getattr(self, name)) for name in tables}
        for i, first in enumerate(tables):
            for second in tables[i + 1 :]:
                a, b = where[first], where[second]
                if a == b:
                    raise ValueError(
                        f"output.{first} and output.{second} are one location ({getattr(self, first)}); "
                        f"every table needs its own: set one of them to another path"
                    )
                if b.startswith(a + "/") or a.startswith(b + "/"):
                    outer, inner = (first, second) if b.startswith(a + "/") else (second, first)
                    raise ValueError(
                        f"output.{inner} ({getattr(self, inner)}) is inside output.{outer} "
                        f"({getattr(self, outer)}); tables must not nest: choose sibling paths"
                    )
        return self


def _location(path: str) -> str:
    """A table location in one spelling, to compare locations: local paths absolute and normalised,
    s3a:// and s3n:// as s3://, no trailing slash."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", path)
    if match and match.group(1).lower() != "file":
        scheme = "s3" if match.group(1).lower() in ("s3", "s3a", "s3n") else match.group(1).lower()
        return f"{scheme}://{posixpath.normpath('/' + match.group(2)).lstrip('/')}".rstrip("/")
    local = path[len("file://") :] if path.startswith("file://") else path
    return os.path.normpath(os.path.abspath(os.path.expanduser(local)))
