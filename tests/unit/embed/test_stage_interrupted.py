"""A task interrupted while its decode threads still have fetches queued (the model failed, Spark
cancelled it) leaves none of them running behind it (issue 24, item 14)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest

from lookalike.config import load_config
from lookalike.embed import model, stage

BATCH = 4


class FailingEmbedder:
    input_size = (8, 8)
    interpolation = "bilinear"

    def embed(self, pixels):
        raise RuntimeError("the model failed")


def test_an_interrupted_task_cancels_the_fetches_it_queued(monkeypatch):
    release = threading.Event()
    calls: list[str] = []
    lock = threading.Lock()

    def load(uri, cfg, input_size, interpolation):
        with lock:
            calls.append(uri)
            number = len(calls)
        if number > BATCH:  # the second batch, fetched while the model works on the first
            release.wait(10)
        return np.zeros((8, 8, 3), np.uint8), (8, 8), None, None, 0.0, 0.0

    monkeypatch.setattr(stage, "_load", load)
    monkeypatch.setattr(model, "get_embedder", lambda *args: FailingEmbedder())
    cfg = load_config(None, [f"model.batch_size={BATCH}", "model.threads=2"])
    uris = [f"file:///images/{i}.jpg" for i in range(3 * BATCH)]
    frame = pd.DataFrame(
        {"item_id": [str(i) for i in range(len(uris))], "uri": uris, "source_version": "v", "source_bytes": 1}
    )
    embed_partition = stage.make_embed_function(cfg, "run", task_cpus=2)
    with pytest.raises(RuntimeError, match="the model failed"):
        next(embed_partition(iter([frame])))
    release.set()
    time.sleep(0.5)  # time for anything still queued to start
    # The first batch, and of the second at most what the two threads had started: the rest was
    # cancelled (without cancel_futures all of it runs once the threads are free).
    assert stage.worker_threads(cfg, 2) == 2
    assert BATCH <= len(calls) <= BATCH + 2, calls
