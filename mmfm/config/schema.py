"""The experiment config: one typed tree, loaded from YAML plus ``--set`` overrides."""
from __future__ import annotations

from dataclasses import dataclass, field

from .caption import GenerateConfig
from .core import _deep_merge, apply_overrides, apply_values, from_dict, read_yaml
from .data import DataConfig
from .eval import EvalConfig
from .model import ModelConfig, expand_named_model, model_section_from_spec
from .task import TaskConfig
from .train import TrainConfig

_TOWER_TRAINING = {"lock", "unlock_last_groups", "grad_checkpointing", "cache_locked_features", "memo_dir"}


@dataclass
class ExperimentConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)


def load_experiment(path=None, overrides=None, data=None, values: dict | None = None) -> ExperimentConfig:
    """YAML (a path, or a name in the shipped configs: ``demo/caption``; or a dict) + ``--set`` overrides
    (strings) + ``values`` (``{"dotted.key": python value}``, applied last)
    -> ExperimentConfig; ``model.name`` pulls in the named model config (configs/models/NAME.yaml). Without a
    ``model`` section, or with one that only says how to train the towers (``lora``, ``lock``, ...), a
    ``train.init_from`` spec that defines an architecture (``openclip:...``, ``hf:...``) gives it."""
    from .resources import experiment_path
    base = read_yaml(experiment_path(path)) if path else dict(data or {})
    merged = apply_values(apply_overrides(base, overrides), values)
    return from_dict(ExperimentConfig, expand_named_model(_model_from_init(merged)))


# what a model section may hold and still take its architecture from a train.init_from spec: how to train the
# towers the spec defines, not which towers they are
_TRAINING_KEYS = {"lora": None, "vision": _TOWER_TRAINING, "text": _TOWER_TRAINING}


def _only_training_keys(model: dict, section: dict) -> bool:
    for key, value in model.items():
        if value is None or (key == "kind" and value == section.get("kind")):   # name: null says nothing
            continue
        if key not in _TRAINING_KEYS:
            return False
        allowed = _TRAINING_KEYS[key]
        if allowed is not None and not (isinstance(value, dict) and set(value) <= allowed):
            return False
    return True


def _model_from_init(data: dict) -> dict:
    """Without a model section, or with one that only says how to train (``lora``; the towers' ``lock``,
    ``unlock_last_groups``, ``grad_checkpointing``, ``cache_locked_features``), an architecture-defining
    ``train.init_from`` spec gives the model section (merged under the given keys). A section that names an
    architecture (``name``, ``openclip``, ``source``, tower shapes, ...) wins as it is."""
    train = data.get("train")
    section = model_section_from_spec(train.get("init_from")) if isinstance(train, dict) else None
    if section is None:
        return data
    model = data.get("model")
    task = (data.get("task") or {}).get("name") if isinstance(data.get("task"), dict) else None
    if model is not None and section.get("source") and (task in ("caption", "vqa") or model.get("kind") == "captioner"):
        # a transformers captioner defines the architecture; the experiment keeps its training choices
        keep = {k: model[k] for k in ("lora", "embed_dim") if k in model}
        vision = {k: v for k, v in (model.get("vision") or {}).items() if k in ("lock", "grad_checkpointing")}
        decoder = {k: v for k, v in (model.get("decoder") or {}).items() if k in ("max_length", "prompt")}
        return {**data, "model": {**section, "kind": "captioner", **keep, "vision": vision, "decoder": decoder}}
    if model is not None and not (isinstance(model, dict) and _only_training_keys(model, section)):
        return data
    return {**data, "model": _deep_merge(section, model or {})}
