"""The neighbours stage: embeddings in, each item's cosine top-k out, in the order of the data flow.

inputs.py     read the embeddings table and neighbours.candidates (and the filter's identity)
prepare.py    order by item_id, normalise, inspect and validate; where partitions' candidates start
exact.py      exact scoring: broadcast candidate chunks, plain or symmetric blocks
ivf_stage.py  approximate scoring (neighbours.method: ivf) in Spark, on the numeric core in ivf.py
write.py      merge the partial lists per item, rank, write one Parquet file per partition
arrow.py      Arrow helpers both scorers share (vectors from bytes, PARTIAL rows, toArrow)
watch.py      Spark actions under a progress watcher

The numpy kernel, without Spark: topk.py (topk_block, topk_pair, merge), on canonical.py (the
canonical score and order) and pool.py (the float32 selection); ivf.py (k-means, lists, groups);
incremental.py (previous lists brought up to date with the changed items: issue 25's core, not
yet used by the job). lookalike.jobs.neighbours runs them in this order.
"""
