"""The ``lookalike`` tools on a catalogue-sized table: ``similar`` and ``report --sample 8`` on a
10,000,000-row neighbour table (1,000,000 items x k=10), as whole processes.

Targets (issue 14): each under 2 s wall time and under 500 MB peak RSS.

The tables are generated with pyarrow, a chunk at a time, in the real schemas:

* neighbours: sorted by item_id, in part files of 20,000 items (what neighbours.partitions=0
  gives at 1M items), row groups of whole items cut after neighbours.row_group_rows rows, written
  by the job's own PartWriter from chunks of 10,000 rows (Spark's Arrow batch size);
* embeddings: the same items dealt round-robin over 16 part files (the embed job's
  ``repartition``), so, as in a real table, no file or row group covers a narrow id range and a
  lookup by id cannot skip any row group by its statistics; one row group per file (Spark's
  128 MB blocks); an 8-float zero embedding (the tools never read it); uris of files that do not
  exist, so the page shows placeholders and the time is the tables', not the image decoder's.

Each command runs ``--runs`` times as ``.venv/bin/lookalike ...``: wall time around the process,
its CPU time and peak RSS from GNU time (/usr/bin/time), and the load average before and after,
since on a shared machine other processes stretch the wall time. The target is met when the
median wall time is under 2 s and every run's peak RSS under 500 MB. Prints a table and writes
bench/results/tools_scale.json.

    .venv/bin/python bench/tools_scale.py [--items 1000000] [--k 10] [--runs 3] [--dir DIR [--keep] [--reuse]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lib"))

from lookalike import schemas  # noqa: E402
from lookalike.config import NeighboursConfig  # noqa: E402
from lookalike.io.partfiles import PartWriter  # noqa: E402

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))
TIME = shutil.which("time", path="/usr/bin:/bin")  # GNU time: the command's own CPU and peak RSS
TARGET_SECONDS = 2.0
TARGET_MB = 500
# neighbours.partitions=0 puts this many queries in a partition (lookalike.neighbours.prepare).
ITEMS_PER_FILE = 20_000
CHUNK_ROWS = 10_000
EMBEDDING_FILES = 16
CATEGORIES = ["bag", "dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt"]


def item_ids(n: int) -> np.ndarray:
    """Ids shaped like the demo's (``dress/06a00c0f-5f9a-410d-a7da-3881a9df3a71``), in sorted order."""
    ids = np.empty(n, dtype=object)
    for i in range(n):
        h = f"{(i * 0x9E3779B97F4A7C15) & ((1 << 96) - 1):024x}"
        ids[i] = f"{CATEGORIES[i * len(CATEGORIES) // n]}/{i:08x}-{h[:4]}-{h[4:8]}-{h[8:12]}-{h[12:]}"
    return ids


def write_neighbours(directory: Path, ids: np.ndarray, k: int, seed: int = 0) -> dict:
    import pyarrow as pa

    n = len(ids)
    rng = np.random.default_rng(seed)
    schema = schemas.arrow_schema(schemas.NEIGHBOURS)
    row_group_rows = NeighboursConfig().row_group_rows
    per_chunk = max(1, CHUNK_ROWS // k)
    row_groups = 0
    directory.mkdir(parents=True)
    for part, first in enumerate(range(0, n, ITEMS_PER_FILE)):
        writer = PartWriter(
            str(directory),
            f"part-{part:05d}.parquet",
            schema,
            None,
            row_group_rows,
            sorting_columns=("item_id", "rank"),
        )
        for start in range(first, min(first + ITEMS_PER_FILE, n), per_chunk):
            items = np.arange(start, min(start + per_chunk, first + ITEMS_PER_FILE, n))
            item = np.repeat(items, k)
            neighbour = (item + rng.integers(1, n, size=item.size)) % n  # never the item itself
            score = -np.sort(-rng.random((items.size, k), dtype=np.float32), axis=1).ravel()
            writer.add(
                pa.table(
                    {
                        "item_id": pa.array(ids[item], pa.string()),
                        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), items.size)),
                        "neighbour_id": pa.array(ids[neighbour], pa.string()),
                        "score": pa.array(score),
                    },
                    schema=schema,
                )
            )
        row_groups += writer.close()["row_groups"]
    (directory / "_SUCCESS").touch()
    return {"rows": n * k, "items": n, "files": part + 1, "row_groups": row_groups, "bytes": _size(directory)}


