"""Reading a config: YAML file, `--set` overrides merged in, the models built, and the rules that
span keys (or look at the file system) checked before a job touches any data."""

from __future__ import annotations

import os
import typing
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from lookalike.config.base import Settings
from lookalike.config.messages import config_error, section_model
from lookalike.config.models import PREPROCESSING, Config, ModelConfig, NeighboursConfig
from lookalike.errors import ConfigError

S = TypeVar("S", bound=Settings)


def _get(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def validate(cfg: Config, require: tuple[str, ...] = ()) -> Config:
    """Check the keys a job needs and the rules between keys; return ``cfg`` unchanged. (Types,
    choices and ranges are checked when the models are built.)"""
    for key in require:
        if _get(cfg, key) in (None, ""):
            raise ConfigError(
                f"config key '{key}' is required for this job; set it in the YAML file or with --set {key}=..."
            )
    _validate_model(cfg.model)
    _validate_runtime(cfg)
    _validate_neighbour_rules(cfg.neighbours)
    return cfg


# Not model validators: a section is built with any of these on the way to a valid config (a
# fallback swaps the weights, a test changes one neighbours key at a time), and whether a weights
# file exists is a fact about the driver's disk, not about the section.
def _validate_neighbour_rules(settings: NeighboursConfig) -> None:
    for key in ("same", "exclude_same"):
        column = getattr(settings, key)
        if column is None:
            continue
        if settings.attributes is None:
            raise ConfigError(
                f"config key 'neighbours.{key}' names the column {column!r} of an attributes table, but "
                f"neighbours.attributes is not set; set it to a CSV/Parquet table with item_id and {column!r}"
            )
        if column in ("", "item_id"):
            raise ConfigError(
                f"config key 'neighbours.{key}': {column!r} is not an attribute column; name a column such "
                f"as category or product family of neighbours.attributes, or set it to null"
            )
    if settings.method == "ivf" and settings.nprobe == 0 and settings.recall_sample == 0:
        raise ConfigError(
            "config key 'neighbours.nprobe' is 0 (chosen to reach neighbours.target_recall), which needs "
            "queries to measure recall on, but neighbours.recall_sample is 0; set recall_sample "
            "(default 1000) or a fixed nprobe"
        )
    if settings.augment and settings.incremental:
        raise ConfigError(
            f"config key 'neighbours.augment' ({settings.augment}) cannot be combined with "
            "neighbours.incremental: an augmented vector changes whenever its neighbours do, so every "
            "run would be a full one; set neighbours.augment=0 or neighbours.incremental=false"
        )
    if settings.same is not None and settings.same == settings.exclude_same:
        raise ConfigError(
            f"config keys 'neighbours.same' and 'neighbours.exclude_same' both name {settings.same!r}: that "
            f"would allow no neighbour at all; use different columns, or set one to null"
        )


def _validate_runtime(cfg: Config) -> None:
    model = cfg.model
    if model.runtime != "openvino":
        return
    if model.precision == "float16":
        raise ConfigError(
            "model.runtime=openvino computes in float32 or bfloat16 on CPUs; set model.precision "
            "to auto, bfloat16 or float32, or model.runtime=keras for float16 on GPUs"
        )
    gpus = cfg.spark.conf.get("spark.task.resource.gpu.amount")
    if gpus not in (None, 0, "0"):
        raise ConfigError(
            "model.runtime=openvino is a CPU runtime, but spark.task.resource.gpu.amount gives "
            "every task a GPU; set model.runtime=auto or keras for GPU executors"
        )


def _validate_model(model: ModelConfig) -> None:
    _validate_keras_hub(model)
    weights = model.weights
    if weights not in ("imagenet", "none") and not (
        weights.startswith("s3://") or weights.endswith((".h5", ".pth")) or os.path.exists(_local(weights))
    ):
        raise ConfigError(
            f"config key 'model.weights': {weights!r} is neither 'imagenet', 'none', an s3:// URI "
            f"nor an existing weights file (.h5, or .pth for efficientnet_lite0/1/2)"
        )
    if weights.endswith(".pth") and not model.name.startswith("efficientnet_lite"):
        raise ConfigError(
            f"config key 'model.weights': {weights!r} is a PyTorch checkpoint, which only "
            f"model.name=efficientnet_lite0/1/2 reads; {model.name} takes Keras .h5 weights"
        )
    if model.name == "keras_file":
        if not model.file:
            raise ConfigError(
                "model.name=keras_file needs model.file: the path or s3:// URI of a .keras "
                "model, e.g. --set model.file=s3://bucket/models/finetuned.keras"
            )
        if not (model.file.endswith(".keras") or model.file.startswith("s3://") or os.path.exists(_local(model.file))):
            raise ConfigError(
                f"config key 'model.file': {model.file!r} is neither an s3:// URI nor an existing .keras file"
            )
        if model.preprocessing is None:
            raise ConfigError(
                f"config key 'model.preprocessing': model.name=keras_file needs the normalisation the "
                f"model was trained with, one of {', '.join(PREPROCESSING)} (got None); see docs/backbones.md"
            )
    else:
        for key in ("file", "preprocessing"):
            if getattr(model, key) is not None:
                raise ConfigError(
                    f"config key 'model.{key}' applies to model.name=keras_file only; {model.name} "
                    f"has its own (see docs/backbones.md). Remove it, or set model.name=keras_file"
                )


def _validate_keras_hub(model: ModelConfig) -> None:
    if model.name != "keras_hub":
        for key in ("preset", "image_size"):
            if getattr(model, key) is not None:
                raise ConfigError(
                    f"config key 'model.{key}' applies to model.name=keras_hub only; remove it, or set "
                    f"model.name=keras_hub"
                )
    elif not model.preset:
        raise ConfigError(
            "model.name=keras_hub needs model.preset: a saved KerasHub preset directory or s3:// prefix, "
            "e.g. --set model.preset=s3://bucket/models/clip_vit_base_patch16 (docs/backbones.md)"
        )
    elif model.weights != "imagenet":
        raise ConfigError(
            "config key 'model.weights' does not apply to model.name=keras_hub: the preset holds its "
            "weights (model.weights_md5 checks them); remove model.weights"
        )


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


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


def load_dict(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)  # safe_load: configs never construct Python objects
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give the YAML file, e.g. conf/local.yaml") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            f"save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _is_map(annotation: Any) -> bool:
    return annotation is dict or typing.get_origin(annotation) is dict


def _merge(into: dict[Any, Any], changes: dict[Any, Any]) -> None:
    for name, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(name), dict):
            _merge(into[name], value)
        else:
            into[name] = value


