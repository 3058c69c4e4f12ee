"""The process environment every test runs in, set by ``tests/conftest.py`` before any Spark JVM
starts (Python workers inherit the JVM's environment, not later changes).

The secret is recognisable so that tests can prove it never leaks into logs or outputs."""

from __future__ import annotations

import os
import sys

from tests.support.paths import ROOT

FAKE_SECRET = "lookalikeFAKEsecretDoNotLog0123456789abcd"

TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "lookalikeFAKEKEYID",
    "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "SPARK_LOCAL_IP": "127.0.0.1",
    "SPARK_CONF_DIR": str(ROOT / "conf" / "spark"),
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "PYSPARK_PYTHON": sys.executable,
    "PYSPARK_DRIVER_PYTHON": sys.executable,
}

# The JVMs of the tests (the session's gateway, every spark-submit they start, the standalone
# cluster's executors through spark.executor.extraJavaOptions) live seconds to minutes and run
# little hot JVM code: the C2 compiler's warm-up costs them more CPU than it saves (measured:
# four test files, two processes, 242 s -> 181-208 s; one envcheck
# application 11.6 -> 7.8 CPU-s). Only the JIT tier changes; no result depends on it.
JVM_OPTIONS = "-XX:TieredStopAtLevel=1"

# Credentials a developer's shell may carry must not reach the tests' fake endpoints.
DROPPED = ("AWS_PROFILE", "AWS_SESSION_TOKEN")


def apply() -> None:
    os.environ.update(TEST_ENV)
    opts = os.environ.get("SPARK_SUBMIT_OPTS", "")
    if "TieredStopAtLevel" not in opts:
        os.environ["SPARK_SUBMIT_OPTS"] = f"{opts} {JVM_OPTIONS}".strip()
    for name in DROPPED:
        os.environ.pop(name, None)
