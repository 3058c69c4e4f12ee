"""Whether OpenVINO can be imported here: asked by the executors' probes and before every compile."""

from __future__ import annotations

_available: bool | None = None


def available() -> bool:
    """Whether OpenVINO can be imported here (installed, and built for this NumPy)."""
    global _available
    if _available is None:
        try:
            import openvino  # noqa: F401

            _available = True
        except Exception:  # an ImportError, or a broken install failing in its own way
            _available = False
    return _available


def version() -> str | None:
    if not available():
        return None
    import openvino

    return openvino.get_version()
