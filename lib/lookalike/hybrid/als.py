"""Behaviour factors: Spark MLlib's ALS (implicit feedback) on the cleaned interactions.

MLlib wants integer ids; users and items are numbered in alphabetical order of their ids
(StringIndexer, ``alphabetAsc``), so that the numbering, hence ALS' seeded start and its
factors, depend on the ids and not on the order the rows arrive in."""

from __future__ import annotations

from lookalike.config.hybrid import HybridConfig

FACTORS = "item_id string, factor array<float>"


def numbered(usable):
    """``usable`` (user_id, item_id, weight) with integer ``user`` and ``item`` columns, and the
    fitted item indexer's labels (item number -> item_id)."""
    from pyspark.ml.feature import StringIndexer
    from pyspark.sql import functions as F

    users = StringIndexer(inputCol="user_id", outputCol="user", stringOrderType="alphabetAsc").fit(usable)
    items = StringIndexer(inputCol="item_id", outputCol="item", stringOrderType="alphabetAsc").fit(usable)
    frame = items.transform(users.transform(usable))
    frame = frame.withColumn("user", F.col("user").cast("int")).withColumn("item", F.col("item").cast("int"))
    return frame, list(items.labels)


def estimator(settings: HybridConfig):
    """The MLlib ALS the job fits (tests fit the same one directly)."""
    from pyspark.ml.recommendation import ALS

    return ALS(
        rank=settings.rank,
        maxIter=settings.iterations,
        regParam=settings.reg_param,
        alpha=settings.confidence,
        implicitPrefs=True,
        seed=settings.seed,
        userCol="user",
        itemCol="item",
        ratingCol="weight",
        nonnegative=False,
    )


def item_factors(spark, usable, settings: HybridConfig):
    """DataFrame of FACTORS: each warm item's ALS factor, as MLlib computed it (not normalised)."""
    frame, labels = numbered(usable)
    model = estimator(settings).fit(frame)
    names = spark.createDataFrame(list(enumerate(labels)), "id int, item_id string")
    return model.itemFactors.join(names, "id").select("item_id", model.itemFactors["features"].alias("factor"))
