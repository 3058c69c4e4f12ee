"""Versioned outputs: each run writes a new version beside the output, readers are switched to it
in one step, and a lock keeps two runs from writing the same output.

A run writes into a version directory that no reader knows about yet and publishes it with one
rename (local) or one PUT (S3); readers see the previous complete version or the new one, never a
mix. Local readers can keep reading ``<dir>/<name>``; on S3 and HDFS they call
``lookalike.publish.resolve`` (io/current.py, the read side, below publish/). The current and
the previous version are kept, so that a reader that resolved the path just before a switch can
finish; older versions and what crashed runs left behind go at the next publish.
The layout on disk and on S3 is described in publish/layouts.py.
"""

from __future__ import annotations

import json
import logging

from lookalike.config import S3Config
from lookalike.errors import OutputError
from lookalike.publish import locks
from lookalike.publish.layouts import SUMMARY, layout_for

log = logging.getLogger(__name__)


class OutputSet:
    """Stage several outputs of one run and publish them together.

    ``with OutputSet(...)`` takes the lock of every target (OutputLockedError if another run holds
    one); ``staging(name)`` is where the run writes that table; ``commit(summaries)`` publishes
    every table, each in one atomic step. Leaving the block without commit (an exception, or a
    run that decides to publish nothing) removes the staged data and leaves the outputs as they
    were; the locks are released either way.
    """

    def __init__(
        self, spark, targets: dict[str, str], run_id: str, force_unlock: bool = False, s3: S3Config | None = None
    ):
        self.spark = spark  # kept for callers' symmetry; publishing itself needs no Spark
        self.targets, self.run_id, self.force_unlock = dict(targets), run_id, force_unlock
        self.locations = {name: layout_for(path, s3) for name, path in self.targets.items()}
        self._locked: list = []
        self._staged: set[str] = set()
        self._switched: set[str] = set()
        self.committed = False

    def __enter__(self) -> OutputSet:
        try:
            for name in sorted(self.targets):
                location = self.locations[name]
                locks.take(location, self.run_id, self.force_unlock)
                self._locked.append(location)
                try:
                    location.check()
                except OutputError as exc:
                    raise type(exc)(f"output.{name}: {exc}") from None
        except BaseException:
            self._release()
            raise
        return self

    def _release(self) -> None:
        while self._locked:
            locks.release(self._locked.pop(), self.run_id)

    def staging(self, name: str) -> str:
        """Where this run writes table ``name``: a new version directory no reader sees yet (its
        parent exists; the directory itself is left to the writer, as Spark wants it)."""
        location = self.locations[name]
        if name not in self._staged:
            location.prepare_staging(self.run_id)
            self._staged.add(name)
        return location.version_path(self.run_id)

    def commit(self, summaries: dict[str, dict] | None = None) -> None:
        """Write the summaries into the staged versions, then switch every output to them."""
        missing = [n for n, loc in self.locations.items() if not loc.staged(self.run_id)]
        if missing:
            raise OutputError(f"nothing was written for {', '.join(missing)} in this run; publishing nothing")
        for name, summary in (summaries or {}).items():
            self.locations[name].put_text(
                self.run_id, SUMMARY, json.dumps(summary, indent=2, sort_keys=True, default=str)
            )
        for name in sorted(self.targets):
            location = self.locations[name]
            previous = location.switch(self.run_id)
            self._switched.add(name)
            log.info("published %s: version %s at %s", name, self.run_id, location.shown)
            self._collect_garbage(location, {self.run_id, previous})
        self.committed = True

    def _collect_garbage(self, location, keep: set) -> None:
        try:
            for version in location.versions_list():
                if version not in keep:
                    location.remove_version(version)
            location.remove_debris()
        except Exception as exc:  # old versions left behind cost space, never correctness
            log.warning("could not remove old versions of %s: %s", location.shown, exc)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self.committed:
                # A commit that failed half way leaves the switched outputs on this version.
                for name in sorted(self._staged - self._switched):
                    try:
                        self.locations[name].remove_version(self.run_id)
                    except Exception as error:
                        log.warning("could not remove the staged %s: %s", name, error)
                unchanged = [self.targets[n] for n in sorted(self.targets) if n not in self._switched]
                published = [self.targets[n] for n in sorted(self._switched)]
                if exc_type is not None and published:
                    # A switch failed after others succeeded: say exactly which tables are new.
                    log.error(
                        "published only %s (version %s); not published, unchanged: %s",
                        ", ".join(published),
                        self.run_id,
                        ", ".join(unchanged),
                    )
                elif exc_type is not None and unchanged:
                    log.warning("not published: %s unchanged", ", ".join(unchanged))
        finally:
            self._release()
        return None
