"""Files that Spark tasks wrote, committed by the driver as one snapshot of an Iceberg table.

No data passes through the driver: it reads each file's Parquet footer (row counts, column
bounds) and commits a snapshot that replaces the table's previous files with these. Readers see
the previous snapshot or this one, never a mix; the previous stays readable by time travel until
retention expires it. The run's summary and lineage go into the snapshot's summary properties.

Concurrency is the catalog's optimistic commit: no lock files. A commit that loses a race to
another run is retried against the new state while ``still_valid()`` says that what this run read
is unchanged (then this run's result is still right); otherwise it fails with the transient code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from lookalike.errors import ConfigError, OutputError, TransientError
from lookalike.iceberg.catalogs import CatalogSpec, catalog_failure
from lookalike.iceberg.locations import check_location, normalised

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 4
# Table properties lookalike sets on the tables it creates: format v2, and old metadata files
# removed by the catalog as commits go (they are not data: readers resolve the table by name).
TABLE_PROPERTIES = {
    "format-version": "2",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    "lookalike.table": "true",
}


class CommitConflictError(TransientError):
    """Another run committed the table meanwhile and what this run read has changed since."""


def open_table(catalog, spec: CatalogSpec, key: str, identifier: str, location: str, schema, s3=None):
    """The table ``identifier`` at ``location``, created when the catalog does not have it (after
    the checks of ``checked_table``). ``schema``: a pyarrow schema (field ids are assigned)."""
    table = checked_table(catalog, spec, key, identifier, location, s3)
    return table if table is not None else create_table(catalog, spec, identifier, location, schema)


def checked_table(catalog, spec: CatalogSpec, key: str, identifier: str, location: str, s3=None):
    """The catalog's table ``identifier``, or None when it has none; nothing is written.

    A catalog entry at another location than ``location`` (the setting ``key``) is a ConfigError
    naming both (two settings would otherwise share or lose a table), and a location holding
    anything but this table is refused (locations.py)."""
    from pyiceberg.exceptions import NoSuchTableError

    location = normalised(location)
    try:
        try:
            table = catalog.load_table(identifier)
        except NoSuchTableError:
            table = None
        if table is not None and normalised(table.location()) != location:
            raise ConfigError(
                f"{key}: the catalog's table {identifier} is at {table.location()}, not at {location}; "
                f"set {key} to {table.location()}, or choose another output.namespace"
            )
        check_location(key, location, registered=table is not None, s3=s3)
        return table
    except (ConfigError, TransientError, OutputError):
        raise
    except Exception as exc:
        raise catalog_failure(spec, f"load table {identifier} from", exc) from None


def create_table(catalog, spec: CatalogSpec, identifier: str, location: str, schema):
    """Register a new format-v2 table ``identifier`` at ``location`` (columns mapped by name)."""
    from pyiceberg.exceptions import TableAlreadyExistsError

    location = normalised(location)
    namespace = identifier.rsplit(".", 1)[0]
    try:
        _create_namespace(catalog, namespace)
        try:
            table = catalog.create_table(identifier, schema=schema, location=location, properties=TABLE_PROPERTIES)
        except TableAlreadyExistsError:  # another run created it meanwhile: use that one
            table = catalog.load_table(identifier)
            if normalised(table.location()) != location:
                raise ConfigError(
                    f"the catalog's table {identifier} was just created at {table.location()}, not at {location}"
                ) from None
            return table
        log.info("created Iceberg table %s at %s", identifier, location)
        if table.metadata.name_mapping() is None:
            # Tasks write plain Parquet without Iceberg field ids; readers map columns by name.
            with table.transaction() as tx:
                tx.set_properties(**{"schema.name-mapping.default": table.schema().name_mapping.model_dump_json()})
        return table
    except (ConfigError, TransientError):
        raise
    except Exception as exc:
        raise catalog_failure(spec, f"create table {identifier} in", exc) from None


def write_hint(table, s3=None) -> None:
    """Name the table's current metadata file in ``metadata/version-hint.text`` (io/current.py), for
    readers that have the location alone. The catalog already holds the commit; a hint that cannot
    be written leaves those readers one snapshot behind, so it is logged, not raised."""
    from lookalike.io.current import HINT
    from lookalike.io.storage import StorageError, storage_for

    # The name without ".metadata.json": DuckDB's iceberg_scan appends it, pyiceberg accepts both.
    name = table.metadata_location.rstrip("/").rpartition("/")[2].removesuffix(".metadata.json")
    where = f"{table.location().rstrip('/')}/{HINT}"
    try:
        storage_for(where, s3).write(where, name.encode("utf-8"))
    except StorageError as exc:
        log.warning(
            "could not write %s (%s); readers that go by location see the previous snapshot", where, exc.message
        )


def _create_namespace(catalog, namespace: str) -> None:
    from pyiceberg.exceptions import NamespaceAlreadyExistsError

    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass


def current_files(table) -> list[str]:
    """The data files of the table's current snapshot ([] for a table without one)."""
    if table.current_snapshot() is None:
        return []
    return sorted(task.file.file_path for task in table.scan().plan_files())


