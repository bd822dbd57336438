"""The experiment config: one typed tree, loaded from YAML plus ``--set`` overrides."""
from __future__ import annotations

from dataclasses import dataclass, field

from .caption import GenerateConfig
from .core import apply_overrides, apply_values, from_dict, read_yaml
from .data import DataConfig
from .eval import EvalConfig
from .model import ModelConfig, expand_named_model, model_section_from_spec
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


def load_experiment(path=None, overrides=None, data=None, values: dict | None = None) -> ExperimentConfig:
    """YAML (or dict) + ``--set`` overrides (strings) + ``values`` (``{"dotted.key": python value}``, applied last)
    -> ExperimentConfig; ``model.name`` pulls in the named model config (configs/models/NAME.yaml). Without a
    ``model`` section, a ``train.init_from`` spec that defines an architecture (``openclip:...``, ``hf:...``)
    gives it."""
    base = read_yaml(path) if path else dict(data or {})
    merged = apply_values(apply_overrides(base, overrides), values)
    return from_dict(ExperimentConfig, expand_named_model(_model_from_init(merged)))


def _model_from_init(data: dict) -> dict:
    train = data.get("train")
    section = model_section_from_spec(train.get("init_from")) if isinstance(train, dict) else None
    if section is None:
        return data
    model = data.get("model")
    if model is None:
        return {**data, "model": section}
    task = (data.get("task") or {}).get("name") if isinstance(data.get("task"), dict) else None
    if section.get("source") and (task in ("caption", "vqa") or model.get("kind") == "captioner"):
        # a transformers captioner defines the architecture; the experiment keeps its training choices
        keep = {k: model[k] for k in ("lora", "embed_dim") if k in model}
        vision = {k: v for k, v in (model.get("vision") or {}).items() if k in ("lock", "grad_checkpointing")}
        decoder = {k: v for k, v in (model.get("decoder") or {}).items() if k in ("max_length", "prompt")}
        return {**data, "model": {**section, "kind": "captioner", **keep, "vision": vision, "decoder": decoder}}
    return data
