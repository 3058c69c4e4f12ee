"""Compressed candidates: IVF-PQ (and IVF-SQ8) with exact rescoring of the shortlist, against
IndexIVFFlat (what the IVF job scans today), in FAISS alone (issue 26, item 4).

One process, no Spark. The vectors are ``bench/neighbours_scale.py``'s synthetic clustered unit
vectors (its ``clustered``; N = 1,000,000 by default, d = 512, seed fixed). What it measures:

* Ground truth: the exact top-k (k = 10, the query itself excluded) of 1,000 random queries, by
  brute force (float32 matmul in blocks, the best 64 per query rescored in float64).
* One coarse quantizer for every index: nlist = round(sqrt(N)) centroids from
  ``lookalike.neighbours.ivf.train`` (the job's spherical k-means, FAISS) on the job's training
  sample size (``ivf.train_size``), drawn with a fixed seed. Every index below shares it, and
  every vector goes to the same list in each (one assignment, ``add_preassigned``).
* ``IndexIVFFlat`` (float32 codes, as the job broadcasts them today): recall@k at each nprobe.
* ``IndexIVFPQ`` (by_residual, inner product, 8 bits per sub-quantizer, m in {32, 64, 128}
  sub-quantizers: m bytes per vector) and ``IndexIVFScalarQuantizer`` QT_8bit (SQ8, d bytes per
  vector), their encoders trained on the same sample: a shortlist of r·k candidates per query
  (r in {1, 2, 4, 8}) by the codec's approximate scores (r·k + 1 are asked for, so that the query
  itself, dropped, does not take a place), rescored EXACTLY against the float32 vectors (numpy:
  the shortlisted vectors gathered, float64 dot products, best k kept): recall@k after rescoring.
  Rescoring cannot find a neighbour outside the probed lists, so at the same nprobe its recall is
  at most IndexIVFFlat's.
* Besides (``--l2-m``, m = 128 by default; "" for none): the same IndexIVFPQ in METRIC_L2 over an
  IndexFlatL2 quantizer holding the same centroids. On unit vectors L2 and inner product rank the
  exact neighbours alike, but not the PQ approximations: L2 scores the reconstruction y' by
  ||q - y'||², which, unlike <q, y'>, charges its error to ||y'|| (not a unit vector).

Times: every search (and every rescoring) runs on a sample of ``--time-queries`` random queries
(the 1,000 ground-truth queries are the first of them); seconds per 1,000 queries are that time
scaled, and seconds for all N queries are extrapolated linearly from it (not measured). A
compressed codec is searched once per nprobe for the longest shortlist (max(r)·k + 1; FAISS returns
it best first, so a smaller r's shortlist is its first r·k + 1), and that search time counts for
every r; each r's rescoring is timed on its own. FAISS searches on ``--threads`` threads (2 by
default); the rescoring is numpy on one thread.

Memory: codes + ids of the inverted lists (``invlists.compute_ntotal()`` × (code_size + 8)), and
the whole serialized index (coarse centroids and codebooks included) for comparison. At 10M and
100M it is extrapolated as N·(code_size + 8) + round(sqrt(N))·d·4 (codes and ids, plus the coarse
centroids; codebooks, a few hundred KB, left out). The codecs with rescoring still need the float32
vectors of the shortlist from somewhere: that memory (or traffic) is not in these figures.

Prints the CPU and the command line, a table of every setting and a recall matrix; marks the
cheapest compressed setting (bytes per candidate, then r) that keeps recall@k >= 0.95 at the
nprobe where IndexIVFFlat first reaches 0.95. Writes JSON to bench/results/ivf_pq.json.

    .venv/bin/python bench/ivf_pq.py [--n 1000000] [--nprobe 1,2,3,4,6,8] [--m 32,64,128]
                                     [--r 1,2,4,8] [--l2-m 128] [--time-queries 10000]
                                     [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from neighbours_scale import clustered  # noqa: E402  (bench/neighbours_scale.py)
from tools_scale import cpu_model  # noqa: E402  (bench/tools_scale.py)

from lookalike.neighbours.ivf import train, train_size  # noqa: E402

ID_BYTES = 8  # FAISS stores an int64 id next to each code
TARGET = 0.95
ADD_ROWS = 65_536
RESCORE_ROWS = 512
POOL = 64  # ground truth: float32 candidates per query kept for the float64 rescoring


def ground_truth(x: np.ndarray, queries: np.ndarray, k: int, block: int = 65_536) -> np.ndarray:
    """(q, k) int64: the exact top-k of x[queries] among all of x, each query itself excluded."""
    q = x[queries]
    best_s = np.full((len(q), POOL), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), POOL), -1, dtype=np.int64)
    for start in range(0, len(x), block):
        scores = q @ x[start : start + block].T
        inside = (queries >= start) & (queries < start + len(scores[0]))
        scores[np.flatnonzero(inside), queries[inside] - start] = -np.inf
        keep = min(POOL, scores.shape[1])
        part = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        all_s = np.hstack([best_s, np.take_along_axis(scores, part, axis=1)])
        all_i = np.hstack([best_i, part + start])
        top = np.argpartition(-all_s, POOL - 1, axis=1)[:, :POOL]
        best_s, best_i = np.take_along_axis(all_s, top, axis=1), np.take_along_axis(all_i, top, axis=1)
    exact = np.einsum("qd,qpd->qp", q.astype(np.float64), x[best_i].astype(np.float64))
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(best_i, order, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """recall@k over the queries, and its standard error from the spread of the queries' own."""
    k = truth.shape[1]
    per_query = np.array([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth, strict=True)])
    return float(per_query.mean()), float(per_query.std(ddof=1) / np.sqrt(len(per_query)))


