"""Neighbours at scale: exact against IVF (neighbours.method: ivf), through ./spark-submit.sh.

(1) N = 200,000 (d = 512, k = 10): the exact job and the IVF job on the same table, wall time,
    peak memory and recall@k of IVF against the exact job's own table (every item, not a sample),
    next to the recall the IVF job measured itself on its sampled queries.
(2) N = 1,000,000: the IVF job (exact would take hours on two cores): wall time, peak memory,
    its sampled recall@k, and recall@k on 1,000 queries checked here by brute force.

Next to each IVF job, FAISS alone in one fresh process (``IndexIVFFlat``, all cores): the same
nlist and the nprobe the job chose (or was given), trained on as many vectors as the job's
k-means, then every item added and searched as a query for k + 1 (itself dropped); its wall time
includes reading the table and writing the lists, as the job's does. Its recall@k is checked on
the same brute-force sample.

The vectors are synthetic *clustered* unit vectors, not uniform noise: catalogue embeddings come
in families of similar products, and IVF relies on that structure (on uniform random vectors the
nearest neighbours are barely nearer than anything else and no index beats brute force; use
``--uniform`` to see it). Each item = normalise(cluster centre + noise); cluster centres = family
centre + noise; cluster sizes follow a Zipf-like law. Same-cluster cosine ~0.74, same family
~0.41, unrelated ~0 (by construction).

Prints a table and writes JSON to bench/results/neighbours_scale.json. Per-core rates for the
README's extrapolation are in the JSON (queries per core-second).

    .venv/bin/python bench/neighbours_scale.py [--n 200000] [--big-n 1000000] [--nprobe N]
                                               [--skip exact,ivf,big,faiss] [--uniform]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from neighbours import check, last_json, measure, write_embeddings, write_report  # noqa: E402  (bench/neighbours.py)

from lookalike.config import NeighboursConfig  # noqa: E402

FAMILY_SPREAD = 0.9
ITEM_SPREAD = 0.8


def clustered(n: int, dim: int, seed: int, uniform: bool = False) -> np.ndarray:
    """(n, dim) float32 unit vectors: families of clusters of items (see the module docstring)."""
    rng = np.random.default_rng(seed)
    if uniform:
        x = rng.standard_normal((n, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    families = max(10, n // 2000)
    clusters = max(20, n // 100)
    scale = 1 / np.sqrt(dim)
    family_centres = rng.standard_normal((families, dim)).astype(np.float32) * np.float32(scale)
    family_centres /= np.linalg.norm(family_centres, axis=1, keepdims=True)
    centres = family_centres[rng.integers(0, families, clusters)] + np.float32(
        FAMILY_SPREAD * scale
    ) * rng.standard_normal((clusters, dim), dtype=np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.8
    members = rng.choice(clusters, size=n, p=weights / weights.sum())
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        block = centres[members[start:stop]] + np.float32(ITEM_SPREAD * scale) * rng.standard_normal(
            (stop - start, dim), dtype=np.float32
        )
        x[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def write_table(directory: Path, x: np.ndarray) -> list[str]:
    """The vectors as an embeddings table; ids in shuffled order."""
    ids = [f"item-{i:08d}" for i in np.random.default_rng(7).permutation(len(x))]
    write_embeddings(directory, ids, x, "synthetic-clustered", files=8)
    return ids


def run_job(embeddings: Path, output: Path, k: int, driver_memory: str, sets: tuple = (), **settings) -> dict:
    """The neighbours job through ./spark-submit.sh; ``sets``: more ``--set key=value`` overrides."""
    command = [
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
        "--driver-memory",
        driver_memory,
    ]
    for key, value in settings.items():
        command += ["--set", f"neighbours.{key}={value}"]
    if not any(item.startswith("output.catalog.uri=") for item in sets):
        # Each output its own catalog: lookalike.neighbours is registered at one location per catalog.
        sets = (*sets, f"output.catalog.uri={output.parent / (output.name + '-catalog.db')}")
    for item in sets:
        command += ["--set", item]
    result = measure(command, timeout=6 * 3600)
    check(result, f"the neighbours job ({settings})")
    summary = last_json(result["stdout"])
    return {
        "summary": summary,
        "seconds": result["seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "settings": settings,
        "job_seconds": summary.get("seconds"),
        "phase_seconds": summary.get("phase_seconds"),
        "rows": summary.get("rows"),
        "recall_sample": summary.get("recall_sample"),
        "ivf": summary.get("ivf"),
    }


FAISS_IVF_SCRIPT = r"""
import sys, time, json
started = time.perf_counter()
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, faiss
source, target, k, nlist, nprobe, train_size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
table = pq.read_table(source, columns=["item_id", "embedding"])
ids = table.column("item_id").to_numpy(zero_copy_only=False)
column = table.column("embedding").combine_chunks()
x = np.ascontiguousarray(column.values.to_numpy().reshape(len(column), -1), dtype=np.float32)
faiss.normalize_L2(x)
mark = [time.perf_counter()]
phases = {"read": mark[0] - started}
def phase(name):
    now = time.perf_counter()
    phases[name] = now - mark[0]
    mark[0] = now
