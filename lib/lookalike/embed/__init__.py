"""The embed stage: image files in, one embedding or one error row per image out.

listing.py    list input.uri (through lookalike.io) and turn keys into item ids
manifest.py   input.manifest: the keys read from a table (S3 Inventory) by the executors
plan.py       incremental runs: what to embed, what to carry over from the previous table
images.py     bytes -> 224x224 RGB pixels, or a precise reason why not
model.py      the Keras CNN: Embedder.embed(batch) -> array, weights sources and their checks
stage.py      the Spark stage (mapInPandas): fetch, decode on a thread pool, embed, one row each

lookalike.jobs.embed runs them in this order.
"""
