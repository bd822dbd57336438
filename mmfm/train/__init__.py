"""The trainer shared by every task: ``from mmfm.train import Trainer; Trainer(cfg, task, train_data).fit()``.

Modules: ``trainer`` (the loop) over its components: ``cadence`` (what is due after a step), ``checkpointer``
(save when due, restore, agree the step across ranks), ``evaluator`` (validation loss and eval hooks), ``logging``
(metrics, progress), ``run_folder`` (``train.output_dir``, checked once); ``builder`` (task + loaders + hooks from
a config, and the whole run), ``distributed`` (torchrun process group), ``fsdp``, ``optim`` (AdamW groups, warmup
+ cosine), ``accumulate`` (one step's micro-batches).
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
