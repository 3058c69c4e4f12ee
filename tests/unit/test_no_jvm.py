"""The unit tier starts no JVM (tests/unit/conftest.py, tests/support/unit_no_jvm.py): every way
into one fails here with the guard's message naming the test, and no java process runs below this
pytest."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.paths import ROOT
from tests.support.unit_no_jvm import GUARD, JvmStartRefused, java_processes


def _started_here() -> list[tuple[int, str]]:
    """Java processes below this pytest that are not the Spark tier's session JVM (which runs
    here only when ``pytest tests`` ran the Spark tier first, in this process)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None) if gateway is not None else None
    running = java_processes()
    if SparkContext._active_spark_context is None or proc is None:
        return running
    return [(pid, cmd) for pid, cmd in running if pid != proc.pid]


def _refused(request) -> str:
    return re.escape(request.node.nodeid) + r": .* - the unit tier \(tests/unit\) starts no JVM"


def test_starting_a_spark_session_fails_with_the_guards_message(request):
    from pyspark.sql import SparkSession

    assert GUARD.installed and GUARD.current == request.node.nodeid
    with pytest.raises(JvmStartRefused, match=_refused(request)):
        SparkSession.builder.master("local[1]").appName("must-not-start").getOrCreate()
    # The way the jobs build theirs, too.
    from lookalike.config import Config, SparkConfig
    from lookalike.jobs.common import build_session

    with pytest.raises(JvmStartRefused, match=_refused(request)):
        build_session(Config(spark=SparkConfig(master="local[1]", app_name="must-not-start")))
    assert _started_here() == []


def test_a_spark_context_and_the_gateway_itself_are_refused(request):
    from pyspark import SparkContext
    from pyspark.java_gateway import launch_gateway

    with pytest.raises(JvmStartRefused, match=_refused(request)):
        SparkContext("local[1]", "must-not-start")
    with pytest.raises(JvmStartRefused, match=_refused(request)):
        launch_gateway()
    with pytest.raises(JvmStartRefused, match=_refused(request)):
        SparkContext._ensure_initialized()
    assert _started_here() == []


@pytest.mark.parametrize(
    "command",
    [
        ["java", "-version"],
        ["spark-submit", "--version"],
        [str(ROOT / "scripts" / "spark-submit.sh"), "--help"],
        ["bash", str(ROOT / "scripts" / "spark-submit.sh"), "--help"],
        "java -version",
    ],
)
def test_a_jvm_in_a_subprocess_is_refused(request, command):
    with pytest.raises(JvmStartRefused, match=_refused(request)):
        subprocess.run(command, shell=isinstance(command, str), capture_output=True)


def test_other_subprocesses_still_run():
    done = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "ok"


def test_no_java_process_runs_under_this_pytest():
    """Whatever ran before this test in the unit tier, no JVM descends from this pytest now. (Run
    after the Spark tier in one process, ``pytest tests``, the Spark tier's own session may still
    be alive: its JVM, the gateway's process, is the only java process allowed then.)"""
    from pyspark import SparkContext

    assert _started_here() == []
    if SparkContext._active_spark_context is None:
        assert java_processes() == []


def test_the_guard_is_put_back_after_a_unit_test(request):
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    assert GUARD.installed
    replaced = {(owner, name): value for owner, name, value in GUARD._saved}
    assert set(replaced) >= {
        (SparkSession.Builder, "getOrCreate"),
        (SparkContext, "_ensure_initialized"),
        (subprocess.Popen, "__init__"),
    }
    GUARD.remove()  # what the hook does after each unit test
    try:
        assert not GUARD.installed and GUARD.current is None
        for (owner, name), value in replaced.items():
            assert (owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)) is value
        assert SparkSession.Builder.getOrCreate.__module__ == "pyspark.sql.session"
        assert subprocess.Popen.__init__.__module__ == "subprocess"
    finally:
        GUARD.install(request.node.nodeid)
    with pytest.raises(JvmStartRefused, match=_refused(request)):
        SparkSession.builder.getOrCreate()


def test_the_probe_sees_a_java_process_below_this_pytest():
    """The check is not vacuous: a process that calls itself java (here: sleep, started with
    os.posix_spawn, which the guard does not wrap) is found while it runs and gone once reaped."""
    import os
    import shutil
    import signal

    pid = os.posix_spawn(shutil.which("sleep"), ["java", "30"], dict(os.environ))
    try:
        assert pid in {found for found, _ in java_processes()}
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert pid not in {found for found, _ in java_processes()}
