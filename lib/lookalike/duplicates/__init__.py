"""Near-duplicate groups (the duplicates job): every pair of items with cosine >= duplicates.min_score,
found with the neighbours job's blocked exact scoring (``pairs``), the connected components of
that graph computed in Spark (``components``), one row per member written (``write``)."""
