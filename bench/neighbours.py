"""Neighbours: the Spark job against what a user would run instead, on N random unit vectors.

(a) the neighbours job through ./spark-submit.sh on local[*], cold (new JVM, new Python workers),
    end to end: read, normalise, order, broadcast, score, write, publish;
(b) FAISS IndexFlatIP (exact inner product, faiss-cpu, all cores) in one fresh process that reads
    the same Parquet table and writes the same long table (item_id, rank, neighbour_id, score);
(c) Spark MLlib BucketedRandomProjectionLSH.approxSimilarityJoin, the tool a Spark user would
    reach for, at a smaller N (its self-join grows with N^2), with recall@k against exact; the
    job (a) runs at that N too, for a like-for-like time and memory comparison.
Plus the kernel alone (one core): float32 matmul, and the top-k selection done with argpartition
on every sub-block versus the running-threshold selection that lookalike.neighbours.topk uses; and the
symmetric topk_pair (one matmul, both directions) against topk_block once, twice, and against
topk_block in the other direction (the same column-side output, computed from its own matmul).
And (d) neighbours.same: the job with 50 groups of Zipf-distributed sizes (--groups) against the
ungrouped exact run on the same table, one-sided (symmetric: false, as the grouped run scores) and
as by default, beside the work ratio sum(n_g^2) / N^2 that partitioned search should approach.
And (e) the duplicates job (./spark-submit.sh duplicates) on the same N with planted near-duplicate
groups (--planted groups of 2-6 copies, chains among them, noise far below the threshold): wall time,
the pairs it found against the pairs planted, and its groups against the planted ones, exactly.

Wall time and peak resident memory of the whole process tree (JVM and Python workers included,
sampled every 0.1 s) for each. Prints a table with ratios and writes JSON to
bench/results/neighbours.json.

    .venv/bin/python bench/neighbours.py [--n 50000] [--dim 512] [--k 10] [--lsh-n 1000]
                                         [--groups 50] [--planted 2000]
                                         [--skip kernel,faiss,job,lsh,groups,duplicates]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))


# ---------------------------------------------------------------------------------------------
# Data


def make_table(directory: Path, n: int, dim: int, seed: int = 0, files: int = 4) -> tuple[list[str], np.ndarray]:
    """N random unit vectors as an embeddings table (the embed job's schema), ids in random order."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"item-{i:08d}" for i in rng.permutation(n)]
    write_embeddings(directory, ids, x, "random-unit-vectors", files)
    return ids, x


def write_embeddings(directory: Path, ids: list[str], x: np.ndarray, weights: str, files: int = 4) -> None:
    """Vectors as an embeddings table with the embed job's schema, in ``files`` Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lookalike import schemas

    n, dim = x.shape
    directory.mkdir(parents=True, exist_ok=True)
    schema = schemas.arrow_schema(schemas.EMBEDDINGS)
    step = -(-n // files)
    for part, start in enumerate(range(0, n, step)):
        rows = min(step, n - start)
        chunk = ids[start : start + rows]
        values = pa.array(x[start : start + rows].ravel(), pa.float32())
        embedding = pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * dim), values)
        columns = {
            "item_id": pa.array(chunk),
            "uri": pa.array([f"file:///bench/{i}.jpg" for i in chunk]),
            "source_version": pa.nulls(rows, pa.string()),
            "source_bytes": pa.nulls(rows, pa.int64()),
            "width": pa.nulls(rows, pa.int32()),
            "height": pa.nulls(rows, pa.int32()),
            "model": pa.array(["vgg16"] * rows),
            "weights": pa.array([weights] * rows),
            "pooling": pa.array(["avg"] * rows),
            "dim": pa.array([dim] * rows, pa.int32()),
            "embedding": embedding.cast(pa.list_(pa.field("element", pa.float32(), False))),
            "model_fingerprint": pa.array(["bench"] * rows),
            "run_id": pa.array(["bench"] * rows),
            "embedded_at": pa.array([0] * rows, pa.timestamp("us", tz="UTC")),
        }
        # Columns the table gained later (precision, runtime) are nullable: null, as in old tables.
        pq.write_table(
            pa.table([columns.get(f.name, pa.nulls(rows, f.type)) for f in schema], schema=schema),
            directory / f"part-{part:05d}.parquet",
        )


def exact_topk(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k most similar other rows (numpy, for recall only)."""
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), 2048):
        s = x[start : start + 2048] @ x.T
        s[np.arange(len(s)), np.arange(start, start + len(s))] = -np.inf
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        out[start : start + 2048] = np.take_along_axis(part, order, 1)
    return out


