"""Job configuration: YAML in ``conf/`` parsed into frozen pydantic models and validated at start.

Every problem is reported with the dotted key, what was given and what is allowed, so that a
scheduled run fails before it touches any data instead of half way through.
"""

from lookalike.config.loading import (
    apply_override,
    from_dict,
    load_config,
    load_dict,
    parse_override,
    replace,
    updated,
    validate,
)
from lookalike.config.models import (
    DEFAULT_IMAGE_PATTERN,
    NEIGHBOURS_AUTO_NPROBE_KEYS,
    NEIGHBOURS_IVF_RESULT_KEYS,
    NEIGHBOURS_RESULT_KEYS,
    NEIGHBOURS_RULE_KEYS,
    PREPROCESSING,
    Config,
    DuplicatesConfig,
    InputConfig,
    ModelConfig,
    NeighboursConfig,
    S3Config,
    SparkConfig,
)
from lookalike.config.output import CatalogConfig, OutputConfig
from lookalike.errors import ConfigError

__all__ = [
    "DEFAULT_IMAGE_PATTERN",
    "NEIGHBOURS_AUTO_NPROBE_KEYS",
    "NEIGHBOURS_IVF_RESULT_KEYS",
    "NEIGHBOURS_RESULT_KEYS",
    "NEIGHBOURS_RULE_KEYS",
    "PREPROCESSING",
    "Config",
    "ConfigError",
    "DuplicatesConfig",
    "InputConfig",
    "ModelConfig",
    "NeighboursConfig",
    "CatalogConfig",
    "OutputConfig",
    "S3Config",
    "SparkConfig",
    "apply_override",
    "from_dict",
    "load_config",
    "load_dict",
    "parse_override",
    "replace",
    "updated",
    "validate",
]
