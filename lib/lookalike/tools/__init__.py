"""What people run on the published tables without Spark.

cli.py        the ``lookalike`` command: similar (query.py), report (report.py), evaluate (evaluate.py)
labels.py     item_id,label or path,label CSVs for report and evaluate
readers.py    the embeddings table for training: tf.data and petastorm (public as lookalike.readers)
"""