quantizer = faiss.IndexFlatIP(x.shape[1])
index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
sample = x[np.sort(np.random.default_rng(0).choice(len(x), min(len(x), train_size), replace=False))]
index.train(sample)
phase("train")
index.add(x)
phase("add")
index.nprobe = nprobe
scores, found = index.search(x, k + 1)
phase("search")
# Drop each item itself (or the last hit when the item is not among its own k+1, e.g. duplicates).
own = found == np.arange(len(x))[:, None]
own[~own.any(axis=1), -1] = True
found = found[~own].reshape(len(x), k)
scores = scores[~own].reshape(len(x), k)
order = np.argsort(ids, kind="stable")
present = found[order].ravel() >= 0
out = pa.table({"item_id": pa.array(np.repeat(ids[order], k)[present], pa.string()),
                "neighbour_id": pa.array(ids[found[order].ravel()[present]], pa.string()),
                "score": pa.array(scores[order].ravel()[present], pa.float32())})
pq.write_table(out, target, row_group_size=65536)
phase("write")
print(json.dumps({"phases": phases, "threads": faiss.omp_get_max_threads()}))
"""


def run_faiss_ivf(embeddings: Path, output: Path, k: int, ivf: dict) -> dict:
    """FAISS alone with the job's nlist, nprobe and training-sample size (FAISS_IVF_SCRIPT)."""
    settings = [str(k), str(ivf["nlist"]), str(ivf["nprobe"]), str(ivf["trained_on"])]
    result = measure([sys.executable, "-c", FAISS_IVF_SCRIPT, str(embeddings), str(output), *settings])
    check(result, "FAISS IndexIVFFlat")
    out = last_json(result["stdout"])
    return {
        "method": "faiss",
        "seconds": result["seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "phase_seconds": {key: round(v, 2) for key, v in out["phases"].items()},
        "threads": out["threads"],
        "nlist": ivf["nlist"],
        "nprobe": ivf["nprobe"],
    }


def neighbour_sets(path: Path, items=None) -> dict:
    import pyarrow.dataset as ds

    if path.is_dir():  # a published table: its current data files (not the Iceberg metadata beside them)
        from lookalike.io.current import current

        dataset = ds.dataset([f.replace("file://", "") for f in current(str(path)).files], format="parquet")
    else:
        dataset = ds.dataset(str(path), format="parquet")
    table = dataset.to_table(
        columns=["item_id", "neighbour_id"], filter=None if items is None else ds.field("item_id").isin(list(items))
    )
    out: dict = {}
    for item, neighbour in zip(
        table.column("item_id").to_pylist(), table.column("neighbour_id").to_pylist(), strict=False
    ):
        out.setdefault(item, set()).add(neighbour)
    return out


def recall_between(found: dict, exact: dict) -> float:
    wanted = sum(len(v) for v in exact.values())
    return sum(len(found.get(q, set()) & v) for q, v in exact.items()) / max(1, wanted)


def brute_force_sample(x: np.ndarray, ids: list[str], k: int, size: int, seed: int = 3) -> dict:
    """{id: set of neighbour ids} of ``size`` random items, by one float32 matmul per item block."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), size, replace=False))
    out = {}
    for start in range(0, size, 256):
        block = rows[start : start + 256]
        scores = x[block] @ x.T
        scores[np.arange(len(block)), block] = -np.inf
        best = np.argpartition(-scores, k, axis=1)[:, :k]
        for r, found in zip(block, best, strict=False):
            out[ids[r]] = {ids[j] for j in found}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--big-n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=NeighboursConfig().nprobe, help="default: the job's")
    parser.add_argument("--nlist", type=int, default=0, help="0: the job's default, about sqrt(N)")
    parser.add_argument("--check-queries", type=int, default=1000)
    parser.add_argument("--driver-memory", default="12g")
    parser.add_argument("--uniform", action="store_true", help="uniform random vectors instead of clustered")
    parser.add_argument("--skip", default="", help="comma-separated: exact,ivf,big,faiss")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "neighbours_scale.json"))
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lookalike-bench-scale-"))
    cpus = os.cpu_count()
    ivf_settings = {"method": "ivf", "nprobe": args.nprobe, "nlist": args.nlist}
    report = {
        "dim": args.dim,
        "k": args.k,
        "cpus": cpus,
        "data": "uniform" if args.uniform else "clustered",
        "load_average_start": os.getloadavg(),
        "runs": [],
    }

    if not {"exact", "ivf"} <= skip:
        print(f"writing {args.n} x {args.dim} {report['data']} unit vectors ...", flush=True)
        x = clustered(args.n, args.dim, seed=0, uniform=args.uniform)
        table = workdir / "embeddings"
        write_table(table, x)
        del x
        exact = None
        if "exact" not in skip:
            print(f"exact job, N={args.n} ...", flush=True)
            exact = {
                "n": args.n,
                "method": "exact",
                **run_job(table, workdir / "exact", args.k, args.driver_memory, method="exact"),
            }
            report["runs"].append(exact)
        if "ivf" not in skip:
            print(f"IVF job, N={args.n}, nprobe={args.nprobe} ...", flush=True)
            run = {
                "n": args.n,
                "method": "ivf",
                **run_job(table, workdir / "ivf", args.k, args.driver_memory, **ivf_settings),
            }
            if exact:
                run["recall_all_items"] = round(
                    recall_between(neighbour_sets(workdir / "ivf"), neighbour_sets(workdir / "exact")), 4
                )
                run["speedup_vs_exact"] = round(exact["seconds"] / run["seconds"], 2)
            report["runs"].append(run)
            if "faiss" not in skip:
                print(f"FAISS IndexIVFFlat alone, N={args.n}, nprobe={run['ivf']['nprobe']} ...", flush=True)
                faiss_run = {"n": args.n, **run_faiss_ivf(table, workdir / "faiss.parquet", args.k, run["ivf"])}
                if exact:
                    faiss_run["recall_all_items"] = round(
                        recall_between(neighbour_sets(workdir / "faiss.parquet"), neighbour_sets(workdir / "exact")), 4
                    )
                run["vs_faiss"] = round(run["seconds"] / faiss_run["seconds"], 2)
                report["runs"].append(faiss_run)
    if "big" not in skip:
        print(f"writing {args.big_n} x {args.dim} {report['data']} unit vectors ...", flush=True)
        x = clustered(args.big_n, args.dim, seed=1, uniform=args.uniform)
        table = workdir / "embeddings-big"
        ids = write_table(table, x)
        print(f"IVF job, N={args.big_n}, nprobe={args.nprobe} ...", flush=True)
        run = {
            "n": args.big_n,
            "method": "ivf",
            **run_job(table, workdir / "ivf-big", args.k, args.driver_memory, **ivf_settings),
        }
        print(f"brute force for {args.check_queries} sampled queries ...", flush=True)
        started = time.perf_counter()
        truth = brute_force_sample(x, ids, args.k, args.check_queries)
        run["brute_force_check_seconds"] = round(time.perf_counter() - started, 1)
        run["recall_checked_queries"] = round(recall_between(neighbour_sets(workdir / "ivf-big", truth), truth), 4)
        report["runs"].append(run)
        if "faiss" not in skip:
            print(f"FAISS IndexIVFFlat alone, N={args.big_n}, nprobe={run['ivf']['nprobe']} ...", flush=True)
            faiss_run = {"n": args.big_n, **run_faiss_ivf(table, workdir / "faiss-big.parquet", args.k, run["ivf"])}
            faiss_run["recall_checked_queries"] = round(
                recall_between(neighbour_sets(workdir / "faiss-big.parquet", truth), truth), 4
            )
            run["vs_faiss"] = round(run["seconds"] / faiss_run["seconds"], 2)
            report["runs"].append(faiss_run)
    report["load_average_end"] = os.getloadavg()
    for run in report["runs"]:
        run["queries_per_core_second"] = round(run["n"] / (run["seconds"] * cpus), 1)

    print_table(report)
    write_report(report, args.out)
    return 0


def print_table(report: dict) -> None:
    print(
        f"\nd={report['dim']}, k={report['k']}, {report['cpus']} CPUs, {report['data']} vectors; load average "
        f"{report['load_average_start'][0]:.1f} at start, {report['load_average_end'][0]:.1f} at end"
    )
    print(
        f"{'method':28s} {'N':>9s} {'wall s':>8s} {'peak MB':>8s} {'vs exact':>9s} {'recall (job)':>13s} "
        f"{'recall (check)':>15s} {'q/core-s':>9s} {'vs FAISS':>9s}"
    )
    for run in report["runs"]:
        if run["method"] == "faiss":
            name = f"faiss nlist={run['nlist']} nprobe={run['nprobe']}"
        elif run["method"] == "exact":
            name = "exact"
        else:
            name = f"ivf nlist={run['ivf']['nlist']} nprobe={run['ivf']['nprobe']}"
        sampled = (run.get("recall_sample") or {}).get("recall_at_k")
        checked = run.get("recall_all_items", run.get("recall_checked_queries"))
        speed = f"{1 / run['speedup_vs_exact']:.3f}x" if run.get("speedup_vs_exact") else ""
        print(
            f"{name:28s} {run['n']:>9d} {run['seconds']:>8.1f} {run['peak_rss_mb']:>8.0f} {speed:>9s} "
            f"{'' if sampled is None else f'{sampled:.4f}':>13s} {'' if checked is None else f'{checked:.4f}':>15s} "
            f"{run['queries_per_core_second']:>9.1f} {run.get('vs_faiss', '')!s:>9s}"
        )
        print(f"    phases (s): {run.get('phase_seconds')}")
        if run.get("ivf"):
            i = run["ivf"]
            print(
                f"    lists: {i['list_size']}, {i['chunks']} chunk(s) of {i['chunk_rows']}, {i['tasks']} tasks of "
                f"{i['task_queries']} queries, partial rows per query {i['partial_rows_per_query']}"
            )


if __name__ == "__main__":
    sys.exit(main())
