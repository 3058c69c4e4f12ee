"""The neighbours stage: the top-k kernel, exact and IVF scoring in Spark, and the ranked table."""
