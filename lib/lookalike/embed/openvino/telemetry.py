"""OpenVINO's converter sends usage data over the network unless the host has opted out; a job
may reach nothing but its S3 endpoint. :func:`without_telemetry` silences it for one conversion."""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from typing import Any

# The converter's modules that bind openvino_telemetry as ``tm``; during a conversion they get the
# converter's own no-op stub (the module it uses when openvino_telemetry is not installed).
USERS = ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.utils")
_lock = threading.Lock()


@contextlib.contextmanager
def without_telemetry() -> Iterator[None]:
    """Only for the conversion, and put back after it."""
    stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
    # Any: ``tm`` is an attribute that only some versions of these modules have.
    modules: list[Any] = [importlib.import_module(name) for name in USERS]
    with _lock:
        saved = [(module, module.tm) for module in modules if hasattr(module, "tm")]
        for module, _ in saved:
            module.tm = stub
        try:
            yield
        finally:
            for module, original in saved:
                module.tm = original
