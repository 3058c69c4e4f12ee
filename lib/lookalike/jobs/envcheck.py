"""envcheck job: which Python, packages and lookalike code the executors run, against the driver.

Run it once on a new cluster or after building a new archive, before a long job:
``./spark-submit.sh envcheck --master URL --env build/lookalike-env.tar.gz``. It fails (exit 2) when an
executor runs other lookalike code or another Python minor version than the driver, and
when executors cannot import lookalike at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import sys
import time

from lookalike.config import Config
from lookalike.errors import ClusterEnvironmentError
from lookalike.jobs.common import job_main
from lookalike.runinfo import library_versions

log = logging.getLogger(__name__)

# How long envcheck waits for every registered executor to run a probe.
PROBE_WAIT_S = 900.0


def code_fingerprint() -> str:
    """Hash of the lookalike package's .py files as this process imports them."""
    import lookalike

    package = os.path.dirname(lookalike.__file__)
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(package):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(f for f in filenames if f.endswith(".py")):
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, package).replace(os.sep, "/").encode() + b"\0")
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def probe() -> dict:
    """What this Python process is: runs on the driver and inside every executor's Python worker."""
    import pyspark

    import lookalike

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "python": platform.python_version(),
        "lookalike_file": lookalike.__file__,
        "code": code_fingerprint(),
        "pyspark": pyspark.__version__,
        "versions": library_versions(),
    }


def _probe_partition(_rows):
    yield json.dumps(probe())


def registered_executors(spark) -> int:
    """How many executors the driver knows of now (1 in local mode, where the driver runs the tasks)."""
    infos = spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()
    return max(1, len(infos) - 1)  # the list includes the driver


def executors_answered(probes) -> int:
    """Executors among the probes' Python processes: each has its own host and working directory."""
    return len({(i["host"], i["cwd"]) for i in probes})


def _probe_once(sc, tasks: int) -> list[str]:
    try:
        return sc.parallelize(range(tasks), tasks).mapPartitions(_probe_partition).collect()
    except Exception as exc:  # Py4JJavaError or PythonException, depending on the Spark version
        text = str(exc)
        if "No module named 'lookalike'" in text or "No module named 'yaml'" in text:
            python = sc.getConf().get("spark.pyspark.python", os.environ.get("PYSPARK_PYTHON", "python3"))
            raise ClusterEnvironmentError(
                f"executors cannot import lookalike with their Python ({python}). Build the "
                f"environment archive with ./spark-submit.sh --package-env and submit with "
                f"--env build/lookalike-env.tar.gz (see docs/cluster.md)."
            ) from None
        raise


def executor_probes(spark, tasks: int = 0, wait_s: float = PROBE_WAIT_S, poll_s: float = 2.0) -> tuple[list[dict], int]:
    """One probe per distinct Python worker process, and how many executors are registered.

    An executor counts as registered before it has fetched ``--archives``, and it takes tasks only
    once it has unpacked them (minutes for a 2 GB environment). Tasks therefore go to whichever
    executor is ready first, so one round of probes may never reach a slower one: probe again
    until every registered executor (told apart by host and working directory) has answered, or
    ``wait_s`` has passed.
    """
    sc = spark.sparkContext
    tasks = tasks or max(2, sc.defaultParallelism) * 2
    deadline = time.monotonic() + wait_s
    unique: dict = {}
    while True:
        for text in _probe_once(sc, tasks):
            info = json.loads(text)
            unique[(info["host"], info["pid"])] = info
        answered = executors_answered(unique.values())
        registered = registered_executors(spark)
        if answered >= registered or time.monotonic() >= deadline:
            break
        log.info(
            "%d of %d registered executors have answered; probing again (a new executor may still be "
            "unpacking the environment archive)",
            answered,
            registered,
        )
        time.sleep(poll_s)
    executors = sorted(unique.values(), key=lambda i: (i["host"], i["cwd"], i["pid"]))
    return executors, registered


def compare(driver: dict, executors: list[dict]) -> list[str]:
    """Differences that make a run unsafe: each names the executor and what differs."""
    problems = []
    minor = lambda version: ".".join(version.split(".")[:2])  # noqa: E731
    for info in executors:
        where = f"executor Python {info['executable']} on {info['host']} (pid {info['pid']})"
        if info["code"] != driver["code"]:
            problems.append(
                f"{where} runs other lookalike code ({info['lookalike_file']}, fingerprint "
                f"{info['code']}) than the driver ({driver['code']}): rebuild the archive "
                f"with ./spark-submit.sh --package-env"
            )
        if minor(info["python"]) != minor(driver["python"]):
            problems.append(f"{where} is Python {info['python']}, the driver {driver['python']}")
    return problems


def run(spark, cfg: Config) -> dict:
    driver = probe()
    executors, registered = executor_probes(spark)
    problems = compare(driver, executors)
    answered = executors_answered(executors)
    if answered < registered:
        # Not a failure: with dynamic allocation executors come and go. But the check covered less.
        log.warning(
            "only %d of %d registered executors ran a probe within %.0f s; the others were not checked",
            answered,
            registered,
            PROBE_WAIT_S,
        )
    for info in executors:
        log.info(
            "executor on %s pid %d: python %s (%s), lookalike %s [%s], pyspark %s",
            info["host"],
            info["pid"],
            info["python"],
            info["executable"],
            info["lookalike_file"],
            info["code"],
            info["pyspark"],
        )
    for problem in problems:
        log.error("%s", problem)
    summary = {
        "job": "envcheck",
        "ok": not problems,
        "master": spark.sparkContext.master,
        "spark": spark.version,
        "driver": driver,
        "executors": executors,
        "executors_registered": registered,
        "executors_answered": answered,
        "problems": problems,
    }
    log.info(
        "envcheck %s: %d executor Python process(es) on %d of %d executors checked against the driver",
        "passed" if not problems else "FAILED",
        len(executors),
        answered,
        registered,
    )
    print(json.dumps(summary, sort_keys=True, default=str))
    return summary


def main(argv: list[str] | None = None, spark=None) -> int:
    """The command line (``jobs/envcheck.py``); ``spark``: run in a session the caller owns."""
    return job_main(
        argv, run, "Report the executors' Python environment and compare it with the driver's.", spark=spark
    )
