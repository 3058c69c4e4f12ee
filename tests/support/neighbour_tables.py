"""Embeddings tables for the neighbours and duplicates jobs' tests, and how their outputs are read
and compared with the brute-force oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lookalike.config import from_dict
from tests.support.outputs import read_output
from tests.support.tablekit import embeddings_table, write_table


def make_ids(n: int, seed: int = 0) -> list[str]:
    """Ids in shuffled order, of mixed length and with non-ASCII characters, so that the job's
    (Spark, binary UTF-8) order and Python's code point order are both exercised."""
    rng = np.random.default_rng(seed)
    stems = ["a", "B", "é", "z", "Ä", "ß", "日本"]
    return [f"{stems[i % len(stems)]}-{int(v)}" for i, v in enumerate(rng.permutation(n) * 7 + 3)]


def embeddings_dir(tmp: Path, ids: list[str], vectors: np.ndarray, parts: int = 3) -> str:
    return write_table(embeddings_table(ids, [f"file:///x/{i}.jpg" for i in ids], vectors), tmp / "embeddings", parts)


def config(tmp: Path, embeddings: str, **neighbours):
    return from_dict(
        {
            "output": {
                "embeddings": embeddings,
                "neighbours": str(tmp / "neighbours"),
                # Its own catalog: tests compute several neighbour tables from one embeddings table.
                "catalog": {"uri": str(tmp / "catalog.db")},
            },
            "neighbours": neighbours,
        }
    )


def read_lists(path: str) -> dict:
    """{item_id: [(rank, neighbour_id, score), ...]} of a neighbour table (an output or a file)."""
    table = (pq.read_table(path) if str(path).endswith(".parquet") else read_output(path)).to_pylist()
    result: dict = {}
    for row in sorted(table, key=lambda r: (r["item_id"], r["rank"])):
        result.setdefault(row["item_id"], []).append((row["rank"], row["neighbour_id"], row["score"]))
    return result


def assert_matches(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for item, expected in want.items():
        rows = got[item]
        assert [r for r, _, _ in rows] == list(range(1, len(expected) + 1)), item
        assert [n for _, n, _ in rows] == [n for n, _ in expected], item
        np.testing.assert_allclose([s for _, _, s in rows], [s for _, s in expected], atol=1e-5)


def publish_embeddings(
    spark, embeddings: str, ids: list[str], vectors: np.ndarray, content: str, run_id: str = "20260101T000000Z-embed001"
) -> str:
    """Publish an embeddings table the way the embed job does, with ``content`` as its content id
    (what the neighbours job's unchanged-input check compares)."""
    from lookalike import publish
    from lookalike.config import OutputConfig

    output = OutputConfig(embeddings=embeddings)
    with publish.OutputSet(spark, output, ["embeddings"], run_id) as out:
        write_table(embeddings_table(ids, [f"file:///x/{i}.jpg" for i in ids], vectors), out.staging("embeddings"), 2)
        out.commit({"embeddings": {"embeddings_content": content}})
    return embeddings
