"""The lock that keeps two runs from writing one output: who holds it, whether that process still
lives, and the message that tells a user what to do about it."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import time

from lookalike.errors import OutputLockedError

log = logging.getLogger(__name__)

# A lock older than this is called stale in messages; only force_unlock ever removes one.
STALE_LOCK_HOURS = 24.0


def owner_text(run_id: str) -> str:
    """What a lock file holds: enough to find the run that took it, and to tell if it still runs."""
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": process_start(os.getpid()),
        "run_id": run_id,
        "started": time.time(),
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return json.dumps(owner, sort_keys=True)


def owner_of(text: str | None) -> dict:
    """The owner a lock's text names; {} when it names none (unreadable or foreign)."""
    try:
        value = json.loads(text or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks (Linux), to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_alive(owner: dict) -> bool | None:
    """True/False when the lock's owner runs on this host; None when that cannot be known here."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return None
    pid = owner["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    start = owner.get("pid_start")
    return not (start and process_start(pid) not in (None, start))


def _age(started: float | None) -> str:
    if not isinstance(started, (int, float)):
        return "unknown time"
    hours = max(0.0, time.time() - started) / 3600
    return f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"


def locked_message(path: str, lock: str, text: str | None, force_refused: bool) -> str:
    """Why ``path`` cannot be written now, and what the user can do about it."""
    try:
        owner = json.loads(text or "")
        assert isinstance(owner, dict)
    except (ValueError, AssertionError):
        return (
            f"output {path} is locked by {lock}, which cannot be read ({(text or '')[:80]!r}). "
            f"If no run is writing this output, rerun with --set output.force_unlock=true"
        )
    head = (
        f"output {path} is locked by run {owner.get('run_id')} (host {owner.get('host')}, pid "
        f"{owner.get('pid')}) since {owner.get('started_at')}, {_age(owner.get('started'))} ago "
        f"[lock {lock}]."
    )
    alive = owner_alive(owner)
    if alive:
        tail = " That process is still running on this host: wait for it to finish"
        if force_refused:
            tail += " (output.force_unlock=true never removes the lock of a live process)"
        return head + tail + "."
    if alive is False:
        return (
            head + f" pid {owner.get('pid')} no longer runs on this host: the run crashed or was "
            "killed, and nothing it wrote is visible to readers. Rerun with "
            "--set output.force_unlock=true to remove the stale lock."
        )
    stale = isinstance(owner.get("started"), (int, float)) and time.time() - owner["started"] > STALE_LOCK_HOURS * 3600
    return (
        head
        + (f" It is older than {STALE_LOCK_HOURS:.0f} h and probably stale." if stale else "")
        + " If that run is no longer running (killed, or its cluster is gone), rerun with "
        "--set output.force_unlock=true to remove the lock."
    )


def take(layout, run_id: str, force_unlock: bool) -> None:
    """Take the lock of one output's ``layout`` for ``run_id``; OutputLockedError if another run
    holds it, unless ``force_unlock`` and its owner is not known to be alive."""
    text = owner_text(run_id)
    if layout.lock_create(text):
        return
    held = layout.lock_read()
    if not force_unlock or owner_alive(owner_of(held)):
        raise OutputLockedError(locked_message(layout.shown, layout.lock, held, force_unlock))
    log.warning("output.force_unlock=true: removing the lock on %s (%s)", layout.shown, (held or "").strip()[:300])
    layout.lock_delete()
    if not layout.lock_create(text):
        raise OutputLockedError(locked_message(layout.shown, layout.lock, layout.lock_read(), True))


def release(layout, run_id: str) -> None:
    """Remove the lock if ``run_id`` holds it (never another run's)."""
    try:
        if owner_of(layout.lock_read()).get("run_id") == run_id:
            layout.lock_delete()
    except Exception as exc:  # a lock we cannot remove must not hide the run's own error
        log.warning("could not remove the lock %s: %s", layout.lock, exc)
