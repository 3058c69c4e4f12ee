"""Job configuration: YAML in ``conf/`` parsed into frozen dataclasses and validated at start.

Every problem is reported with the dotted key, what was given and what is allowed, so that a
scheduled run fails before it touches any data instead of half way through.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from lookalike.errors import ConfigError

DEFAULT_IMAGE_PATTERN = "*.jpg|*.jpeg|*.png|*.webp|*.gif|*.bmp|*.tif|*.tiff"


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "lookalike"
    # Extra Spark settings passed to the session builder, e.g. {"spark.executor.memory": "4g"}.
    conf: dict = field(default_factory=dict)


@dataclass(frozen=True)
class InputConfig:
    uri: Optional[str] = None
    # '|'-separated globs matched case-insensitively against the file name.
    pattern: str = DEFAULT_IMAGE_PATTERN
    # Regex applied to the key relative to input.uri; group 'id' (or group 1, or the whole match)
    # is the item id. Default: the relative key without its extension.
    id_regex: Optional[str] = None
    # A Parquet or CSV table of keys (S3 Inventory or any table with a key column) read instead of
    # listing; see docs/cluster.md, "Inputs at catalogue scale".
    manifest: Optional[str] = None
    manifest_key_column: str = "key"
    # Column names of CSV manifest files that have no header row, comma-separated like the
    # fileSchema of an S3 Inventory manifest.json (which is used instead when input.manifest points
    # at one), e.g. "Bucket, Key, Size, ETag". Unset: such files must have exactly Bucket, Key.
    manifest_schema: Optional[str] = None
    # Images whose declared width*height exceeds this are refused before decoding (decompression
    # bombs); 0 disables the check.
    max_pixels: int = 50_000_000
    max_bytes: int = 50 * 1024 * 1024
    # Fail the run (and publish nothing) when more than this share of images fail.
    max_error_fraction: float = 0.05
    # Skip images whose key and version are unchanged since the previous embeddings table.
    incremental: bool = False
    # Images per Spark task; small enough that progress and retries are fine-grained.
    partition_size: int = 128


@dataclass(frozen=True)
class S3Config:
    endpoint_url: Optional[str] = None
    region: str = "us-east-1"
    max_attempts: int = 8
    retry_mode: str = "standard"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_pool_connections: int = 16


@dataclass(frozen=True)
class ModelConfig:
    # The backbone: vgg16 | resnet50 | efficientnetv2b0 (Keras Applications) | efficientnet_lite0
    # (ImageNet weights from a pip package, no download) | keras_file (model.file).
    name: str = "vgg16"
    # imagenet (Keras' own download; for efficientnet_lite0 the packaged checkpoint) | a local
    # weights file (.h5; .pth for efficientnet_lite0) | an s3:// URI | none (random init)
    weights: str = "imagenet"
    # Expected md5 of the weights file or model.file; published files are checked anyway.
    weights_md5: Optional[str] = None
    # What to do when ImageNet weights cannot be downloaded (no network): fail; random (random
    # init, every row marked); or efficientnet_lite0 (a trained model that needs no download).
    on_missing_weights: str = "fail"
    # model.name=keras_file: a .keras model (local or s3://) and the normalisation it was
    # trained with (caffe | torch | tf | lite | raw); see docs/backbones.md.
    file: Optional[str] = None
    preprocessing: Optional[str] = None
    pooling: str = "avg"
    batch_size: int = 32
    seed: int = 0
    # auto | float32 | bfloat16 | float16: the compute dtype (outputs are float32). auto asks the
    # executors: bfloat16 where every one has AMX-BF16/AVX512-BF16 (or an Ampere+ GPU), else
    # float32. float32 gives bit-reproducible runs.
    precision: str = "auto"
    # auto | keras | openvino: what runs the model. auto: OpenVINO on CPU executors that have it,
    # Keras on GPUs. The Keras model is the source of truth; OpenVINO gets a converted copy.
    runtime: str = "auto"
    # XLA compilation of the model: null = Keras' choice (on for GPUs and for JAX, off on CPU-only
    # TensorFlow), true/false to force it. Batches are then padded to model.batch_size so that
    # one compiled program serves every batch.
    jit_compile: Optional[bool] = None
    # TensorFlow threads per Python worker; 0 = spark.task.cpus (one per concurrently running task).
    threads: int = 0
    cache_dir: str = "~/.cache/lookalike/weights"


@dataclass(frozen=True)
class NeighboursConfig:
    k: int = 10
    min_score: Optional[float] = None
    broadcast_max_mb: float = 256.0
    block_rows: int = 1024
    # Item ids that may be recommended: a list, or a path to a CSV/Parquet table with item_id.
    candidates: Any = None
    method: str = "exact"
    # Exact: when the queries are the candidates, score each block once for both of its sides.
    symmetric: bool = True
    nlist: int = 0
    nprobe: int = 8
    recall_sample: int = 1000
    # IVF: k-means initialisation and the samples drawn (training, recall), for identical re-runs.
    seed: int = 0
    partitions: int = 0
    # Rows per Parquet row group of the neighbour table (whole items only): what a point lookup reads.
    row_group_rows: int = 65536
    # A CSV/Parquet table of item_id and any columns, for same and exclude_same.
    attributes: Optional[str] = None
    # An attributes column: an item's neighbours all share its value (null: no neighbours).
    same: Optional[str] = None
    # An attributes column: never recommend an item sharing the query's value (its own variants).
    exclude_same: Optional[str] = None
    # At most one member of each near-duplicate group (output.duplicates) in a list, none of the query's.
    hide_duplicates: bool = False

    def result_fingerprint(self) -> str:
        """A hash of the keys that decide the table's rows (NEIGHBOURS_RESULT_KEYS), for the
        unchanged-input skip. A candidates table counts as "a table": its content is identified
        apart (neighbours.inputs.candidates_identity)."""
        keys = NEIGHBOURS_RESULT_KEYS + (NEIGHBOURS_IVF_RESULT_KEYS if self.method == "ivf" else ())
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
            if values.get(key) in (None, False):
                del values[key]
        return _digest(values)


# The neighbours keys that change what the table holds. The others must not force the N^2 work
# when they change: block_rows, broadcast_max_mb and symmetric give a bit-identical table,
# row_group_rows and (for exact) partitions only cut it into other files and row groups, and
# recall_sample only measures IVF's recall for the summary.
NEIGHBOURS_RULE_KEYS = ("attributes", "same", "exclude_same", "hide_duplicates")
NEIGHBOURS_RESULT_KEYS = ("k", "min_score", "method", "candidates") + NEIGHBOURS_RULE_KEYS
# IVF's answer depends on its lists; exact search ignores these keys. partitions is here because
# Spark draws the seeded k-means training sample partition by partition.
NEIGHBOURS_IVF_RESULT_KEYS = ("nlist", "nprobe", "seed", "partitions")


@dataclass(frozen=True)
class DuplicatesConfig:
    # Run the duplicates stage in the pipeline job (./spark-submit.sh duplicates runs it anyway).
    enabled: bool = False
    # Pairs at or above this cosine are near-duplicates. Measured with EfficientNet-Lite0 on 3,781
    # clothing photos (docs/duplicates.md): resized and re-encoded copies score >= 0.956 with their
    # original, two different garments at most 0.939.
    min_score: float = 0.95
    broadcast_max_mb: float = 256.0
    block_rows: int = 1024
    partitions: int = 0


@dataclass(frozen=True)
class OutputConfig:
    embeddings: str = "output/embeddings"
    errors: str = "output/errors"
    neighbours: str = "output/neighbours"
    duplicates: str = "output/duplicates"
    # Remove a lock left by a crashed run (see docs/scheduled-runs.md).
    force_unlock: bool = False


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    input: InputConfig = field(default_factory=InputConfig)
    s3: S3Config = field(default_factory=S3Config)
    model: ModelConfig = field(default_factory=ModelConfig)
    neighbours: NeighboursConfig = field(default_factory=NeighboursConfig)
    duplicates: DuplicatesConfig = field(default_factory=DuplicatesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def fingerprint(self, section: str) -> str:
        """A short stable hash of one section, stored with outputs to detect changed settings."""
        return _digest(dataclasses.asdict(getattr(self, section)))


def _digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


CHOICES = {
    "model.name": ("vgg16", "resnet50", "efficientnetv2b0", "efficientnet_lite0", "keras_file"),
    "model.pooling": ("avg", "max", "flatten"),
    "model.on_missing_weights": ("fail", "random", "efficientnet_lite0"),
    "model.precision": ("auto", "float32", "bfloat16", "float16"),
    "model.runtime": ("auto", "keras", "openvino"),
    "s3.retry_mode": ("standard", "adaptive", "legacy"),
    "neighbours.method": ("exact", "ivf"),
}

# (key, predicate, what is allowed)
BOUNDS = [
    ("model.batch_size", lambda v: v >= 1, "a positive integer"),
    ("model.threads", lambda v: v >= 0, "0 (auto) or a positive integer"),
    ("input.max_pixels", lambda v: v >= 0, "0 (no limit) or a positive integer"),
    ("input.max_bytes", lambda v: v >= 1, "a positive integer"),
    ("input.max_error_fraction", lambda v: 0 <= v <= 1, "a number between 0 and 1"),
    ("input.partition_size", lambda v: v >= 1, "a positive integer"),
    ("s3.max_attempts", lambda v: v >= 1, "a positive integer"),
    ("neighbours.k", lambda v: v >= 1, "a positive integer"),
    ("neighbours.broadcast_max_mb", lambda v: v > 0, "a positive number of megabytes"),
    ("neighbours.block_rows", lambda v: v >= 1, "a positive integer"),
    ("neighbours.min_score", lambda v: v is None or -1 <= v <= 1, "null or a cosine in [-1, 1]"),
    ("neighbours.nlist", lambda v: v >= 0, "0 (auto, about sqrt(N)) or a positive integer"),
    ("neighbours.nprobe", lambda v: v >= 1, "a positive integer"),
    ("neighbours.recall_sample", lambda v: v >= 0, "0 (off) or a number of sampled queries"),
    ("neighbours.partitions", lambda v: v >= 0, "0 (auto) or a positive integer"),
    ("neighbours.row_group_rows", lambda v: v >= 1, "a positive number of rows"),
    # At or below 0 nearly every pair of a catalogue qualifies: N^2 / 2 rows, not near-duplicates.
    ("duplicates.min_score", lambda v: 0 < v <= 1, "a cosine in (0, 1]"),
    ("duplicates.broadcast_max_mb", lambda v: v > 0, "a positive number of megabytes"),
    ("duplicates.block_rows", lambda v: v >= 1, "a positive integer"),
    ("duplicates.partitions", lambda v: v >= 0, "0 (auto) or a positive integer"),
]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if tp is Any:
        return "any value"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(key, value, inner)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        pass  # bool is an int subclass; reject below
    elif isinstance(value, tp):
        return value
    raise ConfigError(
        f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__}). "
        f"Fix it in the YAML file or with --set {key}=..."
    )


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown config key '{prefix}{key}'.{hint} Allowed keys in "
            f"'{prefix.rstrip('.') or 'top level'}': {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", data[name], tp)
    return cls(**kwargs)


def _get(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def validate(cfg: Config, require: tuple[str, ...] = ()) -> Config:
    """Check choices, bounds and the keys a job needs; return ``cfg`` unchanged."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(allowed)}")
    for key, ok, allowed in BOUNDS:
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"config key '{key}': {value!r} is not allowed; use {allowed}")
    for key in require:
        if _get(cfg, key) in (None, ""):
            raise ConfigError(
                f"config key '{key}' is required for this job; set it in the YAML file "
                f"or with --set {key}=..."
            )
    if cfg.input.id_regex is not None:
        try:
            re.compile(cfg.input.id_regex)
        except re.error as exc:
            raise ConfigError(f"config key 'input.id_regex': not a valid regular expression ({exc})")
    _validate_model(cfg.model)
    _validate_runtime(cfg)
    candidates = cfg.neighbours.candidates
    if candidates is not None and not isinstance(candidates, (str, list)):
        raise ConfigError(
            "config key 'neighbours.candidates': expected null, a list of item ids or the path of "
            f"a CSV/Parquet table with an item_id column; got {candidates!r}"
        )
    _validate_neighbour_rules(cfg.neighbours)
    return cfg


