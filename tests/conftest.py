"""Shared fixtures: one local SparkSession for the whole run and a real S3 API (moto's server
mode) on 127.0.0.1, started and stopped by the fixtures."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = ROOT / "samples" / "clothing"
SAMPLE_LABELS = ROOT / "samples" / "clothing-labels.csv"

# Set before any Spark JVM starts: Python workers inherit the JVM's environment, not later changes.
# The secret is recognisable so that tests can prove it never leaks into logs or outputs.
FAKE_SECRET = "lookalikeFAKEsecretDoNotLog0123456789abcd"
os.environ.update({
    "AWS_ACCESS_KEY_ID": "lookalikeFAKEKEYID",
    "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "SPARK_LOCAL_IP": "127.0.0.1",
    "SPARK_CONF_DIR": str(ROOT / "conf" / "spark"),
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "PYSPARK_PYTHON": sys.executable,
    "PYSPARK_DRIVER_PYTHON": sys.executable,
})
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_SESSION_TOKEN", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def spark():
    from lookalike.config import Config, SparkConfig
    from lookalike.jobs.common import build_session

    cfg = Config(spark=SparkConfig(master="local[2]", app_name="lookalike-tests", conf={
        "spark.sql.shuffle.partitions": 4,
        "spark.default.parallelism": 4,
        "spark.ui.enabled": "false",
        "spark.driver.memory": "2g",
    }))
    session = build_session(cfg)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto_server on a free loopback port, in a subprocess, for the whole test session."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3):
    name = f"lookalike-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def upload_dir(s3, bucket: str, source: Path, prefix: str) -> list[str]:
    keys = []
    for path in sorted(source.rglob("*")):
        if path.is_file():
            key = f"{prefix}{path.relative_to(source).as_posix()}"
            s3.upload_file(str(path), bucket, key)
            keys.append(key)
    return keys


@pytest.fixture
def sample_images() -> list[Path]:
    return sorted(SAMPLE_DIR.rglob("*.jpg"))


def run_script(args: list[str], timeout: float = 600, env: dict | None = None, cwd: Path = ROOT):
    """Run a command from the repo root; returns CompletedProcess with text output."""
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def pytest_collection_modifyitems(session, config, items):
    """The standalone-cluster tests last: they start half a dozen JVMs and unpack a 0.6 GB archive
    per executor, and in CI they suffered most from the compat suite running beside them (their
    time nearly doubled); by the end of the main suite the compat one has finished."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_cluster.py"))
