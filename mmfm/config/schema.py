"""The experiment config: one typed tree, loaded from YAML plus ``--set`` overrides."""
from __future__ import annotations

from dataclasses import dataclass, field

from .caption import GenerateConfig
from .core import load_config
from .data import DataConfig
from .eval import EvalConfig
from .model import ModelConfig
from .task import TaskConfig
from .train import TrainConfig


@dataclass
class ExperimentConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)


def load_experiment(path=None, overrides=None, data=None) -> ExperimentConfig:
    return load_config(path, ExperimentConfig, overrides, data=data)
