"""Typed configuration: YAML files in ``conf/`` loaded into frozen dataclasses.

:mod:`.sections` holds the sections and their defaults; :mod:`.loader` merges profiles and
``--set`` overrides onto them and rejects unknown keys, wrong types, values outside an enum and
impossible combinations (the CLI exits with code 2 on any of them).
"""

from jobs.core.config.loader import (
    check_combinations,
    config_fingerprint,
    config_to_dict,
    load_config,
    log_config,
)
from jobs.core.config.sections import (
    AppConfig,
    BotConfig,
    ClusterConfig,
    ConfigError,
    EmbedConfig,
    EncoderConfig,
    EvaluateConfig,
    GenerateConfig,
    IngestConfig,
    InputSpec,
    LakeConfig,
    LookupSpec,
    MlflowConfig,
    NoiseConfig,
    PrivacyConfig,
    SessionizeConfig,
    SourceConfig,
    SparkConfig,
    TableSpec,
    TrainEncoderConfig,
)

__all__ = [
    "AppConfig",
    "BotConfig",
    "ClusterConfig",
    "ConfigError",
    "EmbedConfig",
    "EncoderConfig",
    "EvaluateConfig",
    "GenerateConfig",
    "IngestConfig",
    "InputSpec",
    "LakeConfig",
    "LookupSpec",
    "MlflowConfig",
    "NoiseConfig",
    "PrivacyConfig",
    "SessionizeConfig",
    "SourceConfig",
    "SparkConfig",
    "TableSpec",
    "TrainEncoderConfig",
    "check_combinations",
    "config_fingerprint",
    "config_to_dict",
    "load_config",
    "log_config",
]
