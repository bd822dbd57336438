"""AdamW with the usual CLIP exclusions, and the learning-rate schedule (linear warmup, then cosine).

No weight decay on: tensors with fewer than 2 dims (biases, norm scales, the logit scale/bias), and names
containing ``bias``, ``norm``, ``ln_``/``.ln``, ``bn``, ``logit_scale``, ``logit_bias``, position
embeddings and class/register tokens (open_clip's and timm's rules). Frozen (locked) parameters are left out.
"""
from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_WORDS = ("bias", "norm", "ln_", ".ln", "bn", "logit_scale", "logit_bias", "pos_embed",
                  "positional_embedding", "cls_token", "class_embedding", "reg_token", "embeddings.position")


def no_weight_decay(name: str, p: torch.Tensor) -> bool:
    lower = name.lower()
    return p.ndim < 2 or any(w in lower for w in NO_DECAY_WORDS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if no_weight_decay(name, p):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    if not decay and not no_decay:
        from mmfm.config import ConfigError
        raise ConfigError("nothing to train: every parameter is frozen (check model.vision.lock / model.text.lock)")
    return [{"params": decay, "weight_decay": weight_decay, "names": decay_names},
            {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names}]


def build_optimizer(model: nn.Module, tc) -> torch.optim.Optimizer:
    """AdamW from the ``train:`` config (lr, weight_decay, betas, eps); fused where torch supports it."""
    groups = [g for g in param_groups(model, tc.weight_decay) if g["params"]]
    for g in groups:
        g.pop("names")
    kw = dict(lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps)
    devices = {p.device.type for g in groups for p in g["params"]}
    dtypes = {p.dtype for g in groups for p in g["params"]}
    fused_ok = devices <= {"cpu", "cuda"} and dtypes <= {torch.float32, torch.bfloat16, torch.float16}
    if fused_ok:
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, **kw)


def lr_lambda_factory(warmup_steps: int, total_steps: int, schedule: str = "cosine", min_ratio: float = 0.0):
    """step -> lr multiplier: linear warmup over ``warmup_steps`` (reaching 1 at the end of warmup),
    then cosine decay to ``min_ratio`` at ``total_steps`` (or constant)."""
    return _Schedule(int(warmup_steps), int(total_steps), schedule, float(min_ratio))


class _Schedule:
    """Picklable lr multiplier (LambdaLR stores it; its state is just the step count)."""

    def __init__(self, warmup: int, total: int, schedule: str, min_ratio: float):
        self.warmup, self.total, self.schedule, self.min_ratio = warmup, max(total, 1), schedule, min_ratio

    def __call__(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        span = max(self.total - self.warmup, 1)
        progress = min(max(step - self.warmup, 0) / span, 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, tc, total_steps: int, start_step: int = 0):
    """The schedule from the ``train:`` config; ``start_step`` > 0 (resume) sets every group's lr to the value for
    that step of *this* schedule (base ``tc.lr``, this warmup and total), not the one a checkpoint was made with."""
    fn = lr_lambda_factory(min(tc.warmup_steps, max(total_steps - 1, 0)), total_steps, tc.schedule,
                           getattr(tc, "min_lr_ratio", 0.0))
    if start_step > 0:
        for g in optimizer.param_groups:
            g["initial_lr"] = tc.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn, last_epoch=start_step - 1)
