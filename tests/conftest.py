"""Fixtures shared by every tier: one local SparkSession for the whole run, a real S3 API (moto's
server mode) on 127.0.0.1, and the toy model the Spark tests embed with. Helpers live in
``tests/support``; nothing imports this file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import env, toy_model
from tests.support.net import free_port, wait_for_port
from tests.support.paths import SAMPLE_DIR

env.apply()


@pytest.fixture(scope="session")
def spark():
    from lookalike.config import Config, SparkConfig
    from lookalike.jobs.common import build_session

    cfg = Config(
        spark=SparkConfig(
            master="local[2]",
            app_name="lookalike-tests",
            conf={
                "spark.sql.shuffle.partitions": 4,
                "spark.default.parallelism": 4,
                "spark.ui.enabled": "false",
                "spark.driver.memory": "2g",
            },
        )
    )
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


@pytest.fixture
def sample_images() -> list[Path]:
    return sorted(SAMPLE_DIR.rglob("*.jpg"))


@pytest.fixture(scope="session")
def toy_model_file(tmp_path_factory) -> Path:
    """The toy ``.keras`` model (tests/support/toy_model.py), built once per test session."""
    return toy_model.build(tmp_path_factory.mktemp("toy-model") / "toy.keras")


@pytest.fixture(scope="session")
def toy_overrides(toy_model_file) -> list[str]:
    """``--set`` values for a job that embeds with the toy model."""
    return toy_model.overrides(toy_model_file)


# Files that take minutes of mostly waiting (a standalone cluster and its environment archive): with
# several test processes (make test's pytest-xdist) they start first, beside the rest of the suite,
# instead of running alone at its end. In one process the tiers keep their order (unit first).
LONG_FILES = ("tests/e2e/test_cluster.py",)


def pytest_collection_modifyitems(session, config, items):
    if getattr(config.option, "numprocesses", None):
        items.sort(key=lambda item: not item.nodeid.startswith(LONG_FILES))
