"""Evaluation inside training: validation loss and the eval hooks (``mmfm.eval.hooks``), and when they are due.

When: every ``eval.every_steps`` steps (not at the last step: the run's end evaluates once), at the start after
``train.init_from`` or with ``eval.at_start`` (never after a resume), and at the end when there is anything to
evaluate. On which ranks: all of them, each on its share (the validation loader is split by rank; the hooks split
their classes and images), with the results reduced or gathered, so every rank returns the one-process metrics;
rank 0 alone writes them (the trainer's metrics writer). Under FSDP every rank holds the whole weights meanwhile.
"""
from __future__ import annotations

import contextlib

import torch

from . import distributed as D
from . import fsdp
from .accumulate import batch_len, to_device


class Evaluator:
    """``run(step)`` scores ``task`` with ``val_data`` (when ``eval.val_loss``) and each ``hook(task, step)``.
    ``autocast``: a callable giving the training precision's context; ``fsdp_root``: the FSDP-sharded module."""

    def __init__(self, cfg, task, val_data=None, hooks=(), device=torch.device("cpu"),
                 autocast=contextlib.nullcontext, fsdp_root=None):
        self.cfg, self.every = cfg, cfg.eval.every_steps
        self.task, self.val_data, self.hooks = task, val_data, list(hooks)
        self.device, self.autocast, self.fsdp_root = device, autocast, fsdp_root

    # ------------------------------------------------------------------ when
    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def due_at_start(self, resumed: bool) -> bool:
        """A resumed run was evaluated before it stopped; an ``init_from`` run shows where it starts."""
        return not resumed and bool(self.cfg.train.init_from or self.cfg.eval.at_start)

    @property
    def due_at_end(self) -> bool:
        return bool(self.hooks) or (self.val_data is not None and self.cfg.eval.val_loss)

    # ------------------------------------------------------------------ what
    @torch.no_grad()
    def run(self, step: int) -> dict:
        """Collective (every rank calls it at the same step): the metrics, the same dict on every rank. The task
        is in eval mode meanwhile, and in train mode afterwards."""
        self.task.eval()
        try:
            if self.fsdp_root is None:
                return self._evaluate(step)
            with fsdp.full_weights(self.fsdp_root):     # whole weights on every rank while the ranks evaluate unevenly
                return self.fsdp_root(None, run=lambda: self._evaluate(step))
        finally:
            self.task.train()

    def _evaluate(self, step: int) -> dict:
        metrics: dict = {}
        if self.val_data is not None and self.cfg.eval.val_loss:
            metrics.update(self.val_loss())
        for hook in self.hooks:
            metrics.update(hook(self.task, step) or {})
        return metrics

    def val_loss(self) -> dict:
        """Mean loss per validation sample. Each rank scores its share once (batch counts and sizes differ
        across ranks, so no collective runs per batch); the sums and counts are reduced afterwards."""
        self.val_data.set_epoch(0)
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for batch in self.val_data:
            n = batch_len(batch)
            with self.autocast():
                out = self.task(to_device(batch, self.device))
            total[0] += out["loss"].detach().double() * n
            total[1] += n
        D.all_reduce(total, "sum")
        if total[1] == 0:
            return {}
        return {"val/loss": (total[0] / total[1]).item(), "val/samples": int(total[1].item())}
