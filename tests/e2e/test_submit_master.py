"""Which Spark master a job runs on: spark-submit's --master wins over the config's spark.master,
whether the job is started by plain spark-submit (as EMR steps do) or by ./spark-submit.sh; the
config's applies when Python starts Spark itself or ./spark-submit.sh is given no --master.

Which master wins is a property of spark-submit, so each case is a process of its own: the light
envcheck job, the four started at once by one module fixture and each test reading its own."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pyspark
import pytest

from lookalike.jobs import common
from tests.support.paths import ROOT
from tests.support.procs import run_script

pytestmark = pytest.mark.slow  # several spark-submit applications (make test-fast leaves them out)

SPARK_SUBMIT = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
JOB = ["--config", "conf/local.yaml", "--set", "spark.master=local[2]"]
COMMANDS = {
    "spark-submit": [SPARK_SUBMIT, "--master", "local[1]", str(ROOT / "jobs" / "envcheck.py"), *JOB],
    "spark-submit.sh": [str(ROOT / "spark-submit.sh"), "envcheck", "--master", "local[1]", *JOB],
    "spark-submit.sh without --master": [str(ROOT / "spark-submit.sh"), "envcheck", "--set", "spark.master=local[1]"],
    "python alone": [sys.executable, str(ROOT / "jobs" / "envcheck.py"), "--set", "spark.master=local[1]"],
}


@pytest.fixture(scope="module")
def runs():
    """Each command's CompletedProcess, by name; the processes run side by side."""
    with ThreadPoolExecutor(max_workers=len(COMMANDS)) as pool:
        futures = {name: pool.submit(run_script, command, timeout=300) for name, command in COMMANDS.items()}
        return {name: future.result() for name, future in futures.items()}


def master_line(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    lines = [line for line in output.splitlines() if "Spark master " in line]
    assert lines, output[-3000:]
    return lines[-1]


@pytest.mark.parametrize("how", ["spark-submit", "spark-submit.sh"])
def test_the_master_given_to_spark_submit_wins_over_the_config(runs, how):
    result = runs[how]
    assert "Spark master local[1] (from spark-submit)" in master_line(result)
    assert "spark.master=local[2] from the config is not used" in result.stdout + result.stderr


def test_spark_submit_sh_without_master_uses_the_config_and_python_alone_uses_it_too(runs):
    assert "Spark master local[1] (from spark-submit)" in master_line(runs["spark-submit.sh without --master"])
    assert "Spark master local[1] (spark.master in the config)" in master_line(runs["python alone"])


@pytest.mark.parametrize(
    "master, bound",
    [
        ("local[2]", "127.0.0.1"),
        ("spark://127.0.0.1:7077", "127.0.0.1"),  # make cluster-up's master, on the loopback
        ("spark://10.0.0.5:7077", ""),  # a real cluster: its executors must reach the driver
        ("yarn", ""),
    ],
)
def test_the_driver_binds_to_the_loopback_only_where_the_master_is_on_this_machine(master, bound):
    # Issue 24: 127.0.0.1 for every master made a client-mode driver unreachable from its executors.
    env = {k: v for k, v in os.environ.items() if k != "SPARK_LOCAL_IP"}
    result = subprocess.run(
        [str(ROOT / "spark-submit.sh"), "embed", "--master", master],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "LOOKALIKE_SUBMIT_ECHO": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"SPARK_LOCAL_IP={bound}"
    assert f"--master {master} " in result.stdout.splitlines()[1]
    assert common.on_loopback(master) == bool(bound)  # what a job started by Python decides
