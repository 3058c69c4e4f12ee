"""Job modules: each exposes ``run(spark, config) -> summary`` and a thin ``main(argv)``."""
