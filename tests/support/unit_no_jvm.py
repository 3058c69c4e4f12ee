"""The unit tier starts no JVM: a guard that makes every way into one fail while a unit test runs,
and a probe that finds any ``java`` process below this pytest.

``tests/unit/conftest.py`` installs the guard around each item under ``tests/unit`` only (setup,
call and teardown, so a session fixture such as ``spark`` that a unit test asked for is refused
too) and puts everything back afterwards: the Spark tier in the same pytest process is untouched.
What the guard refuses:

* ``pyspark.java_gateway.launch_gateway`` (wherever it was imported to, e.g.
  ``pyspark.core.context``): the one place pyspark starts ``spark-submit``, hence the JVM;
* ``SparkContext._ensure_initialized`` and ``SparkSession.Builder.getOrCreate``: also the use of
  a JVM another tier started earlier in the same process;
* ``subprocess.Popen`` of ``java``, ``spark-submit``, ``spark-class``, ``pyspark``,
  ``spark-shell`` or ``scripts/spark-submit.sh``: a JVM in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

UNIT_DIR = Path(__file__).resolve().parents[1] / "unit"

JVM_COMMANDS = {"java", "spark-submit", "spark-submit.sh", "spark-class", "pyspark", "spark-shell"}


class JvmStartRefused(RuntimeError):
    """Raised by the guard: something in a unit test tried to start or use a JVM."""


def in_unit_tier(path: os.PathLike) -> bool:
    try:
        Path(path).resolve().relative_to(UNIT_DIR)
    except ValueError:
        return False
    return True


def java_processes() -> list[tuple[int, str]]:
    """(pid, command line) of every ``java`` process that descends from this process."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            name, cmdline = child.name(), child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if name == "java" or (cmdline and os.path.basename(cmdline[0]) == "java"):
            found.append((child.pid, " ".join(cmdline)[:300]))
    return found


def _command_name(args: Any) -> str:
    if isinstance(args, (str, bytes, os.PathLike)):
        first = os.fsdecode(args).split()[0] if os.fsdecode(args).split() else ""
    else:
        args = list(args)
        first = os.fsdecode(args[0]) if args else ""
        # "bash scripts/spark-submit.sh ...", "sh -c 'spark-submit ...'"
        if os.path.basename(first) in {"bash", "sh", "env"} and len(args) > 1:
            rest = [os.fsdecode(a) for a in args[1:] if not os.fsdecode(a).startswith("-")]
            if rest:
                first = rest[0].split()[0] if rest[0].split() else rest[0]
    return os.path.basename(first)


class Guard:
    """Installed for one test (``install``/``remove``); ``current`` names it in the refusal."""

    def __init__(self) -> None:
        self.current: str | None = None
        self._saved: list[tuple[Any, str, Any]] = []

    def refuse(self, what: str) -> JvmStartRefused:
        return JvmStartRefused(
            f"{self.current or 'a unit test'}: {what} - the unit tier (tests/unit) starts no JVM; "
            "a test that needs Spark belongs in tests/spark (the session-scoped `spark` fixture), "
            "a whole spark-submit run in tests/e2e"
        )

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
        setattr(owner, name, value)

    def install(self, nodeid: str) -> None:
        self.current = nodeid
        if self._saved:
            return
        guard = self
        try:
            import pyspark.java_gateway as java_gateway
            from pyspark import SparkContext
            from pyspark.sql import SparkSession
        except ImportError:  # no pyspark: nothing in-process can start a JVM
            java_gateway = None
        if java_gateway is not None:
            original = java_gateway.launch_gateway

            def launch_gateway(*args: Any, **kwargs: Any) -> Any:
                raise guard.refuse("pyspark tried to launch the JVM gateway (spark-submit)")

            # Every module that imported the function by name (pyspark.core.context does).
            for module in list(sys.modules.values()):
                if module is not None and getattr(module, "launch_gateway", None) is original:
                    self._patch(module, "launch_gateway", launch_gateway)

            def ensure_initialized(cls: Any, *args: Any, **kwargs: Any) -> Any:
                raise guard.refuse("SparkContext._ensure_initialized (a SparkContext needs a JVM)")

            def get_or_create(builder: Any) -> Any:
                raise guard.refuse("SparkSession.builder.getOrCreate() (a SparkSession needs a JVM)")

            self._patch(SparkContext, "_ensure_initialized", classmethod(ensure_initialized))
            self._patch(SparkSession.Builder, "getOrCreate", get_or_create)

        popen_init: Callable[..., None] = subprocess.Popen.__init__

        def guarded_init(popen: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
            name = _command_name(args)
            if name in JVM_COMMANDS:
                raise guard.refuse(f"a subprocess would start {name!r}")
            popen_init(popen, args, *rest, **kwargs)

        self._patch(subprocess.Popen, "__init__", guarded_init)

    def remove(self) -> None:
        while self._saved:
            owner, name, value = self._saved.pop()
            setattr(owner, name, value)
        self.current = None

    @property
    def installed(self) -> bool:
        return bool(self._saved)


GUARD = Guard()
