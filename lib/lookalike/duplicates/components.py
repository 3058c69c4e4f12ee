"""Connected components of the pair graph, in Spark: the near-duplicate groups.

Min-label propagation with pointer jumping, on DataFrames. Every item with a pair starts with
the smaller of its own index and its neighbours' indices as its label; then, each round,

1. propagate: an item takes the smallest label among its own and its neighbours' labels;
2. jump: it takes the label of its label (a label is always an item of the same group, with a
   label of its own no larger), which halves a chain's remaining length instead of walking it
   one edge per round;

until no label changes. Labels only decrease and stay inside the item's group, and at the fixed
point the label is equal across every edge, so each item's label is its group's smallest index:
the representative (indices follow item_id order). Rounds: about log2 of a group's diameter plus
a few; the count is in the summary. Each round's labels are checkpointed, so the lineage (and
the plan Spark optimises) stays one round long however many rounds it takes; nothing but counts
reaches the driver.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def _cut(frame):
    """Materialise ``frame`` and drop its lineage: to the checkpoint directory when the application
    has one (survives a lost executor), else in the executors' block stores."""
    if frame.sparkSession.sparkContext.getCheckpointDir():
        return frame.checkpoint(eager=True)
    return frame.localCheckpoint(eager=True)


def labels(pairs, held: list):
    """(v long, label long) for every item of ``pairs`` (PAIRS rows), label = the smallest index of
    its connected component; and the number of rounds it took."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    edges = (
        pairs.select(F.col("i").alias("src"), F.col("j").alias("dst"))
        .union(pairs.select(F.col("j").alias("src"), F.col("i").alias("dst")))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    held.append(edges)
    current = _cut(edges.groupBy(F.col("src").alias("v")).agg(F.least(F.min("dst"), F.col("src")).alias("label")))
    rounds = 0
    while True:
        rounds += 1
        heard = edges.join(current.withColumnRenamed("v", "src"), "src").select(
            F.col("dst").alias("v"), "label", F.lit(False).alias("own")
        )
        mine = current.select("v", "label", F.lit(True).alias("own"))
        spread = (
            heard.union(mine)
            .groupBy("v")
            .agg(F.min("label").alias("label"), F.max(F.when(F.col("own"), F.col("label"))).alias("before"))
        )
        target = spread.select(F.col("v").alias("label"), F.col("label").alias("jumped"))
        step = _cut(
            spread.join(target, "label").select(
                "v", F.col("jumped").alias("label"), (F.col("jumped") != F.col("before")).alias("changed")
            )
        )
        changed = step.filter("changed").count()
        current = step.select("v", "label")
        log.info("duplicates components round %d: %d labels changed", rounds, changed)
        if not changed:
            return current, rounds
