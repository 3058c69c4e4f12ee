"""The md5 of a local weights file, computed once per file version in a process.

Below weights.py and efficientnet_lite.py, which both check files against published md5s.
"""

from __future__ import annotations

import hashlib
import os

# md5 by (device, inode, size, mtime): the driver and each worker check the same file several
# times (resolve, the run's identity, the conversion), and a rename keeps the inode.
_md5_seen: dict = {}


def md5_of(path: str) -> str:
    found = os.stat(path)
    key = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)
    if key not in _md5_seen:
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _md5_seen[key] = digest.hexdigest()
    return _md5_seen[key]
