"""Retention by time: snapshots older than ``keep_days`` expire after a successful commit, the
current one always stays, and the files that only expired snapshots referenced are deleted.

Only files this table's snapshots referenced are ever deleted (their data files, manifests and
manifest lists), never anything else under the location. Expiring needs pyiceberg 0.10 or newer
(``table.maintenance.expire_snapshots()``); 0.8.1, the newest for pyarrow 14 (the Spark 3.5
environment), cannot apply the update, so there every snapshot is kept and the log says so.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

log = logging.getLogger(__name__)


def referenced_files(table, snapshot) -> set[str]:
    """Every file a snapshot needs: its manifest list, its manifests and their live data files."""
    files = {snapshot.manifest_list}
    for manifest in snapshot.manifests(table.io):
        files.add(manifest.manifest_path)
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            files.add(entry.data_file.file_path)
    return files


def expire(table, keep_days: float, now: dt.datetime | None = None) -> dict:
    """Expire the snapshots committed more than ``keep_days`` before ``now`` (never the current
    one) and delete the files no kept snapshot references. Returns counts for the run summary.
    A failure here costs space, never correctness: it is logged and the next run tries again."""
    now = now or dt.datetime.now(dt.timezone.utc)
    current = table.current_snapshot()
    if current is None:
        return {"expired_snapshots": 0, "deleted_files": 0}
    cutoff_ms = int((now - dt.timedelta(days=keep_days)).timestamp() * 1000)
    doomed = [s for s in table.snapshots() if s.timestamp_ms < cutoff_ms and s.snapshot_id != current.snapshot_id]
    if not doomed:
        return {"expired_snapshots": 0, "deleted_files": 0}
    if not can_expire(table):
        log.info(
            "%s: %d snapshots are older than %s days but this pyiceberg cannot expire snapshots (0.10 or "
            "newer can); all are kept",
            ".".join(table.name()),
            len(doomed),
            keep_days,
        )
        return {"expired_snapshots": 0, "deleted_files": 0}
    try:
        kept = [s for s in table.snapshots() if s not in doomed]
        needed = set().union(*(referenced_files(table, s) for s in kept))
        unneeded = set().union(*(referenced_files(table, s) for s in doomed)) - needed
        _expire_snapshots(table, [s.snapshot_id for s in doomed])
    except Exception as exc:
        log.warning("could not expire old snapshots of %s: %s", ".".join(table.name()), exc)
        return {"expired_snapshots": 0, "deleted_files": 0}
    deleted = 0
    for path in sorted(unneeded):
        try:
            table.io.delete(path)
            deleted += 1
        except FileNotFoundError:
            pass
        except Exception as exc:  # left behind: costs space only
            log.warning("could not delete %s: %s", path, exc)
    log.info(
        "%s: expired %d snapshots older than %s days, deleted %d files",
        ".".join(table.name()),
        len(doomed),
        keep_days,
        deleted,
    )
    return {"expired_snapshots": len(doomed), "deleted_files": deleted}


def can_expire(table) -> bool:
    """Whether the installed pyiceberg can expire snapshots (0.10 and newer)."""
    return hasattr(table, "maintenance")


def _expire_snapshots(table, ids: list[int]) -> None:
    table.maintenance.expire_snapshots().by_ids(ids).commit()


# A data folder this old that no snapshot references is what a killed run left behind; a younger
# one may belong to a run still writing, which a cleanup must not pull its files from under.
ORPHAN_AGE = dt.timedelta(days=2)
_RUN_FOLDER = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{8}$")  # runinfo.new_run_id


def remove_orphans(table, s3=None, now: dt.datetime | None = None) -> int:
    """Delete the data folders (``data/<run_id>/``) of runs that started more than ORPHAN_AGE
    before ``now`` and that no snapshot of the table references: what a killed run wrote and never
    committed. Only folders named as lookalike names a run are considered. Returns how many went."""
    from lookalike.io.storage import StorageError, storage_for

    now = now or dt.datetime.now(dt.timezone.utc)
    data = f"{table.location().rstrip('/')}/data"
    storage = storage_for(data, s3)
    try:
        referenced = {
            path.rpartition("/")[0].rpartition("/")[2] for s in table.snapshots() for path in referenced_files(table, s)
        }
        folders = storage.list_dirs(data)
    except Exception as exc:  # storage or metadata: costs space only; the next run tries again
        log.warning("could not look for orphaned files of %s: %s", ".".join(table.name()), exc)
        return 0
    removed = 0
    for folder in folders:
        name = folder.rstrip("/").rpartition("/")[2]
        match = _RUN_FOLDER.match(name)
        if not match or name in referenced:
            continue
        started = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        if now - started < ORPHAN_AGE:
            continue
        try:
            storage.delete_prefix(f"{data}/{name}")
            removed += 1
        except StorageError as exc:
            log.warning("could not delete the orphaned %s/%s: %s", data, name, exc.message)
    if removed:
        log.info("%s: deleted %d data folders of runs that never committed", ".".join(table.name()), removed)
    return removed
