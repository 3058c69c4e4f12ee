"""The advisory lock that lets one worker per host convert a model while the others wait for its IR."""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

# How long a worker waits for another one's conversion before converting itself.
LOCK_WAIT_S = 900.0


class ConversionLock:
    """An exclusive ``flock`` on ``path`` for at most LOCK_WAIT_S: held by the worker that converts
    so that the others wait for its IR. Only an optimisation: the rename keeps the cache correct
    without it, so every failure to lock just proceeds."""

    def __init__(self, path: str, wait_s: float | None = None):
        self.path = path
        self.wait_s = LOCK_WAIT_S if wait_s is None else wait_s
        self.fd: int | None = None

    def __enter__(self) -> ConversionLock:
        try:
            import fcntl

            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except (ImportError, OSError):
            return self
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning(
                        "OpenVINO cache: %s still held after %.0fs; converting without it", self.path, self.wait_s
                    )
                    break
                time.sleep(0.2)
            except OSError:
                break  # flock unsupported here
        os.close(self.fd)
        self.fd = None
        return self

    def __exit__(self, *exc_info) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None