def _validate_neighbour_rules(settings: NeighboursConfig) -> None:
    for key in ("same", "exclude_same"):
        column = getattr(settings, key)
        if column is None:
            continue
        if settings.attributes is None:
            raise ConfigError(
                f"config key 'neighbours.{key}' names the column {column!r} of an attributes table, but "
                f"neighbours.attributes is not set; set it to a CSV/Parquet table with item_id and {column!r}")
        if column in ("", "item_id"):
            raise ConfigError(
                f"config key 'neighbours.{key}': {column!r} is not an attribute column; name a column such "
                f"as category or product family of neighbours.attributes, or set it to null")
    if settings.same is not None and settings.same == settings.exclude_same:
        raise ConfigError(
            f"config keys 'neighbours.same' and 'neighbours.exclude_same' both name {settings.same!r}: that "
            f"would allow no neighbour at all; use different columns, or set one to null")


PREPROCESSING = ("caffe", "torch", "tf", "lite", "raw")


def _validate_runtime(cfg: Config) -> None:
    model = cfg.model
    if model.runtime != "openvino":
        return
    if model.precision == "float16":
        raise ConfigError("model.runtime=openvino computes in float32 or bfloat16 on CPUs; set model.precision "
                          "to auto, bfloat16 or float32, or model.runtime=keras for float16 on GPUs")
    gpus = cfg.spark.conf.get("spark.task.resource.gpu.amount")
    if gpus not in (None, 0, "0"):
        raise ConfigError("model.runtime=openvino is a CPU runtime, but spark.task.resource.gpu.amount gives "
                          "every task a GPU; set model.runtime=auto or keras for GPU executors")


