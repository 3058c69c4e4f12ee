"""Which Spark master a job runs on: spark-submit's --master wins over the config's spark.master,
whether the job is started by plain spark-submit (as EMR steps do) or by ./spark-submit.sh; the
config's applies when Python starts Spark itself or ./spark-submit.sh is given no --master.

Which master wins is a property of spark-submit, so each case is a process of its own: the light
envcheck job, the four started at once by one module fixture and each test reading its own."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import pyspark
import pytest

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
