"""Tasks: ``nn.Module``s holding ``.model`` and the loss; ``task(batch) -> {"loss": ..., ...}``.

``build_task(cfg)`` picks the task by ``cfg.task.name`` (imported lazily):
``contrastive`` -> ContrastiveTask, ``caption`` -> CaptionTask, ``vqa`` -> VQATask,
``distill`` -> DistillTask (student CLIP from a teacher checkpoint).
"""
from __future__ import annotations

import importlib

from mmfm.config import ConfigError

TASKS = {
    "contrastive": ("mmfm.tasks.contrastive", "ContrastiveTask"),
    "caption": ("mmfm.tasks.caption", "CaptionTask"),
    "vqa": ("mmfm.tasks.vqa", "VQATask"),
    "distill": ("mmfm.tasks.distill", "DistillTask"),
}

__all__ = ["TASKS", "build_task", "task_class"]


def task_class(name: str):
    if name not in TASKS:
        raise ConfigError(f"task.name: unknown task '{name}'; known: {', '.join(TASKS)}")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(module), cls)


def build_task(cfg, model=None):
    """Build the task for an ExperimentConfig; ``model`` (optional) replaces ``build_model(cfg.model)``."""
    cls = task_class(cfg.task.name)
    return cls(cfg) if model is None else cls(cfg, model=model)
