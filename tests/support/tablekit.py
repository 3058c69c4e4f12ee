"""Test helpers: embeddings and neighbour tables in the published schemas, written the way Spark
writes them (a directory of part files plus _SUCCESS), with neighbours from a brute-force cosine
top-k so that tests do not depend on the neighbours job."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import schemas
from tests.support.paths import SAMPLE_DIR, SAMPLE_LABELS


def sample_items() -> list[tuple[str, str, str]]:
    """(item_id, file URI, label) of the shipped sample, in id order."""
    with open(SAMPLE_LABELS, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return sorted((r["item_id"], (SAMPLE_DIR / f"{r['item_id']}.jpg").as_uri(), r["label"]) for r in rows)


def label_vectors(labels: list[str], dim: int = 16, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """Vectors that cluster by label (one random centre per label plus noise), float32."""
    rng = np.random.default_rng(seed)
    centres = {label: rng.normal(size=dim) for label in sorted(set(labels))}
    return np.stack([centres[label] + noise * rng.normal(size=dim) for label in labels]).astype(np.float32)


def embeddings_table(
    ids: list[str], uris: list[str], vectors: np.ndarray, weights: str = "random-init:seed=0", model: str = "vgg16"
) -> pa.Table:
    n, dim = vectors.shape
    now = pa.scalar(0, pa.timestamp("us", tz="UTC"))
    data = {
        "item_id": ids,
        "uri": uris,
        "source_version": ["v1"] * n,
        "source_bytes": [1000] * n,
        "width": [224] * n,
        "height": [224] * n,
        "model": [model] * n,
        "weights": [weights] * n,
        "pooling": ["avg"] * n,
        "precision": ["float32"] * n,
        "runtime": ["keras"] * n,
        "dim": [dim] * n,
        "embedding": [list(map(float, v)) for v in vectors],
        "model_fingerprint": ["test"] * n,
        "run_id": ["test-run"] * n,
        "embedded_at": [now.value] * n,
    }
    return pa.Table.from_pydict(data, schema=schemas.arrow_schema(schemas.EMBEDDINGS))


def brute_force_neighbours(ids: list[str], vectors: np.ndarray, k: int) -> pa.Table:
    """Exact cosine top-k per item, self excluded, ties broken by neighbour id."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ unit.T
    rows = {"item_id": [], "rank": [], "neighbour_id": [], "score": []}
    for i, item in enumerate(ids):
        order = sorted((j for j in range(len(ids)) if j != i), key=lambda j: (-scores[i, j], ids[j]))
        for rank, j in enumerate(order[:k], start=1):
            rows["item_id"].append(item)
            rows["rank"].append(rank)
            rows["neighbour_id"].append(ids[j])
            rows["score"].append(float(scores[i, j]))
    return pa.Table.from_pydict(rows, schema=schemas.arrow_schema(schemas.NEIGHBOURS))


def write_table(table: pa.Table, directory: os.PathLike, parts: int = 2) -> str:
    """Write like Spark: part files and _SUCCESS in ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = max(1, -(-table.num_rows // parts))
    for index, start in enumerate(range(0, table.num_rows, step)):
        pq.write_table(table.slice(start, step), directory / f"part-{index:05d}.snappy.parquet")
    (directory / "_SUCCESS").touch()
    return str(directory)


def sample_tables(directory: os.PathLike, k: int = 5) -> tuple[str, str, list[tuple[str, str, str]]]:
    """Embeddings and neighbour tables over the shipped sample images; (embeddings, neighbours, items)."""
    items = sample_items()
    ids = [i for i, _, _ in items]
    vectors = label_vectors([label for _, _, label in items])
    directory = Path(directory)
    embeddings = write_table(embeddings_table(ids, [u for _, u, _ in items], vectors), directory / "embeddings")
    neighbours = write_table(brute_force_neighbours(ids, vectors, k), directory / "neighbours")
    return embeddings, neighbours, items
