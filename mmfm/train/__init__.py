"""The trainer shared by every task: ``from mmfm.train import Trainer; Trainer(cfg, task, train_data).fit()``.

Modules: ``trainer`` (the loop), ``builder`` (task + loaders + hooks from a config), ``distributed``
(torchrun process group), ``optim`` (AdamW groups, warmup + cosine), ``checkpoint``, ``logging``.
"""
from __future__ import annotations

__all__ = ["NonFiniteLoss", "Trainer", "build_run", "train_experiment"]


def __getattr__(name: str):
    if name in ("Trainer", "NonFiniteLoss"):
        from . import trainer
        return getattr(trainer, name)
    if name in ("build_run", "train_experiment"):
        from . import builder
        return getattr(builder, name)
    raise AttributeError(f"module 'mmfm.train' has no attribute {name!r}")