def write_embeddings(directory: Path, ids: np.ndarray, dim: int = 8) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = schemas.arrow_schema(schemas.EMBEDDINGS)
    directory.mkdir(parents=True)
    for part in range(EMBEDDING_FILES):
        chosen = ids[part::EMBEDDING_FILES]
        m = len(chosen)
        constant = {
            "source_version": "1000-1",
            "source_bytes": 1000,
            "width": 224,
            "height": 224,
            "model": "vgg16",
            "weights": "imagenet",
            "pooling": "avg",
            "precision": "float32",
            "runtime": "keras",
            "dim": dim,
            "model_fingerprint": "0" * 16,
            "run_id": "bench",
        }
        columns = {name: pa.repeat(pa.scalar(value, schema.field(name).type), m) for name, value in constant.items()}
        columns["item_id"] = pa.array(chosen, pa.string())
        columns["uri"] = pa.array([f"file:///nonexistent/images/{i}.jpg" for i in chosen], pa.string())
        columns["embedding"] = pa.ListArray.from_arrays(
            pa.array(np.arange(0, (m + 1) * dim, dim, dtype=np.int32)), pa.array(np.zeros(m * dim, np.float32))
        )
        columns["embedded_at"] = pa.repeat(pa.scalar(0, pa.int64()), m)
        table = pa.table({name: columns[name] for name in schema.names}).cast(schema)
        pq.write_table(table, directory / f"part-{part:05d}.snappy.parquet", row_group_size=m)
    (directory / "_SUCCESS").touch()
    return {
        "rows": len(ids),
        "files": EMBEDDING_FILES,
        "row_groups": EMBEDDING_FILES,
        "embedding_dim": dim,
        "bytes": _size(directory),
    }


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def run(argv: list[str], log: Path) -> dict:
    """One process: wall seconds, CPU seconds and its own peak RSS. GNU time measures a child it
    forked itself; a child forked from this process would count this process's memory as its
    own (the kernel carries the peak RSS across exec), so os.wait4 is only the fallback."""
    measured = log.with_suffix(".time")
    timed = [TIME, "-f", "%e %U %S %M", "-o", str(measured), *argv] if TIME else argv
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(timed, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu, peak_kb = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
    if TIME:
        _, user, system, peak_kb = measured.read_text().split()[-4:]
        cpu, peak_kb = float(user) + float(system), int(peak_kb)
    return {
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "returncode": proc.returncode,
        "output": log.read_text()[-2000:],
    }


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "unknown"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("-k", "--k", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", help="where to generate the tables (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the generated tables")
    parser.add_argument("--reuse", action="store_true", help="use the tables an earlier run left in --dir")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "tools_scale.json"))
    args = parser.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="lookalike-tools-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    neighbours, embeddings, described = work / "neighbours", work / "embeddings", work / "tables.json"
    try:
        if args.reuse and described.exists():
            tables = json.loads(described.read_text())
            generated = tables.pop("generate_seconds")
        else:
            if neighbours.exists() or embeddings.exists():
                raise SystemExit(f"{work} already holds tables; pass an empty --dir, or --reuse")
            started = time.perf_counter()
            ids = item_ids(args.items)
            tables = {
                "neighbours": write_neighbours(neighbours, ids, args.k),
                "embeddings": write_embeddings(embeddings, ids),
                "middle_id": ids[len(ids) // 2],
            }
            generated = round(time.perf_counter() - started, 1)
            del ids
            described.write_text(json.dumps({**tables, "generate_seconds": generated}))
        print(
            f"generated in {generated:.0f} s under {work}: neighbours {tables['neighbours']['rows']:,} rows, "
            f"{tables['neighbours']['files']} files, {tables['neighbours']['row_groups']} row groups, "
            f"{tables['neighbours']['bytes'] / 2**20:.0f} MB; embeddings {tables['embeddings']['rows']:,} rows, "
            f"{tables['embeddings']['bytes'] / 2**20:.0f} MB",
            flush=True,
        )
        middle = tables["middle_id"]
        load_before = os.getloadavg()
        commands = {
            "similar": [LOOKALIKE, "similar", middle, "--neighbours", str(neighbours)],
            "similar, unknown id": [LOOKALIKE, "similar", middle + "x", "--neighbours", str(neighbours)],
            "report --sample 8": [
                LOOKALIKE,
                "report",
                "--embeddings",
                str(embeddings),
                "--neighbours",
                str(neighbours),
                "--sample",
                "8",
                "--out",
                str(work / "report.html"),
            ],
        }
        expected = {"similar": 0, "similar, unknown id": 2, "report --sample 8": 0}
        results = []
        for name, argv in commands.items():
            runs = [run(argv, work / "last.log") for _ in range(args.runs)]
            for r in runs:
                if r["returncode"] != expected[name]:
                    raise SystemExit(f"{name} exited {r['returncode']}:\n{r['output']}")
            seconds = [r["seconds"] for r in runs]
            peaks = [r["peak_rss_mb"] for r in runs]
            results.append(
                {
                    "command": name,
                    "argv": argv,
                    "seconds": seconds,
                    "median_seconds": statistics.median(seconds),
                    "cpu_seconds": [r["cpu_seconds"] for r in runs],
                    "peak_rss_mb": peaks,
                    "max_peak_rss_mb": max(peaks),
                    "ok": statistics.median(seconds) < TARGET_SECONDS and max(peaks) < TARGET_MB,
                    "output_tail": runs[-1]["output"][-400:],
                }
            )

        cpu = cpu_model()
        load = os.getloadavg()
        import pyarrow

        report = {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "pyarrow": pyarrow.__version__,
            "k": args.k,
            "tables": tables,
            "generate_seconds": generated,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load],
            "peak_rss_by": "GNU time" if TIME else "os.wait4 (includes this process's peak: an upper bound)",
            "targets": {"seconds": TARGET_SECONDS, "peak_rss_mb": TARGET_MB},
            "results": results,
        }
        print(
            f"\nCPU: {cpu} ({os.cpu_count()} cores), Python {platform.python_version()}, "
            f"pyarrow {pyarrow.__version__}; "
            f"load average {load_before[0]:.1f} before, {load[0]:.1f} after (other processes share the cores)"
        )
        width = max(17, 6 * args.runs)
        print(
            f"{'command':<20} {'wall s (each run)':<{width}} {'median':>6}  {'CPU s (each run)':<{width}} "
            f"{'peak RSS MB':>11}  target"
        )
        for r in results:
            each = ", ".join(f"{s:.2f}" for s in r["seconds"])
            cpu_each = ", ".join(f"{s:.2f}" for s in r["cpu_seconds"])
            print(
                f"{r['command']:<20} {each:<{width}} {r['median_seconds']:>6.2f}  {cpu_each:<{width}} "
                f"{r['max_peak_rss_mb']:>11.0f}  "
                f"{'met' if r['ok'] else 'MISSED'} (median < {TARGET_SECONDS:g} s, < {TARGET_MB} MB)"
            )
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
        return 0 if all(r["ok"] for r in results) else 1
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
