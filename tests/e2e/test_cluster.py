"""The jobs on a real Spark standalone cluster: a master and two workers on 127.0.0.1 started by
scripts/cluster.sh (separate JVMs, separate executors and Python workers, so nothing can lean on
driver-side state).

- envcheck runs with executors using only the venv-pack archive that `./spark-submit.sh
  --package-env` builds, and proves where their Python and code come from and that their library
  versions (TensorFlow and Keras included) are the driver's;
- the pipeline (embed and neighbours) runs on sample images, and the neighbours job (exact with
  symmetric blocks over several broadcast chunks, and IVF) on a synthetic embeddings table, each
  compared with the same job run in local mode. These test how the work is split over executors,
  not how Python gets there, so their executors use this checkout's interpreter, as a cluster with
  a shared Python install would (PYSPARK_PYTHON, what spark-submit.sh passes without --env).

Slow by nature. The archive holds TensorFlow: the first build in a checkout makes a virtualenv
(~2 min from the pip cache), later runs only rebuild the wheel and repack (~1 min) when lib/
changed; it is kept in build/test-env/. Each application that uses it unpacks it once per executor
(~2 GB, 22,000 files: most of such an application's time on 2 cores), hence one such application.
The four applications are submitted at once, each limited to one 1-core executor per worker, and
each test waits for its own: their JVM and executor start-ups overlap.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lookalike.config import load_config
from lookalike.jobs import neighbours as neighbours_job
from tests.support.brute_force import brute_force, random_vectors
from tests.support.embed_rows import assert_embeddings_agree
from tests.support.env import JVM_OPTIONS
from tests.support.neighbour_tables import assert_matches, embeddings_dir, make_ids, read_lists
from tests.support.net import free_port
from tests.support.outputs import read_output
from tests.support.paths import ROOT, SAMPLE_DIR
from tests.support.procs import run_script

pytestmark = (
    pytest.mark.slow
)  # builds the executors' environment archive and runs a standalone cluster (make test-fast leaves it out)

# The job the cluster test runs end to end; "pipeline" once that job is complete: every table it
# writes (embeddings, and neighbours when there) is compared with the local run.
JOB = "pipeline"
IMAGES = 12
COMPAT = bool(os.environ.get("LOOKALIKE_COMPAT"))
# The neighbours job on the cluster: items of dim 32, in 4 partitions (so that exact scoring is
# symmetric: each task scores its own and its paired partitions' candidates), with a broadcast
# limit of 163 candidates (0.03 MB / (4 * 32 + 64) bytes) so that they come in 3 chunks.
NEIGHBOUR_ITEMS, NEIGHBOUR_DIM = 480, 32
NEIGHBOUR_RUNS = {
    "exact": {"k": 6, "partitions": 4, "broadcast_max_mb": 0.03, "block_rows": 50},
    # Every candidate trains the lists (8 lists x 64 >= 480 items: no sampling) and every query is
    # in the recall sample, on the driver both times; the assignment and the scan of the 3 chunks
    # (nprobe 3 of 8) run on the executors. Same data, same seed: the same lists, hence the same
    # table as local mode.
    "ivf": {
        "k": 6,
        "partitions": 4,
        "method": "ivf",
        "nlist": 8,
        "nprobe": 3,
        "seed": 5,
        "block_rows": 50,
        "broadcast_max_mb": 0.03,
    },
}


# Applications submitted at once (cluster_runs); every one gets one 1-core, 512 MB executor per worker.
APPS = 4
PER_APP = [
    "--conf",
    "spark.executor.memory=512m",
    "--conf",
    "spark.executor.cores=1",
    "--conf",
    "spark.cores.max=2",
    # Both executors registered before the first task, so that the tasks spread over both.
    "--conf",
    "spark.scheduler.minRegisteredResourcesRatio=1",
    "--conf",
    "spark.scheduler.maxRegisteredResourcesWaitingTime=600s",
    # Short-lived executors, as the drivers (tests/support/env.py): the JIT's C2 tier is not worth it.
    "--conf",
    f"spark.executor.extraJavaOptions={JVM_OPTIONS}",
]


def _timed(label: str, started: float) -> None:
    print(f"[test_cluster] {label}: {time.monotonic() - started:.0f}s", file=sys.stderr)


@pytest.fixture(scope="module")
def env_archive() -> Path:
    """The executors' environment, built the way users build it, once per lib/ and pins."""
    name = "compat" if COMPAT else "main"
    out = ROOT / "build" / "test-env" / f"lookalike-env-{name}.tar.gz"
    started = time.monotonic()
    result = run_script(
        [
            "./spark-submit.sh",
            "--package-env",
            "--output",
            str(out),
            "--work",
            str(out.parent / name),
            "--python",
            getattr(sys, "_base_executable", sys.executable),
            "--compress-level",
            "1",
            "--constraints",
            "constraints-compat.txt" if COMPAT else "constraints.txt",
        ],
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _timed(f"--package-env ({out.stat().st_size >> 20} MB archive)", started)
    return out


def _clean_env() -> dict:
    """The cluster's daemons get no trace of this checkout's Python: executors must use the archive."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env["PATH"] = os.pathsep.join(
        p
        for p in env.get("PATH", "").split(os.pathsep)
        if not p.startswith(str(ROOT)) and os.path.dirname(sys.executable) != p
    )
    env["LOOKALIKE_PYTHON"] = os.environ.get("LOOKALIKE_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A master and two workers on free loopback ports (never `make cluster-up`'s 7077/8080), each
    offering a slot for one executor of every application submitted at once (APPS)."""
    directory = tmp_path_factory.mktemp("cluster")
    port, ui = free_port(), free_port()
    args = [
        "--dir",
        str(directory),
        "--master-port",
        str(port),
        "--ui-port",
        str(ui),
        "--worker-ui-port",
        "0",
        "--workers",
        "2",
        "--cores",
        str(APPS),
        "--memory",
        f"{APPS * 512}m",
    ]
    started = time.monotonic()
    info = {"master": f"spark://127.0.0.1:{port}", "ui": ui, "dir": directory, "args": args}
    try:
        up = subprocess.run(
            [str(ROOT / "scripts" / "cluster.sh"), "up", *args],
            cwd=ROOT,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        _timed("cluster up", started)
        yield info
    finally:
        subprocess.run(
            [str(ROOT / "scripts" / "cluster.sh"), "down", *args], cwd=ROOT, capture_output=True, timeout=120
        )


def _listening_addresses(pid: int) -> set[str]:
    """The local addresses a process listens on, from /proc (no ss/netstat needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                raw = fields[1].split(":")[0]
                if width == 8:
                    addresses.add(".".join(str(int(raw[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    words = [raw[i : i + 8] for i in range(0, 32, 8)]
                    if words[:2] == ["00000000", "00000000"] and words[2] == "FFFF0000":
                        addresses.add(".".join(str(int(words[3][i : i + 2], 16)) for i in (6, 4, 2, 0)))
                    else:
                        addresses.add("::" if raw == "0" * 32 else raw)
    return addresses


def test_cluster_has_two_workers_and_listens_on_loopback_only(cluster):
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster['ui']}/json/", timeout=5) as response:
        state = json.load(response)
    alive = [w for w in state["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 2 and all(w["host"] == "127.0.0.1" and w["cores"] == APPS for w in alive)
    assert state["url"] == cluster["master"]
    for pidfile in sorted(cluster["dir"].glob("*.pid")):
        addresses = _listening_addresses(int(pidfile.read_text()))
        assert addresses and addresses <= {"127.0.0.1"}, f"{pidfile.stem} listens on {addresses}"


def _summary(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


class Submitted:
    """A ./spark-submit.sh application running on the cluster; ``result()`` waits for it. Its output
    goes to files: a pipe nobody reads while other tests run would stall it once full."""

    def __init__(self, name: str, args: list[str], directory: Path):
        self.name, self.started = name, time.monotonic()
        self.out, self.err = directory / f"{name}.out", directory / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(["./spark-submit.sh", *args], cwd=ROOT, stdout=out, stderr=err, text=True)

    def result(self, timeout: float = 1200) -> subprocess.CompletedProcess:
        returncode = self.proc.wait(timeout=timeout)
        _timed(f"{self.name} on the cluster (submitted with the others)", self.started)
        return subprocess.CompletedProcess(self.proc.args, returncode, self.out.read_text(), self.err.read_text())


def _neighbours_config(directory: Path, method: str, embeddings: str) -> Path:
    config = directory / f"neighbours-{method}.yaml"
    config.write_text(
        json.dumps(
            {  # JSON is YAML
                "spark": {"master": "local[2]", "conf": {"spark.sql.shuffle.partitions": 4}},
                "neighbours": NEIGHBOUR_RUNS[method],
                "output": {
                    "embeddings": embeddings,
                    "neighbours": str(directory / method / "local" / "neighbours"),
                    # Each run its own catalog: the runs share one embeddings table.
                    "catalog": {"uri": str(directory / method / "local" / "catalog.db")},
                },
            }
        )
    )
    return config


@pytest.fixture(scope="module")
def cluster_runs(cluster, env_archive, tmp_path_factory, toy_overrides, neighbour_embeddings):
    """Every application the tests below check, submitted to the cluster at once (APPS)."""
    directory = tmp_path_factory.mktemp("cluster-runs")
    runs: dict = {}
    try:
        # Start only once both executors are registered (on standalone the ratio counts cores
        # against spark.cores.max). Registered is not ready: an executor takes tasks only after
        # unpacking the archive, so envcheck itself probes until both have answered (CI, stop 29:
        # every one of 32 tasks ran on the executor that was ready first).
        runs["envcheck"] = Submitted(
            "envcheck",
            [
                "envcheck",
                "--master",
                cluster["master"],
                "--env",
                str(env_archive),
                *PER_APP,
                "--conf",
                "spark.default.parallelism=16",
            ],
            directory,
        )
        pipeline = directory / "pipeline"
        config = _write_config(pipeline, toy_overrides)
        outputs = [f"--set=output.{t}={pipeline}/cluster/{t}" for t in ("embeddings", "errors", "neighbours")]
        # No --env here or below: the executors run this checkout's Python (see the module's docstring).
        runs["pipeline"] = Submitted(
            JOB, [JOB, "--config", str(config), *outputs, "--master", cluster["master"], *PER_APP], directory
        )
        runs["pipeline"].config, runs["pipeline"].directory = config, pipeline
        for method in sorted(NEIGHBOUR_RUNS):
            config = _neighbours_config(directory, method, neighbour_embeddings[2])
            run = Submitted(
                f"neighbours-{method}",
                [
                    "neighbours",
                    "--config",
                    str(config),
                    f"--set=output.neighbours={directory / method}/cluster/neighbours",
                    f"--set=output.catalog.uri={directory / method}/cluster/catalog.db",
                    "--master",
                    cluster["master"],
                    *PER_APP,
                ],
                directory,
            )
            run.config, run.directory = config, directory / method
            runs[method] = run
        yield runs
    finally:
        for run in runs.values():
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


def test_executors_run_only_the_archives_python_and_this_code(cluster_runs):
    result = cluster_runs["envcheck"].result(timeout=900)
    # spark-submit merges a Python driver's stderr (the job's log) into its stdout.
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = _summary(result.stdout)
    executors = summary["executors"]
    # Two executors (one per worker), each in its own working directory under its worker's. Both
    # answered although one is usually ready minutes before the other (envcheck probes again).
    assert summary["executors_registered"] == summary["executors_answered"] == 2, result.stdout[-6000:]
    assert {Path(e["cwd"]).parent.parent.name for e in executors} == {"worker-1", "worker-2"}, result.stdout[-6000:]
    for info in executors:
        environment = Path(info["cwd"]) / "environment"
        assert Path(info["executable"]) == environment / "bin" / "python"
        assert Path(info["prefix"]) == environment
        assert Path(info["lookalike_file"]).is_relative_to(environment / "lib")  # the wheel, not lib/
        assert info["code"] == summary["driver"]["code"]  # built from this checkout
        # The C/C++ headers packages ship for building extensions stay out (scripts/package-env.sh).
        site = next((environment / "lib").glob("python3*/site-packages"))
        assert (site / "tensorflow" / "__init__.py").is_file() and (site / "pyarrow" / "__init__.py").is_file()
        assert not [d for d in ("tensorflow", "pyarrow", "openvino") if (site / d / "include").exists()]
    assert summary["driver"]["executable"] != executors[0]["executable"]


def _write_config(directory: Path, model: list[str]) -> Path:
    images = directory / "images"
    for path in sorted(SAMPLE_DIR.rglob("*.jpg"))[:IMAGES]:
        target = images / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    config = directory / "cluster.yaml"
    config.write_text(f"""
spark: {{master: "local[2]", conf: {{spark.sql.shuffle.partitions: 4}}}}
input: {{uri: "{images}", partition_size: 3}}
model: {{{", ".join(s.split(".", 1)[1].replace("=", ": ", 1) for s in model)}, batch_size: 4}}
neighbours: {{k: 3}}
output: {{embeddings: "{directory}/local/embeddings", errors: "{directory}/local/errors",
         neighbours: "{directory}/local/neighbours"}}
""")
    return config


def test_job_on_the_cluster_equals_the_local_run(cluster_runs, spark):
    submitted = cluster_runs["pipeline"]
    started = time.monotonic()
    importlib.import_module(f"lookalike.jobs.{JOB}").run(spark, load_config(str(submitted.config)))
    _timed(f"{JOB} on local[2]", started)
    result = submitted.result()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    out = submitted.directory
    local = read_output(out / "local" / "embeddings").to_pandas().set_index("item_id").sort_index()
    remote = read_output(out / "cluster" / "embeddings").to_pandas().set_index("item_id").sort_index()
    assert len(local) == IMAGES and list(remote.index) == list(local.index)
    for column in ("uri", "source_version", "weights", "dim", "model_fingerprint"):
        assert remote[column].tolist() == local[column].tolist(), column
    assert_embeddings_agree(remote["embedding"], local["embedding"])  # rows in item_id order, both
    assert not np.allclose(np.stack(local["embedding"].iloc[:2]), np.stack(local["embedding"].iloc[1:3]))
    if (out / "local" / "neighbours").exists():
        columns = ["item_id", "rank", "neighbour_id"]
        assert (
            read_output(out / "cluster" / "neighbours").to_pandas()[columns].sort_values(columns[:2]).values.tolist()
            == read_output(out / "local" / "neighbours").to_pandas()[columns].sort_values(columns[:2]).values.tolist()
        )


@pytest.fixture(scope="module")
def neighbour_embeddings(tmp_path_factory):
    """An embeddings table of NEIGHBOUR_ITEMS Gaussian vectors (no clusters, so that IVF with 3 of 8
    lists misses some true neighbours) with exact ties (copies at other scales), so that ranks
    depend on the tie-break across chunks and executors."""
    directory = tmp_path_factory.mktemp("neighbour-embeddings")
    ids = make_ids(NEIGHBOUR_ITEMS, seed=3)
    vectors = random_vectors(NEIGHBOUR_ITEMS, NEIGHBOUR_DIM, seed=8, duplicates=30)
    return ids, vectors, embeddings_dir(directory, ids, vectors, parts=3)


@pytest.mark.parametrize("method", sorted(NEIGHBOUR_RUNS))
def test_neighbours_on_the_cluster_equal_the_local_run(cluster_runs, spark, neighbour_embeddings, method):
    ids, vectors, _ = neighbour_embeddings
    settings = NEIGHBOUR_RUNS[method]
    submitted = cluster_runs[method]
    started = time.monotonic()
    local = neighbours_job.run(spark, load_config(str(submitted.config)))
    _timed(f"neighbours ({method}) on local[2]", started)
    result = submitted.result(timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    remote = _summary(result.stdout)

    out = submitted.directory
    for summary in (local, remote):
        assert summary["method"] == method and summary["queries"] == NEIGHBOUR_ITEMS
        assert summary["partitions"] == 4 and summary["rows"] == settings["k"] * NEIGHBOUR_ITEMS
    if method == "exact":
        for summary in (local, remote):
            assert summary["chunks"] == 3 and summary["symmetric"] is True
        assert_matches(read_lists(str(out / "local" / "neighbours")), brute_force(ids, vectors, settings["k"]))
    else:
        # The lists, their sizes, the chunks and tasks, and the recall: as local mode computed them.
        assert remote["ivf"] == json.loads(json.dumps(local["ivf"])) and remote["recall_at_k"] == local["recall_at_k"]
        # Approximate indeed: equal tables mean the same lists were probed.
        assert remote["ivf"]["nprobe"] < remote["ivf"]["nlist"] == 8
        assert remote["ivf"]["chunks"] == 3 and remote["ivf"]["tasks"] == 4
        assert remote["recall_sample"]["queries"] == NEIGHBOUR_ITEMS and remote["recall_at_k"] < 0.95
    got = read_output(out / "cluster" / "neighbours").sort_by([("item_id", "ascending"), ("rank", "ascending")])
    want = read_output(out / "local" / "neighbours").sort_by([("item_id", "ascending"), ("rank", "ascending")])
    for column in ("item_id", "rank", "neighbour_id"):
        assert got.column(column).to_pylist() == want.column(column).to_pylist(), column
    np.testing.assert_allclose(got.column("score").to_numpy(), want.column("score").to_numpy(), rtol=0, atol=1e-6)


def test_cluster_down_stops_the_daemons_and_their_executors(cluster):
    pids = [int(p.read_text()) for p in cluster["dir"].glob("*.pid")]
    assert len(pids) == 3
    down = subprocess.run(
        [str(ROOT / "scripts" / "cluster.sh"), "down", *cluster["args"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 0, down.stderr
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(cluster["dir"]).encode() in (proc / "cmdline").read_bytes():
                    leftovers.append(int(proc.name))
            except OSError:
                pass
    assert not leftovers and not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not list(cluster["dir"].glob("*.pid"))


def test_emr_steps_submit_the_archive_and_the_config_consistently():
    steps = json.loads((ROOT / "deploy" / "emr-steps.json").read_text())
    assert [s["Name"] for s in steps] == ["lookalike envcheck", "lookalike pipeline"]
    assert steps[0]["ActionOnFailure"] == "CANCEL_AND_WAIT"  # a bad environment stops the queue
    for step in steps:
        args = step["Args"]
        assert step["Type"] == "CUSTOM_JAR" and step["Jar"] == "command-runner.jar"
        assert args[:3] == ["spark-submit", "--deploy-mode", "cluster"]
        confs = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--conf")
        assert confs["spark.archives"].endswith(".tar.gz#environment")
        assert confs["spark.pyspark.python"] == confs["spark.pyspark.driver.python"] == "./environment/bin/python"
        shipped, main = args[args.index("--files") + 1], args[args.index("--files") + 2]
        assert (ROOT / "jobs" / main.rsplit("/", 1)[-1]).is_file()
        assert (ROOT / "conf" / shipped.rsplit("/", 1)[-1]).is_file()
        assert args[args.index("--config") + 1] == shipped.rsplit("/", 1)[-1]  # --files' name on the driver
    for name in ("emr.yaml", "gpu.yaml"):
        cfg = load_config(str(ROOT / "conf" / name))  # validates every key
        assert cfg.model.on_missing_weights == "fail" and cfg.model.weights.startswith("s3://")
    gpu = load_config(str(ROOT / "conf" / "gpu.yaml")).spark.conf
    assert gpu["spark.executor.resource.gpu.amount"] == gpu["spark.task.resource.gpu.amount"] == 1
    assert gpu["spark.task.cpus"] == gpu["spark.executor.cores"]  # the one task decodes on every core


def test_gpu_discovery_script_prints_sparks_resource_json_with_a_stand_in_nvidia_smi(tmp_path):
    # No GPU here: a stand-in prints what `nvidia-smi --query-gpu=index` prints on a 3-GPU host.
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n3\\n'\n")
    fake.chmod(0o755)
    result = run_script(["scripts/gpu-discovery.sh"], env={"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "gpu", "addresses": ["0", "1", "3"]}
