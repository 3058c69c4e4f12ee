"""A Python worker that dies once, mid-task: the crash injected by tests/e2e/test_killed_worker.py.

Spark starts it in place of ``pyspark.worker`` (``spark.python.use.daemon=false`` and
``spark.python.worker.module=crashing_worker``, with this folder on PYTHONPATH). It wraps the
model's ``embed`` so that the first worker to finish a batch after real work exits the process
before its task returns any output; the file named by LOOKALIKE_TEST_CRASH_ONCE makes it happen
once per run. Production code knows nothing of it.
"""

import os
import runpy


def _install() -> None:
    marker = os.environ.get("LOOKALIKE_TEST_CRASH_ONCE")
    if not marker:
        return
    from lookalike.embed import model

    original = model.Embedder.embed

    def embed_then_die_once(self, batch):
        out = original(self, batch)
        try:
            # O_EXCL: of two workers racing here, exactly one dies.
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return out
        os._exit(17)

    model.Embedder.embed = embed_then_die_once


_install()
runpy.run_module("pyspark.worker", run_name="__main__", alter_sys=True)
