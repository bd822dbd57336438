"""Typed configuration: dataclass schemas, YAML loading, dotted overrides."""
from .core import (ConfigError, apply_overrides, apply_values, atomic_write, atomic_write_text, check_config,
                   from_dict, load_config, ranged, read_yaml, save_config, to_dict)
from .schema import ExperimentConfig, load_experiment

__all__ = ["ConfigError", "ExperimentConfig", "apply_overrides", "apply_values", "atomic_write", "atomic_write_text",
           "check_config", "from_dict", "load_config", "load_experiment", "ranged", "read_yaml", "save_config",
           "to_dict"]
