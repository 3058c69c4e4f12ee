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

# Credentials a developer's shell may carry must not reach the tests' fake endpoints.
DROPPED = ("AWS_PROFILE", "AWS_SESSION_TOKEN")


def apply() -> None:
    os.environ.update(TEST_ENV)
    for name in DROPPED:
        os.environ.pop(name, None)
