"""Build everything a run needs from an ExperimentConfig: task, train/val loaders, eval hooks; and run it.

``build_run(cfg, rank, world, device_type)`` is what :func:`train_experiment` calls between loading the config and
``Trainer.fit()``; benchmarks and tests call it too, so they train exactly what the CLI trains.
``train_experiment(cfg)`` is the whole run (process group, logging, build, fit, clean-up) for ``mmfm train`` and
for applications such as the demo, which build their configs in code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from mmfm.config import ConfigError

log = logging.getLogger("mmfm.train")


@dataclass
class Run:
    task: torch.nn.Module
    train: object
    val: object | None = None
    hooks: list = field(default_factory=list)


def _decode_size(task, train: bool) -> int | None:
    pre = getattr(getattr(task, "model", None), "preprocess", None)
    if not pre:
        return None
    from mmfm.data.transforms import decode_size
    try:
        return decode_size(pre, train)
    except (ConfigError, KeyError, TypeError, ValueError):
        return None


def build_loaders(cfg, task, rank: int, world: int, device_type: str = "cpu"):
    from mmfm.data.pipeline import build_loader
    from mmfm.data.workers import resolve_priority

    d = cfg.data
    if not d.train:
        raise ConfigError("data.train: no training shards given (a shard folder, brace pattern or manifest)")
    augment = bool(d.train_augment)
    priority = resolve_priority(d.worker_priority, device_type, world)
    common = dict(workers=d.workers, world=(rank, world), data_cfg=d, pin_memory=device_type == "cuda",
                  worker_priority=priority)
    train = build_loader(d.train, task.processor(train=True), batch_size=d.batch_size, train=True,
                         grad_accum=max(cfg.train.grad_accum, 1), decode_size=_decode_size(task, augment), **common)
    val = None
    if d.val:
        val = build_loader(d.val, task.processor(train=False), batch_size=d.batch_size, train=False,
                           decode_size=_decode_size(task, False), **common)
    return train, val


def build_hooks(cfg) -> list:
    from mmfm.eval.hooks import build_eval_hooks
    return list(build_eval_hooks(cfg))


def build_run(cfg, rank: int = 0, world: int = 1, device_type: str = "cpu") -> Run:
    """Seed, build the task (same init on every rank), its loaders (preflight runs here) and eval hooks."""
    from mmfm.tasks import build_task

    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg)
    torch.manual_seed(cfg.train.seed + 1000 * rank + 1)     # dropout etc. differ per rank
    hooks = build_hooks(cfg)
    train, val = build_loaders(cfg, task, rank, world, device_type)
    return Run(task, train, val, hooks)


def train_experiment(cfg) -> dict:
    """Train ``cfg`` in this process (one rank of a torchrun job, or alone): returns the trainer's result dict
    (``"stopped"`` in it when a signal stopped the run after a checkpoint). Raises ``NonFiniteLoss`` and
    ``ConfigError``; the process group is always cleaned up."""
    from . import distributed as D
    from .logging import setup_logging
    from .run_folder import open_run_folder
    from .trainer import Trainer

    folder = open_run_folder(cfg.train)             # checked once, before any heavy work (a folder or an fsspec URL)
    dist = D.init_distributed(cfg.train.dist_timeout_minutes, cfg.train.device)
    setup_logging(dist.rank)
    try:
        run = build_run(cfg, dist.rank, dist.world_size, dist.device.type)
        result = Trainer(cfg, run.task, run.train, run.val, run.hooks, run=folder, dist=dist).fit()
    finally:
        D.cleanup()
    result.update(is_main=dist.is_main, distributed=dist.enabled)
    return result