def _validate_model(model: ModelConfig) -> None:
    weights = model.weights
    if weights not in ("imagenet", "none") and not (
        weights.startswith("s3://") or weights.endswith((".h5", ".pth")) or os.path.exists(_local(weights))
    ):
        raise ConfigError(
            f"config key 'model.weights': {weights!r} is neither 'imagenet', 'none', an s3:// URI "
            f"nor an existing weights file (.h5, or .pth for efficientnet_lite0)"
        )
    if weights.endswith(".pth") and model.name != "efficientnet_lite0":
        raise ConfigError(f"config key 'model.weights': {weights!r} is a PyTorch checkpoint, which only "
                          f"model.name=efficientnet_lite0 reads; {model.name} takes Keras .h5 weights")
    if model.name == "keras_file":
        if not model.file:
            raise ConfigError("model.name=keras_file needs model.file: the path or s3:// URI of a .keras "
                              "model, e.g. --set model.file=s3://bucket/models/finetuned.keras")
        if not (model.file.endswith(".keras") or model.file.startswith("s3://") or os.path.exists(_local(model.file))):
            raise ConfigError(f"config key 'model.file': {model.file!r} is neither an s3:// URI nor an "
                              f"existing .keras file")
        if model.preprocessing not in PREPROCESSING:
            raise ConfigError(
                f"config key 'model.preprocessing': model.name=keras_file needs the normalisation the "
                f"model was trained with, one of {', '.join(PREPROCESSING)} (got {model.preprocessing!r}); "
                f"see docs/backbones.md")
    else:
        for key in ("file", "preprocessing"):
            if getattr(model, key) is not None:
                raise ConfigError(
                    f"config key 'model.{key}' applies to model.name=keras_file only; {model.name} "
                    f"has its own (see docs/backbones.md). Remove it, or set model.name=keras_file")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value typed as YAML would type it)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r} (example: --set model.batch_size=16)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set expects a dotted key such as model.batch_size, got {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse {raw!r} as a YAML value ({exc})") from None
    return key.split("."), value


def load_dict(path: Optional[str]) -> dict:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)  # safe_load: configs never construct Python objects
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    path: Optional[str] = None,
    overrides: tuple[str, ...] | list[str] = (),
    require: tuple[str, ...] = (),
) -> Config:
    """Read a YAML file, apply ``--set`` overrides, type-check and validate."""
    data = load_dict(path)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return validate(from_dict(data), require)


def from_dict(data: dict) -> Config:
    return _build(Config, data, "")


def updated(settings: Any, **changes: Any) -> Any:
    """A copy of a config section (or of the whole config) with some keys changed, e.g.
    ``updated(cfg.model, precision="float32")``."""
    return dataclasses.replace(settings, **changes)


def replace(cfg: Config, **sections: dict) -> Config:
    """A copy of ``cfg`` with some keys of some sections changed, e.g. replace(c, model={"seed": 1})."""
    changes = {name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    return validate(dataclasses.replace(cfg, **changes))
