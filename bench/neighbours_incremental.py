"""Incremental exact neighbours (neighbours.incremental): a daily run after a small change, against
a full run on the same embeddings, measured side by side in one invocation.

(1) The job through ./spark-submit.sh, N = 200,000 clustered unit vectors (d = 512, k = 10):
    day 0 with incremental on (a full run that also writes the lists), then 1% new, 0.5% changed
    and 0.5% deleted items; day 1 incremental, and a full run (incremental off, a fresh output) on
    day 1's embeddings. Wall time of each, the pairs scored, and whether the two day-1 tables
    are equal (ids and ranks of every item, scores to 1e-6).
(1b) The duplicates job the same way (duplicates.incremental), on N random unit vectors with
    planted near-duplicate groups (bench/neighbours.py's planted_table): day 0 incremental (full,
    writes the pairs), day 1 after the same churn (some new items near-copies of existing ones)
    incremental and, beside it, a full run; wall time and whether the two tables are equal.
(2) The numeric core alone (lookalike.neighbours.incremental.refresh, the same merge rule the job
    applies per item), 30 simulated days at N = 50,000 (d = 128) with 1% daily churn (new,
    changed and deleted items in equal parts): lists scored again per day, and equality with
    brute force on the last day.
Then an extrapolation to 10M and 100M items from the measured rates.

Prints a table and writes JSON to bench/results/neighbours_incremental.json.

    .venv/bin/python bench/neighbours_incremental.py [--n 200000] [--days 30] [--days-n 50000]
                                                     [--skip job,days]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "bench"))

from neighbours import check, last_json, measure, planted_table, write_embeddings  # noqa: E402  (bench/neighbours.py)
from neighbours_scale import clustered  # noqa: E402
from neighbours_scale import run_job as scale_run_job  # noqa: E402

from lookalike.neighbours.incremental import EMPTY, refresh  # noqa: E402

NEW, CHANGED, DELETED = 0.01, 0.005, 0.005


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def churned(ids: list[str], x: np.ndarray, seed: int) -> tuple[list[str], np.ndarray, dict]:
    """Day 1: NEW new items (drawn like the others), CHANGED changed, DELETED deleted."""
    rng = np.random.default_rng(seed)
    n, dim = x.shape
    deleted = set(rng.choice(n, int(n * DELETED), replace=False).tolist())
    keep = np.array([i not in deleted for i in range(n)])
    ids = [i for i, k in zip(ids, keep, strict=True) if k]
    x = x[keep].copy()
    moved = rng.choice(len(ids), int(n * CHANGED), replace=False)
    noisy = x[moved] + rng.normal(0, 0.05, size=(len(moved), dim)).astype(np.float32)
    x[moved] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    fresh = clustered(int(n * NEW), dim, seed=seed + 1)
    ids += [f"new-{i:08d}" for i in range(len(fresh))]
    return ids, np.vstack([x, fresh]), {"new": len(fresh), "changed": len(moved), "deleted": len(deleted)}


def run_job(embeddings: Path, neighbours: Path, catalog: Path, k: int, driver_memory: str, **settings) -> dict:
    ran = scale_run_job(embeddings, neighbours, k, driver_memory, sets=(f"output.catalog.uri={catalog}",), **settings)
    summary = ran["summary"]
    return {
        "seconds": ran["seconds"],
        "peak_rss_mb": ran["peak_rss_mb"],
        "settings": settings,
        "mode": summary.get("mode", "full (incremental off)"),
        "mode_reason": summary.get("mode_reason"),
        "scored_pairs": int(summary.get("scored_pairs") or summary["queries"] * summary["candidates"]),
        "rows_rescored": summary.get("rows_rescored"),
        "phase_seconds": summary.get("phase_seconds"),
        "counts": {key: summary.get(key) for key in ("new_items", "changed_items", "deleted_items")},
    }


def read_table(location: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lookalike.io.current import current

    found = current(str(location))
    table = pa.concat_tables([pq.read_table(f.replace("file://", "")) for f in found.files])
    return table.sort_by([("item_id", "ascending"), ("rank", "ascending")])


def tables_equal(a: Path, b: Path) -> dict:
    first, second = read_table(a), read_table(b)
    same_rows = first.num_rows == second.num_rows
    same_ids = same_rows and all(first.column(c).equals(second.column(c)) for c in ("item_id", "rank", "neighbour_id"))
    worst = (
        float(np.max(np.abs(first.column("score").to_numpy() - second.column("score").to_numpy())))
        if same_rows and first.num_rows
        else None
    )
    return {"rows": first.num_rows, "ids_and_ranks_equal": bool(same_ids), "max_score_difference": worst}


def job_section(args, workdir: Path, report: dict) -> None:
    print(f"writing {args.n} x {args.dim} clustered unit vectors ...", flush=True)
    x = clustered(args.n, args.dim, seed=0)
    ids = [f"item-{i:08d}" for i in np.random.default_rng(7).permutation(args.n)]
    write_embeddings(workdir / "day0", ids, x, "synthetic-clustered", files=8)
    ids1, x1, changes = churned(ids, x, seed=1)
    write_embeddings(workdir / "day1", ids1, x1, "synthetic-clustered", files=8)
    del x, x1
    catalog = workdir / "catalog.db"
    runs = {}
    print("day 0: the incremental job's first run (full, writes the lists) ...", flush=True)
    runs["day0_first"] = run_job(
        workdir / "day0", workdir / "incremental", catalog, args.k, args.driver_memory, incremental="true"
    )
    print(f"day 1: incremental after {changes} ...", flush=True)
    runs["day1_incremental"] = run_job(
        workdir / "day1", workdir / "incremental", catalog, args.k, args.driver_memory, incremental="true"
    )
    print("day 1: a full run on the same embeddings ...", flush=True)
    # Its own catalog: lookalike.neighbours is registered at the incremental run's location.
    runs["day1_full"] = run_job(workdir / "day1", workdir / "full", workdir / "full.db", args.k, args.driver_memory)
    inc, full = runs["day1_incremental"], runs["day1_full"]
    report["job"] = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "changes": changes,
        "runs": runs,
        "time_ratio": round(inc["seconds"] / full["seconds"], 3),
        "pairs_ratio": round(inc["scored_pairs"] / full["scored_pairs"], 4),
        "equal": tables_equal(workdir / "incremental", workdir / "full"),
    }


def run_duplicates(embeddings: Path, output: Path, catalog: Path, driver_memory: str, incremental: bool) -> dict:
    command = [
        str(ROOT / "spark-submit.sh"),
        "duplicates",
        "--config",
        str(ROOT / "conf" / "local.yaml"),
        "--set",
        f"output.embeddings={embeddings}",
        "--set",
        f"output.duplicates={output}",
        "--set",
        f"output.catalog.uri={catalog}",
        "--set",
        f"duplicates.incremental={str(incremental).lower()}",
        "--driver-memory",
        driver_memory,
    ]
    result = measure(command, timeout=6 * 3600)
    check(result, f"the duplicates job (incremental {incremental})")
    summary = last_json(result["stdout"])
    return {
        "seconds": result["seconds"],
        "peak_rss_mb": result["peak_rss_mb"],
        "mode": summary.get("mode", "full (incremental off)"),
        "scored_pairs": summary.get("scored_pairs"),
        "pairs": summary.get("pairs"),
        "groups": summary.get("groups"),
        "phase_seconds": summary.get("phase_seconds"),
    }


def duplicates_section(args, workdir: Path, report: dict) -> None:
    import pyarrow.parquet as pq

    print(f"duplicates: writing {args.n} x {args.dim} vectors with planted groups ...", flush=True)
    planted_table(workdir / "dup0", args.n, args.dim, planted=2000)
    table = pq.read_table(workdir / "dup0", columns=["item_id", "embedding"])
    ids = table.column("item_id").to_pylist()
    x = np.asarray(table.column("embedding").combine_chunks().flatten()).reshape(len(ids), args.dim)
    ids1, x1, changes = churned(ids, x, seed=2)
    # Some of the new items are near-copies of kept ones: new pairs, groups that grow.
    rng = np.random.default_rng(4)
    fresh = len(ids1) - changes["new"]
    for row in range(fresh, fresh + changes["new"] // 10):
        copy = x1[rng.integers(fresh)] + 0.02 * rng.standard_normal(args.dim).astype(np.float32)
        x1[row] = copy / np.linalg.norm(copy)
    write_embeddings(workdir / "dup1", ids1, x1, "random-unit-vectors-planted-duplicates", files=8)
    del x, x1
    runs = {}
    print("duplicates day 0: the incremental job's first run (full, writes the pairs) ...", flush=True)
    runs["day0_first"] = run_duplicates(
        workdir / "dup0", workdir / "dup-inc", workdir / "dup.db", args.driver_memory, True
    )
    print(f"duplicates day 1: incremental after {changes} ...", flush=True)
    runs["day1_incremental"] = run_duplicates(
        workdir / "dup1", workdir / "dup-inc", workdir / "dup.db", args.driver_memory, True
    )
    print("duplicates day 1: a full run on the same embeddings ...", flush=True)
    runs["day1_full"] = run_duplicates(
        workdir / "dup1", workdir / "dup-full", workdir / "dup-full.db", args.driver_memory, False
    )
    inc, full = read_rows(workdir / "dup-inc"), read_rows(workdir / "dup-full")
    report["duplicates"] = {
        "n": args.n,
        "dim": args.dim,
        "changes": changes,
        "runs": runs,
        "time_ratio": round(runs["day1_incremental"]["seconds"] / runs["day1_full"]["seconds"], 3),
        "tables_equal": inc.equals(full),
        "rows": inc.num_rows,
    }


def read_rows(location: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lookalike.io.current import current

    found = current(str(location))
    table = pa.concat_tables([pq.read_table(f.replace("file://", "")) for f in found.files])
    return table.sort_by([(name, "ascending") for name in table.column_names])


def days_section(args, report: dict) -> None:
    """30 days of churn through the numeric core; positions follow the day's id order (new items
    appended), as the job's follow item_id order."""
    rng = np.random.default_rng(5)
    k, reserve, n, dim = args.k, 10, args.days_n, 128
    depth = k + reserve
    x = clustered(n, dim, seed=3)
    print(f"days: full lists for N={n} ...", flush=True)
    lists_n, lists_s = _brute(x, depth)
    bound_s, bound_p = lists_s[:, -1].copy(), lists_n[:, -1].copy()  # full lists: the last entry
    per_day = []
    for day in range(1, args.days + 1):
        size = len(x)
        third = max(1, int(size * 0.01 / 3))
        keep = np.ones(size, bool)
        keep[rng.choice(size, third, replace=False)] = False
        position = np.cumsum(keep) - 1
        new_x = x[keep].copy()
        changed = np.zeros(len(new_x), bool)
        changed[rng.choice(len(new_x), third, replace=False)] = True
        noisy = new_x[changed] + rng.normal(0, 0.05, size=(third, dim)).astype(np.float32)
        new_x[changed] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
        fresh = clustered(third, dim, seed=100 + day)
        new_x = np.vstack([new_x, fresh])
        changed = np.concatenate([changed, np.ones(third, bool)])
        mapped = np.where(lists_n != EMPTY, lists_n, 0)
        previous_n = np.where((lists_n != EMPTY) & keep[mapped], position[mapped], EMPTY)
        previous_n = np.vstack([previous_n[keep], np.full((third, depth), EMPTY, np.int64)])
        previous_s = np.vstack([lists_s[keep], np.full((third, depth), -np.inf, np.float32)])
        # Each list's bound, its item's position moved too (EMPTY, unknown, where it was deleted).
        at = np.where(bound_p != EMPTY, bound_p, 0)
        moved_p = np.where((bound_p != EMPTY) & keep[at], position[at], EMPTY)
        bounds = (
            np.concatenate([bound_s[keep], np.full(third, -np.inf, np.float32)]),
            np.concatenate([moved_p[keep], np.full(third, EMPTY, np.int64)]),
        )
        started = time.perf_counter()
        got = refresh(previous_n, previous_s, changed, new_x, k, depth, bounds)
        seconds = time.perf_counter() - started
        cut = int(got.rescored.sum() - changed.sum())
        per_day.append(
            {
                "day": day,
                "n": len(new_x),
                "changed_or_new": int(changed.sum()),
                "cut_and_rescored": cut,
                "seconds": round(seconds, 2),
            }
        )
        print(
            f"  day {day}: {changed.sum()} new or changed, {cut} lists cut and scored again ({seconds:.1f}s)",
            flush=True,
        )
        x, lists_n, lists_s = new_x, got.neighbours, got.scores
        bound_s, bound_p = got.bound_scores, got.bound_positions
    want_n, want_s = _brute(x, depth)
    # Both score in float64 rounded to float32 (the job's canonical score): the lists should be
    # identical; count the rows whose top k differ anyway, and those among them where the scores
    # at the differing ranks agree to 1e-6.
    differ = np.flatnonzero((lists_n[:, :k] != want_n[:, :k]).any(axis=1))
    near_ties = [row for row in differ if np.allclose(lists_s[row, :k], want_s[row, :k], atol=1e-6)]
    report["days"] = {
        "n": args.days_n,
        "dim": dim,
        "k": k,
        "reserve": reserve,
        "daily_churn": 0.01,
        "per_day": per_day,
        "rows_whose_top_k_differ_from_brute_force": len(differ),
        "of_which_near_ties_within_1e-6": len(near_ties),
        "max_top_k_score_difference": float(np.max(np.abs(lists_s[:, :k] - want_s[:, :k]))),
        "shortest_list": int((lists_n != EMPTY).sum(axis=1).min()),
    }


