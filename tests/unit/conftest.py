"""The unit tier starts no JVM, and that is checked, not hoped for.

Around every item under tests/unit (its setup, call and teardown, so session fixtures a unit test
asks for are covered too) the guard in tests/support/unit_no_jvm.py makes each way into a JVM
raise JvmStartRefused with the test's name; afterwards everything is put back, so the Spark tier
in the same pytest process (``pytest tests``) is untouched. Each unit test also fails if a
``java`` process below this pytest appeared while it ran, and a run of the unit tier alone ends
with a check that no ``java`` process descends from this pytest at all.
"""

from __future__ import annotations

import pytest

from tests.support.unit_no_jvm import GUARD, in_unit_tier, java_processes

_OUTSIDE_UNIT_RAN = {"seen": False}


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    # This hook is not filtered by path (pytest calls it through config.hook): check the path.
    if not in_unit_tier(item.path):
        _OUTSIDE_UNIT_RAN["seen"] = True
        yield
        return
    GUARD.install(item.nodeid)
    try:
        yield
    finally:
        GUARD.remove()


@pytest.fixture(autouse=True)
def _no_new_java_process(request):
    """Fails the test (in teardown) if a java process below this pytest started while it ran."""
    before = {pid for pid, _ in java_processes()}
    yield
    new = [(pid, cmd) for pid, cmd in java_processes() if pid not in before]
    if new:
        pytest.fail(f"{request.node.nodeid} started a JVM under this pytest: {new}", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """A run of the unit tier alone: no java process descends from this pytest at its end."""
    items = getattr(session, "items", [])
    if _OUTSIDE_UNIT_RAN["seen"] or not any(in_unit_tier(item.path) for item in items):
        return
    running = java_processes()
    if running:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the unit tier left java processes under this pytest: {running}"
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