# ---------------------------------------------------------------------------------------------
# Measuring a command


def measure(command: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Wall time, peak RSS of the process tree, exit status and output of ``command``."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    peak = [0]
    done = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                total = root.memory_info().rss
                for child in root.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            done.wait(0.1)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        done.set()
        watcher.join()
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(peak[0] / 2**20, 1),
        "returncode": proc.returncode,
        "stdout": stdout,
        "stderr": stderr,
    }


def last_json(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def check(result: dict, what: str) -> None:
    if result["returncode"] != 0:
        output = result["stdout"][-2000:] + result["stderr"][-4000:]
        sys.exit(f"{what} failed (exit {result['returncode']}):\n{output}")


# ---------------------------------------------------------------------------------------------
# (a) the job, (b) FAISS, (c) MLlib LSH


def run_job(embeddings: Path, output: Path, k: int, driver_memory: str = "8g", settings: tuple = ()) -> dict:
    # local[*] runs everything in the driver JVM, whose heap spark-submit fixes before the job's
    # config is read (1g by default): size it as a user would for the table.
    result = measure(
        [
            str(ROOT / "spark-submit.sh"),
            "neighbours",
            "--config",
            str(ROOT / "conf" / "local.yaml"),
            "--set",
            f"output.embeddings={embeddings}",
            "--set",
            f"output.neighbours={output}",
            "--set",
            f"neighbours.k={k}",
            *[a for s in settings for a in ("--set", s)],
            "--driver-memory",
            driver_memory,
        ]
    )
    check(result, "the neighbours job")
    summary = last_json(result["stdout"])
    return {
        "seconds": result["seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "job_seconds": summary.get("seconds"),
        "phase_seconds": summary.get("phase_seconds"),
        "rows": summary.get("rows"),
        "chunks": summary.get("chunks"),
        "partitions": summary.get("partitions"),
        "symmetric": summary.get("symmetric"),
    }


# ---------------------------------------------------------------------------------------------
# (d) neighbours.same: partitioned search


def zipf_sizes(n: int, groups: int, exponent: float = 1.0) -> np.ndarray:
    """Group sizes proportional to 1 / rank^exponent, summing to n, none empty."""
    weights = 1.0 / np.arange(1, groups + 1) ** exponent
    sizes = np.maximum(1, np.floor(n * weights / weights.sum()).astype(np.int64))
    sizes[0] += n - sizes.sum()
    return sizes


GROUP_KERNEL_SCRIPT = r"""
import sys, time, json
import numpy as np
sys.path.insert(0, sys.argv[1])
from lookalike.neighbours import chunks, exact, rules, topk
n, dim, k, rows = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sizes = np.array(json.loads(sys.argv[6]))
rng = np.random.default_rng(2)
c = rng.standard_normal((n, dim), dtype=np.float32); c /= np.linalg.norm(c, axis=1, keepdims=True)
group = np.repeat(np.arange(len(sizes)), sizes); rng.shuffle(group)
ids = np.array([f"item-{j:08d}" for j in range(n)], dtype=object)
layout = rules.Layout(same=True, width=1)
chunk = chunks._chunk(0, list(ids), c, group[:, None].astype(np.int64), layout)
pick = np.sort(rng.choice(n, rows, replace=False))

def best(fn, repeat=2):
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)

out = {"ungrouped": best(lambda: [topk.topk_block(c[pick[s:s + 1024]], c, k, self_index=pick[s:s + 1024])
                                  for s in range(0, rows, 1024)]),
       "grouped": best(lambda: exact.grouped_topk(chunk, ids[pick], c[pick], group[pick][:, None].astype(np.int64),
                                                  k, 1024, None, layout))}
print(json.dumps(out))
"""


def run_group_kernel(n: int, dim: int, k: int, sizes: np.ndarray, rows: int = 8192) -> dict:
    """One core, no Spark: ``rows`` queries against all N candidates, ungrouped (topk_block)
    against grouped (exact.grouped_topk, what a task runs with neighbours.same)."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            GROUP_KERNEL_SCRIPT,
            str(ROOT / "lib"),
            str(n),
            str(dim),
            str(k),
            str(rows),
            json.dumps(sizes.tolist()),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    )
    if result.returncode:
        sys.exit(f"grouped kernel benchmark failed:\n{result.stderr[-3000:]}")
    seconds = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "queries": rows,
        "seconds": {key: round(v, 3) for key, v in seconds.items()},
        "ratio": round(seconds["grouped"] / seconds["ungrouped"], 4),
    }


def run_groups(workdir: Path, embeddings: Path, ids: list[str], k: int, groups: int, dim: int) -> dict:
    """The job with neighbours.same over Zipf-sized groups against the same table ungrouped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sizes = zipf_sizes(len(ids), groups)
    category = np.repeat([f"cat-{g:02d}" for g in range(groups)], sizes)
    np.random.default_rng(3).shuffle(category)
    attributes = workdir / "attributes.parquet"
    pq.write_table(pa.table({"item_id": ids, "category": category}), attributes)
    runs = {}
    for name, settings in (
        ("grouped", (f"neighbours.attributes={attributes}", "neighbours.same=category")),
        ("ungrouped_one_sided", ("neighbours.symmetric=false",)),
        ("ungrouped_default", ()),
    ):
        print(f"(d) neighbours.same: {name} ...", flush=True)
        runs[name] = run_job(embeddings, workdir / f"neighbours-{name}", k, settings=settings)
    print("(d) neighbours.same: the kernel alone, one core ...", flush=True)
    kernel = run_group_kernel(len(ids), dim, k, sizes)
    work = float((sizes.astype(np.float64) ** 2).sum() / float(len(ids)) ** 2)
    score = {name: r["phase_seconds"]["score"] + r["phase_seconds"].get("merge", 0.0) for name, r in runs.items()}
    return {
        "groups": groups,
        "largest": int(sizes.max()),
        "smallest": int(sizes.min()),
        "work_ratio": round(work, 4),
        "runs": runs,
        "score_plus_merge_seconds": score,
        "kernel": kernel,
        "time_ratio_vs_one_sided": round(score["grouped"] / score["ungrouped_one_sided"], 4),
        "time_ratio_vs_default": round(score["grouped"] / score["ungrouped_default"], 4),
    }


def planted_table(
    directory: Path, n: int, dim: int, planted: int, min_score: float = 0.95, seed: int = 5
) -> tuple[list[list[str]], int]:
    """N unit vectors of which ``planted`` groups of 2..6 are near-copies of one random vector: each
    copy is the original plus noise of norm 0.05 (cosine ~0.999 with it, ~0.997 between copies),
    and every fifth group is a chain (copy j is copy j - 1 plus noise of norm 0.26: cosine ~0.968
    with it, ~0.937 with copy j - 2, so a ~ b, b ~ c, a !~ c). Random unit vectors of d = 512 have
    cosines below ~0.3, far under any threshold. Returns the groups to expect (the connected
    components of each planted group's pairs >= min_score, in float64: a chain whose link dips
    under the threshold splits) and the number of those pairs."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 7, planted)
    members = int(sizes.sum())
    if members > n:
        sys.exit(f"--planted {planted} needs {members} items, more than --n {n}")
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(n)
    truth, position, pairs = [], 0, 0
    for number, size in enumerate(sizes):
        rows = order[position : position + size]
        position += size
        original = x[rows[0]].astype(np.float64)
        chain = number % 5 == 0
        copies, previous = [original], original
        for _ in range(1, size):
            vector = (previous if chain else original) + (0.26 if chain else 0.05) * _unit_noise(rng, dim)
            vector /= np.linalg.norm(vector)
            copies.append(vector)
            previous = vector
        x[rows] = np.array(copies, dtype=np.float32)
        unit = x[rows].astype(np.float64)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        linked = np.triu(unit @ unit.T, 1) >= min_score
        pairs += int(linked.sum())
        truth.extend(_components(rows, linked))
    ids = [f"item-{i:08d}" for i in rng.permutation(n)]
    write_embeddings(directory, ids, x, "random-unit-vectors-planted-duplicates")
    return [sorted(ids[r] for r in rows) for rows in truth if len(rows) > 1], pairs


def _components(rows: np.ndarray, linked: np.ndarray) -> list[list[int]]:
    """Connected components of one planted group's pairs above the threshold (a chain may split)."""
    label = list(range(len(rows)))

    def root(i):
        while label[i] != i:
            i = label[i]
        return i

    for a, b in zip(*np.nonzero(linked), strict=False):
        label[root(a)] = root(b)
    out: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        out.setdefault(root(i), []).append(int(row))
    return list(out.values())


def _unit_noise(rng, dim: int) -> np.ndarray:
    noise = rng.standard_normal(dim)
    return noise / np.linalg.norm(noise)


def run_duplicates(workdir: Path, n: int, dim: int, planted: int, driver_memory: str = "8g") -> dict:
    """(e) The duplicates job on N vectors with planted groups: time, pairs and exact groups."""
    import pyarrow.parquet as pq

    from lookalike import publish

    table = workdir / "embeddings-planted"
    print(f"(e) duplicates: writing {n} vectors with {planted} planted groups ...", flush=True)
    truth, planted_pairs = planted_table(table, n, dim, planted)
    output = workdir / "duplicates"
    result = measure(
        [
            str(ROOT / "spark-submit.sh"),
            "duplicates",
            "--config",
            str(ROOT / "conf" / "local.yaml"),
            "--set",
            f"output.embeddings={table}",
            "--set",
            f"output.duplicates={output}",
            "--driver-memory",
            driver_memory,
        ]
    )
    check(result, "the duplicates job")
    summary = last_json(result["stdout"])
    rows = pq.read_table(publish.resolve(str(output), None), columns=["group_id", "item_id"]).to_pylist()
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["group_id"], []).append(row["item_id"])
    found_groups = sorted(sorted(members) for members in found.values())
    return {
        "n": n,
        "planted_groups": planted,
        "planted_items": sum(len(g) for g in truth),
        "seconds": result["seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "job_seconds": summary.get("seconds"),
        "phase_seconds": summary.get("phase_seconds"),
        "pairs": summary.get("pairs"),
        "pairs_planted_above_threshold": planted_pairs,
        "groups": summary.get("groups"),
        "items_in_groups": summary.get("items_in_groups"),
        "largest_group": summary.get("largest_group"),
        "component_rounds": summary.get("component_rounds"),
        "groups_equal_planted": found_groups == sorted(truth),
    }


FAISS_SCRIPT = r"""
import sys, time, json
started = time.perf_counter()
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, faiss
source, target, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
table = pq.read_table(source, columns=["item_id", "embedding"])
ids = table.column("item_id").to_numpy(zero_copy_only=False)
column = table.column("embedding").combine_chunks()
x = np.ascontiguousarray(column.values.to_numpy().reshape(len(column), -1), dtype=np.float32)
faiss.normalize_L2(x)
loaded = time.perf_counter()
index = faiss.IndexFlatIP(x.shape[1])
index.add(x)
scores, found = index.search(x, k + 1)
searched = time.perf_counter()
# Drop each item itself (or the last hit when the item is not among its own k+1, e.g. duplicates).
own = found == np.arange(len(x))[:, None]
own[~own.any(axis=1), -1] = True
found = found[~own].reshape(len(x), k)
scores = scores[~own].reshape(len(x), k)
order = np.argsort(ids, kind="stable")
out = pa.table({"item_id": pa.array(np.repeat(ids[order], k), pa.string()),
                "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), len(x))),
                "neighbour_id": pa.array(ids[found[order].ravel()], pa.string()),
                "score": pa.array(scores[order].ravel(), pa.float32())})
pq.write_table(out, target, row_group_size=65536)
print(json.dumps({"read": loaded - started, "search": searched - loaded,
                  "write": time.perf_counter() - searched, "threads": faiss.omp_get_max_threads()}))
"""


def run_faiss(embeddings: Path, output: Path, k: int) -> dict:
    result = measure([sys.executable, "-c", FAISS_SCRIPT, str(embeddings), str(output), str(k)])
    check(result, "FAISS")
    return {
        "seconds": result["seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "phase_seconds": {key: round(v, 2) for key, v in last_json(result["stdout"]).items() if key != "threads"},
        "threads": last_json(result["stdout"]).get("threads"),
    }


LSH_SCRIPT = r"""
import sys, time, json
started = time.perf_counter()
from pyspark.sql import SparkSession, Window, functions as F
from pyspark.ml.feature import BucketedRandomProjectionLSH
from pyspark.ml.functions import array_to_vector
source, k, bucket, tables = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
spark = (SparkSession.builder.master("local[*]").config("spark.driver.memory", "4g")
         .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "8").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
items = spark.read.parquet(source).select("item_id", array_to_vector("embedding").alias("features"))
model = BucketedRandomProjectionLSH(inputCol="features", outputCol="hashes", bucketLength=bucket,
                                    numHashTables=tables, seed=0).fit(items)
# Unit vectors: Euclidean distance sqrt(2 - 2 cos) < 2 keeps every candidate pair the hashes find.
pairs = (model.approxSimilarityJoin(items, items, 2.0, distCol="distance")
         .select(F.col("datasetA.item_id").alias("item_id"), F.col("datasetB.item_id").alias("neighbour_id"),
                 "distance")
         .filter("item_id != neighbour_id"))
by_score = Window.partitionBy("item_id").orderBy("distance", "neighbour_id")
ranked = (pairs.withColumn("rank", F.row_number().over(by_score))
          .filter(F.col("rank") <= k))
rows = [(r.item_id, r.neighbour_id) for r in ranked.collect()]
print(json.dumps({"pairs": rows}))
spark.stop()
"""


def run_lsh(embeddings: Path, ids: list[str], x: np.ndarray, k: int, bucket: float, tables: int) -> dict:
    result = measure(
        [sys.executable, "-c", LSH_SCRIPT, str(embeddings), str(k), str(bucket), str(tables)],
        env={"PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"},
    )
    check(result, "MLlib LSH")
    found: dict[str, set] = {}
    for item, neighbour in last_json(result["stdout"])["pairs"]:
        found.setdefault(item, set()).add(neighbour)
    exact = exact_topk(x, k)
    hits = sum(len(found.get(ids[i], set()) & {ids[j] for j in exact[i]}) for i in range(len(ids)))
    return {
        "seconds": result["seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "recall_at_k": round(hits / (len(ids) * k), 4),
        "bucket_length": bucket,
        "hash_tables": tables,
        "items_with_k": sum(len(v) >= k for v in found.values()),
    }


def agreement(ours: Path, theirs: Path) -> float:
    """Share of (item, neighbour) pairs the two tables have in common (rank order aside)."""
    import pyarrow.parquet as pq

    def pairs(path):
        t = pq.read_table(path, columns=["item_id", "neighbour_id"]).to_pydict()
        return set(zip(t["item_id"], t["neighbour_id"], strict=False))

    a, b = pairs(ours), pairs(theirs)
    return round(len(a & b) / max(len(b), 1), 6)


# ---------------------------------------------------------------------------------------------
# The kernel alone

KERNEL_SCRIPT = r"""
import sys, time, json
import numpy as np
sys.path.insert(0, sys.argv[1])
from lookalike.neighbours import topk
n, dim, k, rows = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(1)
c = rng.standard_normal((n, dim), dtype=np.float32); c /= np.linalg.norm(c, axis=1, keepdims=True)
q = c[:rows].copy()

def best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)

def matmul_only(width):
    for s in range(0, n, width):
        q @ c[s:s + width].T

def argpartition_every_block(width):
    bs = np.full((rows, k), -np.inf, np.float32); bi = np.zeros((rows, k), np.int64)
    for s in range(0, n, width):
        sc = q @ c[s:s + width].T
        part = np.argpartition(sc, sc.shape[1] - k, axis=1)[:, -k:]
        allv = np.concatenate([bs, np.take_along_axis(sc, part, 1)], 1)
        alli = np.concatenate([bi, part + s], 1)
        top = np.argpartition(allv, allv.shape[1] - k, axis=1)[:, -k:]
        bs, bi = np.take_along_axis(allv, top, 1), np.take_along_axis(alli, top, 1)

out = {}
for width in (2048, 4096, 8192):
    out[f"matmul_w{width}"] = best(lambda: matmul_only(width))
    out[f"argpartition_w{width}"] = best(lambda: argpartition_every_block(width))
    out[f"threshold_w{width}"] = best(lambda: topk.topk_block(q, c, k, self_index=np.arange(rows), sub_block=width))

# The symmetric kernel on an off-diagonal block (queries drawn apart from the n candidates),
# against what the job computes without symmetry: topk_block for the rows, and for the columns
# either the same call again (the matmul it saves) or the candidates as queries in blocks of
# `rows` (the same output: n top-k lists, each rescored exactly). One block is topk_pair's worst
# case: the n column lists are rescored for 1024 queries only; the job's PairScorer runs the
# column pools across all of a task's blocks and rescores them once.
p = rng.standard_normal((rows, dim), dtype=np.float32); p /= np.linalg.norm(p, axis=1, keepdims=True)
def other_direction():
    for s in range(0, n, rows):
        topk.topk_block(c[s:s + rows], p, k)
out["pair_block"] = best(lambda: topk.topk_block(p, c, k))
out["pair_other_direction"] = best(other_direction)
out["pair"] = best(lambda: topk.topk_pair(p, c, k))
print(json.dumps(out))
"""


def run_kernel(n: int, dim: int, k: int, rows: int = 1024) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", KERNEL_SCRIPT, str(ROOT / "lib"), str(n), str(dim), str(k), str(rows)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    )
    if result.returncode:
        sys.exit(f"kernel benchmark failed:\n{result.stderr[-3000:]}")
    seconds = json.loads(result.stdout.strip().splitlines()[-1])
    flops = 2.0 * rows * n * dim
    pair = {
        "vs_2x_block": round(seconds["pair"] / (2 * seconds["pair_block"]), 3),
        "vs_block_plus_other_direction": round(
            seconds["pair"] / (seconds["pair_block"] + seconds["pair_other_direction"]), 3
        ),
    }
    return {
        "rows": rows,
        "candidates": n,
        "seconds_per_block": {key: round(v, 4) for key, v in seconds.items()},
        "matmul_gflops": round(flops / min(v for key, v in seconds.items() if key.startswith("matmul")) / 1e9, 1),
        "pair_ratio": pair,
    }


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    # approxSimilarityJoin de-duplicates candidate pairs with both full vectors attached (8 KB a
    # pair at d=512), so its shuffle grows with N^2 x collision rate. Spark's guidance for
    # normalised inputs (bucketLength 1-10 x N^(-1/d), ~1 here) puts every pair in one bucket; a
    # bucket of 0.01 (~0.23 sd of a projection) keeps ~6% of pairs per table, which this machine
    # can still shuffle at N=1000.
    parser.add_argument("--lsh-n", type=int, default=1000)
    parser.add_argument("--lsh-bucket-length", type=float, default=0.01)
    parser.add_argument("--lsh-tables", type=int, default=3)
    parser.add_argument("--groups", type=int, default=50, help="(d): groups of Zipf-distributed sizes")
    parser.add_argument("--planted", type=int, default=2000, help="(e): near-duplicate groups planted")
    parser.add_argument("--skip", default="", help="comma-separated: kernel,faiss,job,lsh,groups,duplicates")
    parser.add_argument("--workdir", default=None, help="where the tables go (default: a temporary directory)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "neighbours.json"))
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lookalike-bench-neighbours-"))
    report = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "lsh_n": args.lsh_n,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_start": os.getloadavg(),
    }

    print(f"writing {args.n} x {args.dim} random unit vectors to {workdir} ...", flush=True)
    big = workdir / "embeddings"
    big_ids, _ = make_table(big, args.n, args.dim)
    if "kernel" not in skip:
        print("kernel (one core) ...", flush=True)
        report["kernel"] = run_kernel(args.n, args.dim, args.k)
    if "job" not in skip:
        print("(a) neighbours job, cold ...", flush=True)
        report["job"] = run_job(big, workdir / "neighbours", args.k)
    if "faiss" not in skip:
        print("(b) FAISS IndexFlatIP ...", flush=True)
        report["faiss"] = run_faiss(big, workdir / "faiss.parquet", args.k)
        if "job" not in skip:
            report["faiss"]["agreement_with_job"] = agreement(workdir / "neighbours", workdir / "faiss.parquet")
    if "lsh" not in skip:
        small = workdir / "embeddings-small"
        ids, x = make_table(small, args.lsh_n, args.dim, seed=1)
        print(f"(c) MLlib LSH at N={args.lsh_n} ...", flush=True)
        report["lsh"] = run_lsh(small, ids, x, args.k, args.lsh_bucket_length, args.lsh_tables)
        if "job" not in skip:
            print(f"(a) neighbours job at N={args.lsh_n} ...", flush=True)
            report["job_small"] = run_job(small, workdir / "neighbours-small", args.k)
    if "groups" not in skip:
        report["same_groups"] = run_groups(workdir, big, big_ids, args.k, args.groups, args.dim)
    if "duplicates" not in skip:
        report["duplicates"] = run_duplicates(workdir, args.n, args.dim, args.planted)
    report["load_average_end"] = os.getloadavg()

    print_table(report)
    write_report(report, args.out)
    return 0


def write_report(report: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True))
    print(f"\nwrote {out}")


def print_table(report: dict) -> None:
    n, lsh_n = report["n"], report["lsh_n"]
    print(
        f"\nN={n}, d={report['dim']}, k={report['k']}, {report['cpus']} CPUs; load average at start "
        f"{report['load_average_start'][0]:.1f}, at end {report['load_average_end'][0]:.1f}"
    )
    faiss = report.get("faiss")
    rows = [
        ("(a) neighbours job, spark-submit, cold", n, report.get("job")),
        ("(b) FAISS IndexFlatIP, one process", n, faiss),
        ("(a) neighbours job, spark-submit, cold", lsh_n, report.get("job_small")),
        ("(c) MLlib BRP LSH approxSimilarityJoin", lsh_n, report.get("lsh")),
    ]
    print(f"{'method':42s} {'N':>7s} {'wall s':>8s} {'peak MB':>8s} {'vs FAISS':>9s} {'recall@k':>9s}")
    for name, size, r in rows:
        if not r:
            continue
        ratio = f"{r['seconds'] / faiss['seconds']:.2f}x" if faiss and size == n else ""
        recall = f"{r['recall_at_k']:.3f}" if "recall_at_k" in r else ("1 (exact)" if "job" in name else "")
        print(f"{name:42s} {size:>7d} {r['seconds']:>8.1f} {r['peak_rss_mb']:>8.0f} {ratio:>9s} {recall:>9s}")
    if report.get("job") and report["job"].get("phase_seconds"):
        print(
            f"job phases (s): {report['job']['phase_seconds']} of {report['job']['job_seconds']} s in run(); "
            f"the rest is JVM and session start-up"
        )
    if faiss:
        print(
            f"FAISS phases (s): {faiss['phase_seconds']}, {faiss['threads']} threads; "
            f"pairs in common with the job: {faiss.get('agreement_with_job')}"
        )
    grouped = report.get("same_groups")
    if grouped:
        print(
            f"(d) neighbours.same, {grouped['groups']} Zipf groups ({grouped['smallest']}..{grouped['largest']} "
            f"items): scoring + merge {grouped['score_plus_merge_seconds']} s; grouped / ungrouped one-sided "
            f"{grouped['time_ratio_vs_one_sided']}, / ungrouped default (symmetric) "
            f"{grouped['time_ratio_vs_default']}; work ratio sum(n_g^2)/N^2 = {grouped['work_ratio']}"
        )
        kernel = grouped["kernel"]
        print(
            f"    kernel alone, one core, {kernel['queries']} queries x N candidates: {kernel['seconds']} s, "
            f"grouped / ungrouped {kernel['ratio']}"
        )
    dup = report.get("duplicates")
    if dup:
        print(
            f"(e) duplicates job, N={dup['n']}, {dup['planted_groups']} planted groups ({dup['planted_items']} "
            f"items): {dup['seconds']} s wall, {dup['peak_rss_mb']:.0f} MB peak; {dup['pairs']} pairs found "
            f"({dup['pairs_planted_above_threshold']} planted >= 0.95), {dup['groups']} groups, largest "
            f"{dup['largest_group']}, {dup['component_rounds']} rounds; groups equal the planted ones: "
            f"{dup['groups_equal_planted']}"
        )
        print(f"    phases (s): {dup['phase_seconds']}")
    kernel = report.get("kernel")
    if kernel:
        print(
            f"kernel, one core, {kernel['rows']} queries x {kernel['candidates']} candidates "
            f"({kernel['matmul_gflops']} GFLOP/s matmul), seconds per block:"
        )
        for key, value in kernel["seconds_per_block"].items():
            print(f"  {key:22s} {value:.3f}")
        if "pair_ratio" in kernel:
            ratio = kernel["pair_ratio"]
            print(
                f"  topk_pair / (2 x topk_block) = {ratio['vs_2x_block']}, "
                f"/ (topk_block + other direction) = {ratio['vs_block_plus_other_direction']}"
            )


if __name__ == "__main__":
    sys.exit(main())
