"""What people run on the published tables without Spark: the ``lookalike`` command, readers."""
