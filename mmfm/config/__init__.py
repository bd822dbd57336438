"""Typed configuration: dataclass schemas, YAML loading, dotted overrides."""
from .core import (ConfigError, InputError, apply_overrides, apply_values, check_config, from_dict, load_config,
                   ranged, read_yaml, save_config, to_dict)
from .files import atomic_dir, atomic_path, atomic_write, atomic_write_text, replace_dir, temp_dir_beside
from .schema import ExperimentConfig, load_experiment

__all__ = ["ConfigError", "ExperimentConfig", "InputError", "apply_overrides", "apply_values", "atomic_dir",
           "atomic_path", "atomic_write", "atomic_write_text", "check_config", "from_dict", "load_config", "load_experiment",
           "ranged", "read_yaml", "replace_dir", "save_config", "temp_dir_beside", "to_dict"]
