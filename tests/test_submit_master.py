"""Which Spark master a job runs on: spark-submit's --master wins over the config's spark.master,
whether the job is started by plain spark-submit (as EMR steps do) or by ./spark-submit.sh; the
config's applies when Python starts Spark itself or ./spark-submit.sh is given no --master."""

from __future__ import annotations

import os
import sys

import pyspark
import pytest

from tests.support.paths import ROOT
from tests.support.procs import run_script

pytestmark = pytest.mark.slow  # several spark-submit applications (make test-fast leaves it out)

SPARK_SUBMIT = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")


def master_line(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    lines = [line for line in output.splitlines() if "Spark master " in line]
    assert lines, output[-3000:]
    return lines[-1]


@pytest.mark.parametrize("how", ["spark-submit", "spark-submit.sh"])
def test_the_master_given_to_spark_submit_wins_over_the_config(how):
    job = ["--config", "conf/local.yaml", "--set", "spark.master=local[2]"]
    if how == "spark-submit":
        command = [SPARK_SUBMIT, "--master", "local[1]", str(ROOT / "jobs" / "envcheck.py"), *job]
    else:
        command = [str(ROOT / "spark-submit.sh"), "envcheck", "--master", "local[1]", *job]
    result = run_script(command, timeout=300)
    assert "Spark master local[1] (from spark-submit)" in master_line(result)
    assert "spark.master=local[2] from the config is not used" in result.stdout + result.stderr


def test_spark_submit_sh_without_master_uses_the_config_and_python_alone_uses_it_too():
    wrapped = run_script([str(ROOT / "spark-submit.sh"), "envcheck", "--set", "spark.master=local[1]"], timeout=300)
    assert "Spark master local[1] (from spark-submit)" in master_line(wrapped)
    alone = run_script([sys.executable, str(ROOT / "jobs" / "envcheck.py"), "--set", "spark.master=local[1]"],
                       timeout=300)
    assert "Spark master local[1] (spark.master in the config)" in master_line(alone)