def replace_files(
    table,
    spec: CatalogSpec,
    files: Iterable[str],
    properties: Mapping[str, str],
    still_valid: Callable[[], bool] = lambda: True,
) -> int:
    """Commit ``files`` (Parquet files under the table's location, written with the table's column
    names) as the table's whole content, in one snapshot carrying ``properties``; returns its id."""
    from pyiceberg.io.pyarrow import parquet_files_to_data_files

    lost_race = _race_errors()
    files = list(files)
    props = {str(k): str(v) for k, v in properties.items()}
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            new = list(parquet_files_to_data_files(table.io, table.metadata, iter(files)))
            old = []
            if table.current_snapshot() is not None:
                old = [task.file for task in table.scan().plan_files()]
            with table.transaction() as tx:
                with tx.update_snapshot(snapshot_properties=props).overwrite() as overwrite:
                    for data_file in old:
                        overwrite.delete_data_file(data_file)
                    for data_file in new:
                        overwrite.append_data_file(data_file)
            snapshot = table.current_snapshot()
            log.info(
                "committed %s: snapshot %d, %d files replacing %d",
                table.name(),
                snapshot.snapshot_id,
                len(new),
                len(old),
            )
            return snapshot.snapshot_id
        except lost_race as exc:
            _refresh(table, spec)
            if not still_valid():
                raise CommitConflictError(
                    f"{'.'.join(table.name())}: another run committed it meanwhile and the input this run "
                    f"read has changed since; nothing was committed: run again"
                ) from None
            log.warning("commit of %s lost a race (%s); attempt %d of %d", table.name(), exc, attempt, COMMIT_ATTEMPTS)
        except (ConfigError, TransientError):
            raise
        except Exception as exc:
            raise catalog_failure(spec, f"commit {'.'.join(table.name())} to", exc) from None
    raise CommitConflictError(
        f"{'.'.join(table.name())}: lost {COMMIT_ATTEMPTS} commit races in a row to other runs; nothing was "
        f"committed: run again later"
    )


def _race_errors() -> tuple[type[Exception], ...]:
    """What a commit that lost to another writer raises: the catalog's refusal, and (pyiceberg
    >= 0.10, which retries by itself) the conflict check that found the other run's new files."""
    from pyiceberg import exceptions

    return tuple(
        getattr(exceptions, name)
        for name in ("CommitFailedException", "ValidationException")
        if hasattr(exceptions, name)
    )


def _refresh(table, spec: CatalogSpec) -> None:
    try:
        table.refresh()
    except Exception as exc:
        raise catalog_failure(spec, f"reload {'.'.join(table.name())} from", exc) from None