def apply_override(data: dict[str, Any], text: str) -> None:
    """Put one ``--set key=value`` into ``data`` (the YAML's mapping). The dotted key is followed
    through the sections until it reaches a free-form mapping (spark.conf): the rest is one key of
    that mapping, since Spark's own keys hold dots. A mapping value merges into what is there."""
    parts, value = parse_override(text)
    node: dict[Any, Any] = data
    model: type[BaseModel] | None = Config
    for depth, part in enumerate(parts[:-1]):
        info = model.model_fields.get(part) if model is not None else None
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict) or (
            info is not None and section_model(info) is None and not _is_map(info.annotation)
        ):
            raise ConfigError(f"--set {text}: '{'.'.join(parts[: depth + 1])}' is not a section")
        if info is not None and _is_map(info.annotation):
            node, last = child, ".".join(parts[depth + 1 :])
            break
        node, model = child, section_model(info) if info is not None else None
    else:
        last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        _merge(node[last], value)
    else:
        node[last] = value


def load_config(
    path: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    require: tuple[str, ...] = (),
) -> Config:
    """Read a YAML file, apply ``--set`` overrides, type-check and validate."""
    data = load_dict(path)
    for text in overrides:
        apply_override(data, text)
    return validate(from_dict(data), require)


def from_dict(data: Any) -> Config:
    """The config a mapping of sections describes (types, choices and ranges checked)."""
    try:
        return Config.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise config_error(exc, Config) from None


def updated(settings: S, **changes: Any) -> S:
    """A validated copy of a config section (or of the whole config) with some keys changed, e.g.
    ``updated(cfg.model, precision="float32")``. The rules between keys are validate()'s."""
    values = {name: getattr(settings, name) for name in type(settings).model_fields}
    # Built anew, so that the changes are checked (model_copy would not) and an unknown key is the
    # usual ConfigError.
    return type(settings)(**{**values, **changes})


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some keys of some sections changed, e.g. replace(c, model={"seed": 1})."""
    changes = {name: updated(getattr(cfg, name), **values) for name, values in sections.items()}
    return validate(updated(cfg, **changes))
