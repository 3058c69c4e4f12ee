"""A run's outputs, committed as one Iceberg snapshot per table.

Each table lives at its location (``output.<name>``) and is registered in the catalog as
``<output.namespace>.<name>``. A run's tasks write their Parquet files into
``<location>/data/<run_id>/``, which no snapshot references yet, so readers never see them; the
driver then commits each table in one snapshot that replaces its previous files, with the run's
summary in the snapshot's properties, and names the new metadata in the location's version hint
(io/current.py). Earlier snapshots stay readable by time travel for ``output.keep_days``.

There are no lock files: two runs may write at once, and the catalog's optimistic commit decides
(iceberg/commit.py). A run killed at any point leaves only unreferenced files, which a later
successful run deletes (iceberg/retention.py); nothing blocks the next run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable

from lookalike import schemas
from lookalike.config import OutputConfig, S3Config
from lookalike.errors import ConfigError, OutputError, storage_failure
from lookalike.iceberg import catalogs, commit, retention
from lookalike.iceberg.locations import check_location, normalised
from lookalike.io.current import (
    HIDDEN_PREFIXES,
    LATEST,
    RUN_PROPERTY,
    SUMMARY_PROPERTY,
    legacy_pointer,
    legacy_version,
)
from lookalike.io.storage import StorageError, storage_for
from lookalike.io.uris import is_hadoop, is_s3, local_path

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.db"


def catalog_spec(output: OutputConfig) -> catalogs.CatalogSpec:
    """The catalog the settings name; a ``sql`` catalog without ``uri`` is ``catalog.db`` beside
    the (local) embeddings table, so that every job of one config finds the same catalog."""
    cfg = output.catalog
    uri = cfg.uri
    if cfg.type == "sql" and not uri:
        if is_s3(output.embeddings) or is_hadoop(output.embeddings):
            raise ConfigError(
                "output.catalog.uri: outputs on S3 or HDFS need a catalog every run can reach: set "
                "output.catalog.type: glue (or rest), or output.catalog.uri to a shared SQLite file"
            )
        parent = os.path.dirname(os.path.abspath(os.path.expanduser(local_path(output.embeddings))))
        uri = os.path.join(parent, CATALOG_FILE)
    return catalogs.CatalogSpec(
        type=cfg.type, uri=uri, endpoint_url=cfg.endpoint_url, region=cfg.region, warehouse=cfg.warehouse
    )


def identifier(output: OutputConfig, name: str) -> str:
    return f"{output.namespace}.{name}"


class OutputSet:
    """Stage several tables of one run and commit them together.

    ``with OutputSet(...)`` checks every table before any work: a location holding anything
    lookalike did not write as that table, or a catalog entry of the name at another location, is
    refused. ``staging(name)`` is where the run's tasks write that table's files; ``commit``
    commits every table, each in one snapshot. Leaving the block without a commit deletes the
    staged files and leaves the tables as they were.
    """

    def __init__(self, spark, output: OutputConfig, names: Iterable[str], run_id: str, s3: S3Config | None = None):
        self.spark = spark  # kept for callers' symmetry; committing needs no Spark
        self.output, self.run_id, self.s3 = output, run_id, s3
        self.names = sorted(names)
        self.locations = {n: getattr(output, n) for n in self.names}
        self.spec = catalog_spec(output)
        self.catalog = None
        self.tables: dict[str, object] = {}
        self.legacy: dict[str, tuple[str, str]] = {}
        self._staged: set[str] = set()
        self.committed_tables: list[str] = []
        self.committed = False

    def check(self) -> OutputSet:
        """Only the checks of entering, nothing moved or written: for a job that reads its inputs
        before it enters, so that a refused location costs nothing."""
        return self._checked(carry_over=False)

    def __enter__(self) -> OutputSet:
        return self._checked(carry_over=True)

    def _checked(self, carry_over: bool) -> OutputSet:
        # A SQLite catalog that does not exist yet registers nothing: it is made at the first
        # commit, so that a run refused or failed before it leaves no file behind.
        if not self._new_sqlite_file():
            self.catalog = catalogs.open_catalog(self.spec, self.s3)
        for name in self.names:
            key, location = f"output.{name}", self.locations[name]
            if is_s3(location) and not location.split("://", 1)[1].strip("/").count("/"):
                raise OutputError(f"{key}: {location} is a bucket; use a prefix such as s3://bucket/lookalike/{name}")
            legacy = legacy_version(location, self.s3)
            if legacy is not None and not carry_over:
                continue  # the location holds the pointer until the run carries it over
            if legacy is not None:
                self._set_aside_pointer(name, legacy)
            if self.catalog is None:
                check_location(key, location, registered=False, s3=self.s3)
                self.tables[name] = None
            else:
                self.tables[name] = commit.checked_table(
                    self.catalog, self.spec, key, identifier(self.output, name), location, self.s3
                )
        return self

    def _new_sqlite_file(self) -> bool:
        uri = self.spec.uri or ""
        return self.spec.type == "sql" and "://" not in uri and not os.path.exists(uri)

    def _set_aside_pointer(self, name: str, legacy: tuple[str, str]) -> None:
        """An earlier lookalike's table at the location: its pointer (a symbolic link, or _LATEST)
        moves beside the location, so the location can hold the Iceberg table and the old version
        stays where it is, readable until this run commits the table in its place."""
        location = self.locations[name]
        pointer = f"{location.rstrip('/')}/{LATEST}"
        if is_s3(location) or is_hadoop(location):
            storage = storage_for(location, self.s3)
            try:
                if storage.exists(pointer):
                    storage.write(legacy_pointer(location), storage.read(pointer, 1 << 20))
                    storage.delete(pointer)
            except StorageError as exc:
                raise storage_failure(
                    OutputError, f"output.{name}: cannot carry over {pointer}: {exc.message}", exc
                ) from None
        else:
            path = os.path.abspath(os.path.expanduser(local_path(location))).rstrip("/")
            if os.path.islink(path):
                os.replace(path, legacy_pointer(path))
        self.legacy[name] = legacy
        log.warning(
            "output.%s: %s is a table an earlier lookalike published (version %s); this run carries it over "
            "into an Iceberg table at the same location. The old version stays at %s until you delete it",
            name,
            location,
            legacy[1],
            legacy[0],
        )

    def staging(self, name: str) -> str:
        """Where this run's tasks write table ``name``: a folder under its location that no
        snapshot references (created locally; object stores need no folders)."""
        where = f"{self.locations[name].rstrip('/')}/data/{self.run_id}"
        if name not in self._staged:
            if not (is_s3(where) or is_hadoop(where)):
                os.makedirs(local_path(where), exist_ok=True)
            self._staged.add(name)
        return where

    def staged_files(self, name: str) -> list[str]:
        where = self.staging(name)
        try:
            entries = list(storage_for(where, self.s3).list(where))
        except StorageError as exc:
            raise storage_failure(OutputError, f"output.{name}: cannot list {where}: {exc.message}", exc) from None
        return sorted(
            e.uri
            for e in entries
            if e.key.endswith(".parquet") and not any(p.startswith(HIDDEN_PREFIXES) for p in e.key.split("/"))
        )

    def commit(self, summaries: dict[str, dict] | None = None, still_valid: Callable[[], bool] = lambda: True) -> None:
        """Commit every table: its staged files replace its content in one snapshot carrying its
        summary. ``still_valid()`` says whether what this run read is unchanged, for a commit that
        lost a race to another run (iceberg/commit.py). Then old snapshots expire (keep_days)."""
        staged = {name: self.staged_files(name) for name in self.names}
        missing = [n for n, files in staged.items() if not files]
        if missing:
            raise OutputError(f"nothing was written for {', '.join(missing)} in this run; committing nothing")
        if self.catalog is None:
            self.catalog = catalogs.open_catalog(self.spec, self.s3)
        for name in self.names:
            table = self.tables[name]
            if table is None:
                table = commit.create_table(
                    self.catalog,
                    self.spec,
                    identifier(self.output, name),
                    self.locations[name],
                    schemas.arrow_schema({**schemas.TABLES, **schemas.STAGE_TABLES, **schemas.INTERNAL_TABLES}[name]),
                )
                self.tables[name] = table
            summary = (summaries or {}).get(name, {})
            properties = {
                RUN_PROPERTY: self.run_id,
                SUMMARY_PROPERTY: json.dumps(summary, sort_keys=True, default=str),
            }
            commit.replace_files(table, self.spec, staged[name], properties, still_valid)
            self.committed_tables.append(name)
            commit.write_hint(table, self.s3)
            log.info("committed %s (%s)", identifier(self.output, name), normalised(self.locations[name]))
            self._after_commit(name, table)
        self.committed = True

    def _after_commit(self, name: str, table) -> None:
        """Housekeeping that costs space when it fails, never correctness: expire old snapshots,
        delete what killed runs left, drop an earlier lookalike's pointer this run carried over."""
        retention.expire(table, self.output.keep_days)
        retention.remove_orphans(table, self.s3)
        if name in self.legacy:
            aside = legacy_pointer(self.locations[name])
            try:
                storage_for(aside, self.s3).delete(aside)
            except (StorageError, OSError) as exc:
                log.warning("could not remove %s: %s", aside, exc)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed:
            return None
        for name in sorted(self._staged - set(self.committed_tables)):
            where = self.staging(name)
            try:
                storage_for(where, self.s3).delete_prefix(where)
            except Exception as error:  # a later run's orphan cleanup gets it
                log.warning("could not remove the staged files of %s at %s: %s", name, where, error)
        done = [identifier(self.output, n) for n in self.committed_tables]
        rest = [identifier(self.output, n) for n in self.names if n not in self.committed_tables]
        if exc_type is not None and done:
            # One table committed and the next failed: say exactly which tables are new.
            log.error(
                "committed only %s (run %s); not committed, unchanged: %s",
                ", ".join(done),
                self.run_id,
                ", ".join(rest),
            )
        elif exc_type is not None and rest:
            log.warning("not committed: %s unchanged", ", ".join(rest))
        return None
