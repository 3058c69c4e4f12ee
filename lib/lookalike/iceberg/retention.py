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