def _brute(x: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(x)
    out_n = np.full((n, depth), EMPTY, np.int64)
    out_s = np.full((n, depth), -np.inf, np.float32)
    wide = x.astype(np.float64)
    for start in range(0, n, 1024):
        scores = (wide[start : start + 1024] @ wide.T).astype(np.float32)
        scores[np.arange(len(scores)), np.arange(start, start + len(scores))] = -np.inf
        part = np.argpartition(-scores, depth, axis=1)[:, : depth + 1]
        for r in range(len(scores)):
            cand = part[r]
            order = np.lexsort((cand, -scores[r, cand]))[:depth]
            out_n[start + r] = cand[order]
            out_s[start + r] = scores[r, cand[order]]
    return out_n, out_s


def extrapolate(report: dict) -> None:
    """Daily cost at 10M and 100M items with the same churn, from the rates measured at N: a full
    run per (query, candidate) pair end to end; an incremental run per pair scored (its scoring
    passes, which also stream every item once) and per item (reading, planning, merging, writing)."""
    job = report.get("job")
    if not job:
        return
    full, inc = job["runs"]["day1_full"], job["runs"]["day1_incremental"]
    cores = os.cpu_count() or 1
    n = job["n"]
    full_per_pair = full["seconds"] * cores / full["scored_pairs"]
    phases = inc["phase_seconds"] or {}
    scoring = phases.get("score_changed", 0) + phases.get("rescore", 0)
    inc_per_pair = scoring * cores / max(inc["scored_pairs"], 1)
    inc_per_item = (inc["seconds"] - scoring) * cores / n
    changed_share = (job["changes"]["new"] + job["changes"]["changed"]) / n
    cut_share = max((inc["rows_rescored"] or 0) / n - changed_share, 0.0)
    out: dict = {
        "full_core_seconds_per_pair": full_per_pair,
        "incremental_core_seconds_per_pair": inc_per_pair,
        "incremental_core_seconds_per_item": inc_per_item,
        "changed_share": changed_share,
        "cut_share": cut_share,
    }
    for size in (10_000_000, 100_000_000):
        # Every item against the changed ones and the changed ones against every item, plus the
        # lists cut short, each against every item.
        pairs = size * size * (2 * changed_share + cut_share)
        out[f"{size:,}"] = {
            "full_core_hours": round(size * size * full_per_pair / 3600, 1),
            "incremental_core_hours": round((pairs * inc_per_pair + size * inc_per_item) / 3600, 1),
        }
    report["extrapolation"] = out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--days-n", type=int, default=50_000)
    parser.add_argument("--driver-memory", default="12g")
    parser.add_argument("--skip", default="", help="comma-separated: job,duplicates,days")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "neighbours_incremental.json"))
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lookalike-bench-incremental-"))
    report: dict = {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_average_start": os.getloadavg()}
    if "job" not in skip:
        job_section(args, workdir, report)
    if "duplicates" not in skip:
        duplicates_section(args, workdir, report)
    if "days" not in skip:
        days_section(args, report)
    extrapolate(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    print(f"\nCPU: {report['cpu']} ({report['cpus']} cores)")
    job = report.get("job")
    if job:
        print(f"\nN = {job['n']:,}, d = {job['dim']}, k = {job['k']}; day 1: {job['changes']}")
        print("| run | mode | wall s | pairs scored | lists scored in full |")
        print("| --- | --- | ---: | ---: | ---: |")
        for name, run in job["runs"].items():
            print(f"| {name} | {run['mode']} | {run['seconds']} | {run['scored_pairs']:,} | {run['rows_rescored']} |")
        print(f"incremental / full: time {job['time_ratio']}, pairs {job['pairs_ratio']}; tables: {job['equal']}")
    dup = report.get("duplicates")
    if dup:
        print(f"\nduplicates, N = {dup['n']:,}; day 1: {dup['changes']}")
        print("| run | mode | wall s | pairs scored | pairs | groups |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for name, run in dup["runs"].items():
            cells = [name, run["mode"], run["seconds"], run["scored_pairs"], run["pairs"], run["groups"]]
            print("| " + " | ".join(str(c) for c in cells) + " |")
        print(f"incremental / full: time {dup['time_ratio']}; tables equal: {dup['tables_equal']} ({dup['rows']} rows)")
    days = report.get("days")
    if days:
        cut = [d["cut_and_rescored"] for d in days["per_day"]]
        print(
            f"\n{len(cut)} days at N = {days['n']:,}, 1% churn: lists cut and scored again per day "
            f"min {min(cut)}, median {int(np.median(cut))}, max {max(cut)}; on the last day "
            f"{days['rows_whose_top_k_differ_from_brute_force']} rows' top k differ from brute force, "
            f"{days['of_which_near_ties_within_1e-6']} of them near-ties within 1e-6; "
            f"max score difference {days['max_top_k_score_difference']:.2e}"
        )
    if "extrapolation" in report:
        print(f"\nextrapolation: {json.dumps(report['extrapolation'])}")


if __name__ == "__main__":
    sys.exit(main())
