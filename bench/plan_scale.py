"""Planning at catalogue scale: what `embed --dry-run` costs the driver at 1M and 10M keys.

Generated data, no image fetched:
- a manifest in S3 Inventory's Parquet columns (bucket, key, version_id, is_latest,
  is_delete_marker, size, last_modified_date, e_tag, storage_class), N keys in 10 files;
- a previous embeddings table of N/2 rows in the real schema, with the real model fingerprint and
  weights tag of a small real run (its embedding column is zeros), and a previous errors table;
  both published where that small run published its own.

The generator knows the answer: of the N/2 previous rows, 90% are listed (a tenth of them with a
new ETag: changed), 10% are not (deleted); the errors table names 1% of N listed keys that have no
embedding (retried); every other listed key is new. The dry run's counts must equal it exactly.

For each N: the wall time of `./spark-submit.sh embed --dry-run` on local[2], and the peak RSS
(VmHWM) of the Python driver process (the job script) and of the JVM (which in local mode also runs
the executors). Prints a table and writes bench/results/plan_scale.json.

    .venv/bin/python bench/plan_scale.py [--sizes 1000000,10000000] [--driver-memory 6g]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench-catalogue"
SAMPLE = ROOT / "samples" / "clothing"
CHUNK = 250_000


def key(i: np.ndarray) -> np.ndarray:
    return np.char.add(np.char.add("catalogue/img-", np.char.zfill(i.astype(str), 9)), ".jpg")


def etag(i: np.ndarray, generation: int) -> np.ndarray:
    return np.char.add(f"{generation:02d}", np.char.zfill(i.astype(str), 30))


def write_manifest(directory: Path, n: int) -> None:
    directory.mkdir(parents=True)
    per_file = -(-n // 10)
    for part, start in enumerate(range(0, n, per_file)):
        with pq.ParquetWriter(directory / f"part-{part:03d}.parquet", _inventory_schema()) as writer:
            for lo in range(start, min(n, start + per_file), CHUNK):
                ids = np.arange(lo, min(n, start + per_file, lo + CHUNK))
                # Changed keys (every tenth of the previous ones) carry a new ETag.
                generation = np.where((ids < n // 2 * 9 // 10) & (ids % 10 == 0), 2, 1)
                tags = np.where(generation == 2, etag(ids, 2), etag(ids, 1))
                writer.write_table(
                    pa.table(
                        {
                            "bucket": pa.array(np.full(len(ids), BUCKET)),
                            "key": pa.array(key(ids)),
                            "version_id": pa.nulls(len(ids), pa.string()),
                            "is_latest": pa.array(np.ones(len(ids), bool)),
                            "is_delete_marker": pa.array(np.zeros(len(ids), bool)),
                            "size": pa.array(np.full(len(ids), 20_000, np.int64)),
                            "last_modified_date": pa.array(np.full(len(ids), 1_700_000_000_000, "datetime64[ms]")),
                            "e_tag": pa.array(tags),
                            "storage_class": pa.array(np.full(len(ids), "STANDARD")),
                        },
                        schema=_inventory_schema(),
                    )
                )


def _inventory_schema() -> pa.Schema:
    return pa.schema(
        [
            ("bucket", pa.string()),
            ("key", pa.string()),
            ("version_id", pa.string()),
            ("is_latest", pa.bool_()),
            ("is_delete_marker", pa.bool_()),
            ("size", pa.int64()),
            ("last_modified_date", pa.timestamp("ms")),
            ("e_tag", pa.string()),
            ("storage_class", pa.string()),
        ]
    )


def expected(n: int) -> dict:
    previous = n // 2
    listed_previous = previous * 9 // 10
    changed = len(range(0, listed_previous, 10))
    retried = n // 100  # ids [listed_previous, listed_previous + n/100) failed last time
    return {
        "listed": n,
        "attempted": n - listed_previous + changed,
        "new": n - listed_previous - retried,
        "changed": changed,
        "retried": retried,
        "reused": listed_previous - changed,
        "deleted": previous - listed_previous,
    }


def replace_previous(template: dict, n: int, embeddings_dir: Path, errors_dir: Path) -> None:
    """Swap the small run's published files for N/2 generated rows (and N/100 error rows)."""
    previous = n // 2
    listed_previous = previous * 9 // 10
    schema = pq.read_schema(next(embeddings_dir.glob("*.parquet")))
    for old in embeddings_dir.glob("*.parquet"):
        old.unlink()
    dim = template["dim"]
    # Previous ids: the first 90% are listed now; the rest are beyond N (deleted since).
    ids_all = np.concatenate([np.arange(listed_previous), np.arange(n, n + previous - listed_previous)])
    for part, lo in enumerate(range(0, len(ids_all), CHUNK)):
        ids = ids_all[lo : lo + CHUNK]
        rows = len(ids)
        zeros = pa.ListArray.from_arrays(
            pa.array(np.arange(0, (rows + 1) * dim, dim, dtype=np.int32)), pa.array(np.zeros(rows * dim, np.float32))
        )
        columns = {
            "item_id": pa.array(np.char.add("img-", np.char.zfill(ids.astype(str), 9))),
            "uri": pa.array(np.char.add(f"s3://{BUCKET}/", key(ids))),
            "source_version": pa.array(etag(ids, 1)),
            "embedding": zeros,
        }
        table = pa.table(
            {
                f.name: columns[f.name] if f.name in columns else pa.array([template[f.name]] * rows, f.type)
                for f in schema
            },
            schema=schema,
        )
        pq.write_table(table, embeddings_dir / f"part-{part:05d}.parquet")
    error_schema = pq.read_schema(next(errors_dir.glob("*.parquet")))
    for old in errors_dir.glob("*.parquet"):
        old.unlink()
    failed = np.arange(listed_previous, listed_previous + n // 100)
    values = {
        "item_id": np.char.add("img-", np.char.zfill(failed.astype(str), 9)),
        "uri": np.char.add(f"s3://{BUCKET}/", key(failed)),
        "source_version": etag(failed, 1),
    }
    columns = {}
    for f in error_schema:
        if f.name in values:
            columns[f.name] = pa.array(values[f.name])
        elif pa.types.is_timestamp(f.type):
            columns[f.name] = pa.array(np.full(len(failed), np.datetime64("2026-12-01T00:00:00", "us")), f.type)
        else:
            columns[f.name] = pa.array(np.full(len(failed), "decode_error"), f.type)
    pq.write_table(pa.table(columns, schema=error_schema), errors_dir / "part-00000.parquet")


def small_real_run(work: Path) -> dict:
    """Embed 4 sample photos for real: the published layout and the model's identity to copy."""
    images = work / "images"
    images.mkdir()
    for path in sorted(SAMPLE.rglob("*.jpg"))[:3]:
        shutil.copy(path, images / path.name)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    run = subprocess.run(
        [
            str(ROOT / "spark-submit.sh"),
            "embed",
            "--master",
            "local[2]",
            "--set",
            f"input.uri={images}",
            "--set",
            "model.weights=none",
            "--set",
            "input.max_error_fraction=0.5",
            "--set",
            f"output.embeddings={work}/out/emb",
            "--set",
            f"output.errors={work}/out/err",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if run.returncode:
        raise SystemExit(f"small real run failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    row = pq.read_table(work / "out" / "emb").slice(0, 1).to_pylist()[0]
    return row


class PeakRss:
    """Polls the process tree under ``pid`` and keeps each process's VmHWM (its peak RSS)."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.peaks: dict[int, tuple[str, int]] = {}
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while self.running:
            try:
                for proc in [self.root, *self.root.children(recursive=True)]:
                    try:
                        status = Path(f"/proc/{proc.pid}/status").read_text()
                        hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
                        name = " ".join(proc.cmdline())
                        self.peaks[proc.pid] = (name, max(hwm, self.peaks.get(proc.pid, ("", 0))[1]))
                    except (OSError, StopIteration, Exception):
                        continue
            except Exception:
                pass
            time.sleep(0.2)

    def stop(self) -> dict:
        self.running = False
        self.thread.join()
        mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
        driver = max(
            (kb for name, kb in self.peaks.values() if "jobs/embed.py" in name and "java" not in name), default=0
        )
        jvm = max((kb for name, kb in self.peaks.values() if "java" in name.split(" ")[0]), default=0)
        # Python workers the JVM starts (manifest reading) are the executors' side, reported apart.
        workers = max(
            (
                kb
                for name, kb in self.peaks.values()
                if "pyspark.daemon" in name or "pyspark/daemon" in name or "pyspark.worker" in name
            ),
            default=0,
        )
        return {"driver_python_mb": mb(driver), "jvm_mb": mb(jvm), "python_worker_mb": mb(workers)}


def dry_run(work: Path, n: int, driver_memory: str) -> dict:
    command = [
        str(ROOT / "spark-submit.sh"),
        "embed",
        "--dry-run",
        "--master",
        "local[2]",
        "--driver-memory",
        driver_memory,
        "--set",
        f"input.uri=s3://{BUCKET}/catalogue/",
        "--set",
        f"input.manifest={work}/manifest",
        "--set",
        "model.weights=none",
        "--set",
        "input.incremental=true",
        "--set",
        "spark.conf.spark.sql.shuffle.partitions=32",
        "--set",
        f"output.embeddings={work}/out/emb",
        "--set",
        f"output.errors={work}/out/err",
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss = PeakRss(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    peaks = rss.stop()
    if proc.returncode:
        raise SystemExit(f"dry run at N={n} failed:\n{out[-3000:]}\n{err[-3000:]}")
    summary = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    counts = {k: summary[k] for k in expected(n)}
    return {
        "n": n,
        "seconds": round(seconds, 1),
        **peaks,
        "counts": counts,
        "expected": expected(n),
        "exact": counts == expected(n),
    }


def cpu_model() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except Exception:
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--driver-memory", default="6g", help="the JVM's heap (local mode: driver and executors)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "plan_scale.json")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="generate into DIR and keep it (to plan the same data with other code)",
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="lookalike-plan-scale-") as tmp:
        if args.keep:
            args.keep.mkdir(parents=True)
            tmp = str(args.keep)
        template_dir = Path(tmp) / "template"
        template_dir.mkdir()
        template = small_real_run(template_dir)
        for n in [int(s) for s in args.sizes.split(",")]:
            work = Path(tmp) / f"n{n}"
            shutil.copytree(template_dir / "out", work / "out", symlinks=True)
            made = time.perf_counter()
            write_manifest(work / "manifest", n)
            replace_previous(template, n, (work / "out" / "emb").resolve(), (work / "out" / "err").resolve())
            print(f"generated N={n:,} in {time.perf_counter() - made:.0f}s", flush=True)
            results.append(dry_run(work, n, args.driver_memory))
            print(json.dumps(results[-1]), flush=True)
            if not args.keep:
                shutil.rmtree(work)
    cpu = cpu_model()
    print(f"\nembed --dry-run on local[2], {cpu}, {os.cpu_count()} CPUs, JVM heap {args.driver_memory}")
    print("| keys | previous rows | seconds | driver Python peak MB | JVM peak MB | counts exact |")
    print("| ---: | ---: | ---: | ---: | ---: | :---: |")
    for r in results:
        print(
            f"| {r['n']:,} | {r['n'] // 2:,} | {r['seconds']} | {r['driver_python_mb']} | {r['jvm_mb']} | "
            f"{'yes' if r['exact'] else 'NO'} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"cpu": cpu, "cpus": os.cpu_count(), "driver_memory": args.driver_memory, "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
