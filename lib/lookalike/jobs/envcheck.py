"""envcheck job: which Python, packages and lookalike code the executors run, against the driver.

Run it once on a new cluster or after building a new archive, before a long job:
``./spark-submit.sh envcheck --master URL --env build/lookalike-env.tar.gz``. It fails (exit 1) when an
executor runs other lookalike code or another Python minor version than the driver, and (exit 2)
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

from lookalike.config import Config
from lookalike.errors import ClusterEnvironmentError
from lookalike.jobs.common import job_main
from lookalike.runinfo import library_versions

log = logging.getLogger(__name__)


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


def executor_probes(spark, tasks: int = 0) -> list[dict]:
    """One probe per distinct Python worker process that ran one of ``tasks`` tasks."""
    sc = spark.sparkContext
    tasks = tasks or max(2, sc.defaultParallelism) * 2
    try:
        raw = sc.parallelize(range(tasks), tasks).mapPartitions(_probe_partition).collect()
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
    unique = {}
    for text in raw:
        info = json.loads(text)
        unique[(info["host"], info["pid"])] = info
    return sorted(unique.values(), key=lambda i: (i["host"], i["cwd"], i["pid"]))


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
    executors = executor_probes(spark)
    problems = compare(driver, executors)
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
        "problems": problems,
    }
    log.info(
        "envcheck %s: %d executor Python process(es) checked against the driver",
        "passed" if not problems else "FAILED",
        len(executors),
    )
    print(json.dumps(summary, sort_keys=True, default=str))
    return summary


def main(argv: list[str] | None = None, spark=None) -> int:
    """The command line (``jobs/envcheck.py``); ``spark``: run in a session the caller owns."""
    return job_main(
        argv, run, "Report the executors' Python environment and compare it with the driver's.", spark=spark
    )