def drop_self(found: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(q, k+1) results to (q, k): each query itself dropped (else the last hit)."""
    own = found == queries[:, None]
    own[~own.any(axis=1), -1] = True
    own[np.cumsum(own, axis=1) > 1] = False  # only the first
    return found[~own].reshape(len(found), -1)[:, :k]


def rescore(x: np.ndarray, queries: np.ndarray, shortlist: np.ndarray, k: int) -> np.ndarray:
    """(q, k) int64: the best k of each query's shortlist by float64 inner product on the float32
    vectors; the query itself and empty slots (-1) excluded."""
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(queries), RESCORE_ROWS):
        rows = queries[start : start + RESCORE_ROWS]
        ids = shortlist[start : start + RESCORE_ROWS]
        gathered = x[np.maximum(ids, 0)].astype(np.float64)
        exact = np.einsum("qd,qrd->qr", x[rows].astype(np.float64), gathered)
        exact[(ids < 0) | (ids == rows[:, None])] = -np.inf
        keep = min(k, ids.shape[1])
        top = np.argpartition(-exact, keep - 1, axis=1)[:, :keep]
        picked = np.take_along_axis(ids, top, axis=1)
        picked[np.take_along_axis(exact, top, axis=1) == -np.inf] = -1
        out[start : start + len(rows), :keep] = picked
    return out


def serialized_bytes(index) -> int:
    import faiss

    total = [0]

    def count(buffer):
        total[0] += len(buffer)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer  # flushes
    return total[0]


def memory(index) -> dict:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    stored = int(ivf.invlists.compute_ntotal())
    return {
        "code_size": int(ivf.code_size),
        "bytes_per_candidate": int(ivf.code_size) + ID_BYTES,
        "stored": stored,
        "codes_ids_bytes": stored * (int(ivf.code_size) + ID_BYTES),
        "serialized_bytes": serialized_bytes(index),
    }


def extrapolated(bytes_per_candidate: int, n: int, dim: int) -> int:
    return int(n * bytes_per_candidate + round(np.sqrt(n)) * dim * 4)


def fill(index, x: np.ndarray, lists: np.ndarray) -> float:
    """Adds every vector (ids 0..N-1) to the list it was assigned once for all indexes."""
    from faiss.contrib.ivf_tools import add_preassigned

    started = time.perf_counter()
    for start in range(0, len(x), ADD_ROWS):
        add_preassigned(index, x[start : start + ADD_ROWS], lists[start : start + ADD_ROWS])
    return time.perf_counter() - started


def sweep(name, index, x, queries, truth, args, report, extra=None) -> None:
    """Recall@k and times at every nprobe (and every r for a compressed codec), rows into report."""
    k, g, n = args.k, len(truth), len(x)
    xq = np.ascontiguousarray(x[queries])
    mem = memory(index)
    report["indexes"][name] = {**mem, **(extra or {})}
    print(f"  {name}: {mem['bytes_per_candidate']} B/candidate, serialized {mem['serialized_bytes']:,} B", flush=True)
    for nprobe in args.nprobe:
        index.nprobe = nprobe
        # One search per nprobe, for the longest shortlist: FAISS returns it best first, so the
        # shortlist of a smaller r is its first r·k + 1 columns (the search time is the longest's).
        wanted = k + 1 if name == "IVFFlat" else max(args.r) * k + 1
        started = time.perf_counter()
        _, found = index.search(xq, wanted)
        search_s = time.perf_counter() - started
        for r in [None] if name == "IVFFlat" else args.r:
            if r is None:
                top, rescore_s = drop_self(found, queries, k), 0.0
            else:
                started = time.perf_counter()
                top = rescore(x, queries, np.ascontiguousarray(found[:, : r * k + 1]), k)
                rescore_s = time.perf_counter() - started
            value, error = recall(top[:g], truth)
            per_1000 = (search_s + rescore_s) / len(queries) * 1000
            row = {
                "codec": name,
                "bytes_per_candidate": mem["bytes_per_candidate"],
                "memory_at_n": mem["codes_ids_bytes"],
                "memory_10m": extrapolated(mem["bytes_per_candidate"], 10_000_000, x.shape[1]),
                "memory_100m": extrapolated(mem["bytes_per_candidate"], 100_000_000, x.shape[1]),
                "nprobe": nprobe,
                "r": r,
                "shortlist": None if r is None else r * k,
                "searched_for": wanted,
                "recall": round(value, 4),
                "recall_se": round(error, 4),
                "search_seconds": round(search_s, 3),
                "rescore_seconds": round(rescore_s, 3),
                "seconds_per_1000": round(per_1000, 4),
                "search_seconds_per_1000": round(search_s / len(queries) * 1000, 4),
                "seconds_all_n_extrapolated": round(per_1000 * n / 1000, 1),
            }
            report["rows"].append(row)
            print(
                f"    nprobe {nprobe:2d} r {r or '-'!s:>2s}: recall {value:.4f} ± {error:.4f}, "
                f"{per_1000:.3f} s per 1,000 (search {search_s:.2f} s, rescoring {rescore_s:.2f} s "
                f"for {len(queries):,})",
                flush=True,
            )


def mark(report: dict) -> None:
    """The nprobe where IVFFlat first reaches the target, and the cheapest compressed setting there
    (and at any nprobe) that keeps recall@k >= the target."""
    flat = [row for row in report["rows"] if row["codec"] == "IVFFlat"]
    reached = [row["nprobe"] for row in flat if row["recall"] >= TARGET]
    nprobe = min(reached) if reached else None
    report["flat_nprobe_at_target"] = nprobe

    def cheapest(rows):
        ok = [row for row in rows if row["codec"] != "IVFFlat" and row["recall"] >= TARGET]
        return min(ok, key=lambda row: (row["bytes_per_candidate"], row["r"], row["nprobe"]), default=None)

    best = cheapest([row for row in report["rows"] if row["nprobe"] == nprobe])
    report["recommended"] = best
    report["cheapest_any_nprobe"] = cheapest(report["rows"])
    for row in report["rows"]:
        row["marked"] = row is best


def gb(value: int) -> str:
    return f"{value / 1e9:,.2f}" if value < 1e11 else f"{value / 1e9:,.0f}"


def print_table(report: dict) -> None:
    n = report["n"]
    print(f"\nCPU: {report['cpu']}; command: {report['command']}")
    print(
        f"N = {n:,}, d = {report['dim']}, k = {report['k']}, nlist = {report['nlist']}, "
        f"{report['queries']:,} ground-truth queries, times on {report['time_queries']:,} queries "
        f"({report['threads']} FAISS threads; rescoring numpy, one thread); load average "
        f"{report['load_average_start'][0]:.1f} at start, {report['load_average_end'][0]:.1f} at end"
    )
    print("memory = codes + ids; at 10M / 100M: N·(bytes/candidate) + round(sqrt(N))·d·4 (coarse centroids)\n")
    print(
        "| codec | bytes/candidate | memory at N, GB | 10M, GB | 100M, GB | nprobe | r (shortlist r·k) "
        "| recall@10 | s per 1,000 queries | s for all N (extrapolated) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in report["rows"]:
        star = " **(marked)**" if row.get("marked") else ""
        print(
            f"| {row['codec']}{star} | {row['bytes_per_candidate']:,} | {gb(row['memory_at_n'])} "
            f"| {gb(row['memory_10m'])} | {gb(row['memory_100m'])} | {row['nprobe']} "
            f"| {'-' if row['r'] is None else row['r']} | {row['recall']:.4f} | {row['seconds_per_1000']:.3f} "
            f"| {row['seconds_all_n_extrapolated']:,.0f} |"
        )
    # Recall matrix: one row per codec and r, one column per nprobe.
    nprobes = sorted({row["nprobe"] for row in report["rows"]})
    print("\nrecall@10 by nprobe:\n")
    print("| codec | r | " + " | ".join(f"nprobe {p}" for p in nprobes) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in nprobes) + " |")
    keys = list(dict.fromkeys((row["codec"], row["r"]) for row in report["rows"]))
    for codec, r in keys:
        cells = {row["nprobe"]: row["recall"] for row in report["rows"] if row["codec"] == codec and row["r"] == r}
        print(f"| {codec} | {'-' if r is None else r} | " + " | ".join(f"{cells[p]:.4f}" for p in nprobes) + " |")
    nprobe, best, anywhere = report["flat_nprobe_at_target"], report["recommended"], report["cheapest_any_nprobe"]
    print(f"\nIVFFlat first reaches recall@10 >= {TARGET} at nprobe {nprobe}.")
    for label, row in (("at that nprobe", best), ("at any nprobe of the sweep", anywhere)):
        if row is None:
            print(f"Cheapest compressed setting with recall@10 >= {TARGET} {label}: none.")
        else:
            print(
                f"Cheapest compressed setting with recall@10 >= {TARGET} {label}: {row['codec']}, r = {row['r']} "
                f"(shortlist {row['shortlist']}), nprobe {row['nprobe']}: recall {row['recall']:.4f}, "
                f"{row['bytes_per_candidate']} B/candidate, {row['seconds_per_1000']:.3f} s per 1,000 queries."
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1, help="of the vectors (neighbours_scale's 1M run: 1)")
    parser.add_argument("--queries", type=int, default=1000, help="ground-truth queries")
    parser.add_argument("--time-queries", type=int, default=10_000, help="queries searched for the times")
    parser.add_argument("--nprobe", default="1,2,3,4,6,8")
    parser.add_argument("--m", default="32,64,128", help="PQ sub-quantizers (bytes per vector)")
    parser.add_argument("--r", default="1,2,4,8", help="shortlist factors: r·k candidates rescored")
    parser.add_argument("--l2-m", default="128", help="m of the IndexIVFPQ also run in METRIC_L2 ('': none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ivf_pq.json"))
    args = parser.parse_args(argv)
    args.nprobe = [int(v) for v in args.nprobe.split(",")]
    args.m = [int(v) for v in args.m.split(",")]
    args.r = [int(v) for v in args.r.split(",")]
    args.l2_m = [int(v) for v in args.l2_m.split(",") if v]
    if any(args.dim % m for m in args.m + args.l2_m):
        parser.error(f"every m must divide d = {args.dim}")

    import faiss

    faiss.omp_set_num_threads(args.threads)
    command = shlex.join(sys.orig_argv)
    report = {
        "cpu": cpu_model(),
        "command": command,
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "faiss": faiss.__version__,
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "seed": args.seed,
        "load_average_start": os.getloadavg(),
        "indexes": {},
        "rows": [],
        "phase_seconds": {},
    }
    print(f"CPU: {report['cpu']}\ncommand: {command}", flush=True)
    clock = time.perf_counter()

    def phase(name):
        nonlocal clock
        now = time.perf_counter()
        report["phase_seconds"][name] = round(now - clock, 1)
        clock = now

    print(f"{args.n:,} x {args.dim} clustered unit vectors (seed {args.seed}) ...", flush=True)
    x = clustered(args.n, args.dim, seed=args.seed)
    phase("vectors")
    rng = np.random.default_rng(args.seed + 100)
    report["time_queries"] = min(args.n, max(args.time_queries, args.queries))
    queries = rng.choice(args.n, report["time_queries"], replace=False).astype(np.int64)
    report["queries"] = args.queries
    print(f"ground truth: exact top-{args.k} of {args.queries:,} queries ...", flush=True)
    truth = ground_truth(x, queries[: args.queries], args.k)
    phase("ground_truth")

    nlist = max(1, round(np.sqrt(args.n)))
    size = train_size(args.n, nlist)
    sample = x[np.sort(np.random.default_rng(0).choice(args.n, size, replace=False))]
    print(f"k-means: nlist {nlist} on {size:,} vectors ...", flush=True)
    centroids = train(sample, nlist, seed=0)
    quantizer = faiss.IndexFlatIP(args.dim)
    quantizer.add(centroids)
    quantizer_l2 = faiss.IndexFlatL2(args.dim)  # the same (unit) centroids: the same nearest list
    quantizer_l2.add(centroids)
    lists = np.empty(args.n, dtype=np.int64)
    for start in range(0, args.n, ADD_ROWS):
        lists[start : start + ADD_ROWS] = quantizer.search(x[start : start + ADD_ROWS], 1)[1][:, 0]
    sizes = np.bincount(lists, minlength=nlist)
    report.update(nlist=nlist, trained_on=size, list_size={"min": int(sizes.min()), "max": int(sizes.max())})
    phase("kmeans_and_assignment")

    def codecs():
        yield "IVFFlat", faiss.IndexIVFFlat(quantizer, args.dim, nlist, faiss.METRIC_INNER_PRODUCT), {}
        for m in args.m:
            index = faiss.IndexIVFPQ(quantizer, args.dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            index.by_residual = True
            yield f"IVFPQ m={m}", index, {"m": m, "nbits": 8, "by_residual": True, "metric": "inner_product"}
        for m in args.l2_m:
            index = faiss.IndexIVFPQ(quantizer_l2, args.dim, nlist, m, 8, faiss.METRIC_L2)
            index.by_residual = True
            yield f"IVFPQ-L2 m={m}", index, {"m": m, "nbits": 8, "by_residual": True, "metric": "l2"}
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, args.dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT, True
        )
        yield "IVF-SQ8", index, {"qtype": "QT_8bit", "by_residual": True}

    for name, index, extra in codecs():
        print(f"{name}: training the encoder, adding {args.n:,} ...", flush=True)
        started = time.perf_counter()
        index.train(sample)  # the coarse quantizer is trained already: only the encoder, if any
        extra = {**extra, "train_seconds": round(time.perf_counter() - started, 1)}
        extra["add_seconds"] = round(fill(index, x, lists), 1)
        sweep(name, index, x, queries, truth, args, report, extra)
        del index
        phase(name)

    report["load_average_end"] = os.getloadavg()
    mark(report)
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
