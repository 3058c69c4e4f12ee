"""The hybrid section: behaviour (Spark MLlib ALS on an interactions table) blended with visual
similarity, with a ridge map from pictures to behaviour for items nobody has interacted with yet
(docs/hybrid.md)."""

from __future__ import annotations

from typing import ClassVar

from lookalike.config.base import POSITIVE, Settings, setting


class HybridConfig(Settings):
    prefix: ClassVar[str] = "hybrid."
    interactions: str | None = setting(
        None,
        "The interactions table: `user_id`, `item_id`, optional `weight` (a positive number, default 1) "
        "and `timestamp`; Parquet, CSV (by its `.csv` name) or an Iceberg table, local, `s3://` or "
        "`hdfs://`. When set, the pipeline also writes `output.hybrid`. See [hybrid](hybrid.md).",
    )
    # Measured on simulated interactions over 3,781 clothing photos (docs/hybrid.md).
    alpha: float = setting(
        0.5,
        "Weight of behaviour in the blended score `alpha * cf + (1 - alpha) * visual` (cosines): 0 is "
        "the visual neighbours, 1 behaviour alone. The default is measured in "
        "[hybrid](hybrid.md#choosing-alpha).",
        "a number between 0 and 1",
        ge=0,
        le=1,
    )
    rank: int = setting(32, "ALS: length of the behaviour factors.", POSITIVE, ge=1)
    iterations: int = setting(10, "ALS: alternating least-squares iterations.", POSITIVE, ge=1)
    reg_param: float = setting(0.05, "ALS: regularisation of the factors.", "a number, 0 or more", ge=0)
    confidence: float = setting(
        10.0,
        "ALS implicit feedback: confidence per unit of weight (MLlib's `alpha`).",
        "a positive number",
        gt=0,
    )
    seed: int = setting(0, "ALS: seed of the factors' initialisation, so that a re-run gives the same factors.")
    ridge: float = setting(
        1.0,
        "Regularisation of the ridge map from an item's visual embedding to its behaviour factor, "
        "learned on items with interactions and applied to those without.",
        "a number, 0 or more",
        ge=0,
    )
