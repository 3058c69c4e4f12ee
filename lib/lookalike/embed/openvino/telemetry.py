"""OpenVINO's converter sends usage data over the network unless the host has opted out; a job
may reach nothing but its S3 endpoint. :func:`without_telemetry` silences it for one conversion.

The converter has no switch for this, so for the conversion's duration the modules that hold
``openvino_telemetry`` (as ``tm``) hold the converter's own no-op stub instead, and get the real
module back afterwards. That is process-wide while it lasts: lookalike's own conversions take
turns under a lock; another thread of the host process converting at that moment would also send
nothing. It fails closed: when this OpenVINO release names these modules differently (nothing to
swap) while the telemetry package is installed, no conversion runs.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any

from lookalike.errors import ConfigError

# The converter's modules that bind openvino_telemetry as ``tm``; during a conversion they get the
# converter's own no-op stub (the module it uses when openvino_telemetry is not installed).
USERS = ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.utils")
STUB = "openvino.tools.ovc.telemetry_stub"
_lock = threading.Lock()


@contextlib.contextmanager
def without_telemetry() -> Iterator[None]:
    """Only for the conversion, and put back after it; ConfigError when it cannot be silenced."""
    modules: list[Any] = []
    for name in USERS:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            pass
    try:
        stub = importlib.import_module(STUB)
    except ImportError:
        stub = None
    with _lock:
        saved = [(module, module.tm) for module in modules if hasattr(module, "tm")]
        if (stub is None or not saved) and _telemetry_installed():
            raise ConfigError(
                "this OpenVINO release's converter could not be kept from sending usage data (its "
                "modules changed), so lookalike does not convert with it: use model.runtime=keras, "
                "uninstall openvino-telemetry, or install the openvino version of setup.py"
            )
        for module, _ in saved:
            module.tm = stub
        try:
            yield
        finally:
            for module, original in saved:
                module.tm = original


def _telemetry_installed() -> bool:
    try:
        importlib.import_module("openvino_telemetry")
    except ImportError:
        return False
    return True
