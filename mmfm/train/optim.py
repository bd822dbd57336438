"""AdamW with the usual CLIP exclusions, and the learning-rate schedule (linear warmup, then cosine).

No weight decay on: tensors with fewer than 2 dims (biases, norm scales, the logit scale/bias), and names
containing ``bias``, ``norm``, ``ln_``/``.ln``, ``bn``, ``logit_scale``, ``logit_bias``, position
embeddings and class/register tokens (open_clip's and timm's rules). Frozen (locked) parameters are left out.

Fine-tuning: ``train.lr_groups`` sets the lr by tower name (``visual``, ``text``; a captioner's ``vision``,
``decoder``: the same for mmfm, open_clip and transformers models, ``mmfm.models.tower_setup``) or by
parameter-name prefix (a module path of the model, e.g. ``text.proj``; the longest matching prefix wins, the rest
trains at ``train.lr``); ``train.layer_decay`` scales it
inside each tower by ``layer_decay ** (K - k)`` for layer k of K (timm's layer ids from the tower's
``group_matcher``, as timm's ``param_groups_layer_decay`` does). Each group keeps its ``base_lr``; the schedule
multiplies every group's base lr by the same factor.
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


def _prefix_lr(name: str, lr_groups: dict[str, float], default: float) -> float:
    best = max((k for k in lr_groups if name == k or name.startswith(k + ".")), key=len, default=None)
    return default if best is None else float(lr_groups[best])


def layer_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """Parameter name (relative to ``model``) -> lr multiplier ``layer_decay ** (K - k)`` for each parameter of a
    tower (a child module with timm layer groups: ``mmfm.models.towers.layer_ids``); heads are not in it."""
    if layer_decay == 1.0:
        return {}
    from mmfm.config import ConfigError
    from mmfm.models.towers import layer_ids

    out: dict[str, float] = {}
    for tower_name, tower in model.named_children():
        ids = layer_ids(tower)
        if ids:
            top = max(ids.values())
            out.update({f"{tower_name}.{n}": layer_decay ** (top - i) for n, i in ids.items()})
    if not out:
        raise ConfigError(f"train.layer_decay: {type(model).__name__} has no tower with timm layer groups "
                          f"(mmfm CLIP models built from model.vision + model.text have them)")
    return out


def _lrs(model: nn.Module, lr: float, lr_groups: dict[str, float], layer_decay: float) -> dict[int, float]:
    """id(parameter) -> its lr: the ``lr_groups`` prefix's (or ``lr``) times its layer-decay scale."""
    from mmfm.config import ConfigError

    from mmfm.models.tower_setup import expand_tower_names, tower_names

    names = [n for n, _ in model.named_parameters()]
    for key in lr_groups:
        if not any(n == key or n.startswith(key + ".") for n in names) and key not in tower_names(model):
            tops = sorted({n.split(".", 1)[0] for n in names})
            towers = ", ".join(tower_names(model)) or "none named"
            raise ConfigError(f"train.lr_groups.{key}: no parameter of {type(model).__name__} is under '{key}' "
                              f"(its towers: {towers}; its top-level modules: {', '.join(tops)})")
    lr_groups = expand_tower_names(model, lr_groups)
    scales = layer_scales(model, layer_decay)
    return {id(p): _prefix_lr(n, lr_groups, lr) * scales.get(n, 1.0) for n, p in model.named_parameters()}


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 lr_groups: dict[str, float] | None = None, layer_decay: float = 1.0) -> list[dict]:
    """Trainable parameters in AdamW groups: decay / no decay and, when ``lr`` is given, one group per distinct
    lr (``lr_groups`` and ``layer_decay``, relative to ``model.model`` for a task) with ``lr`` set in it."""
    inner = model.model if isinstance(getattr(model, "model", None), nn.Module) else model
    lrs = _lrs(inner, lr, dict(lr_groups or {}), layer_decay) if lr is not None else {}
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not no_weight_decay(name, p)
        p_lr = lrs.get(id(p), lr)
        key = (not decay, p_lr)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": weight_decay if decay else 0.0, "names": []}
            if lr is not None:
                groups[key]["lr"] = p_lr
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    if not groups:
        from mmfm.config import ConfigError
        raise ConfigError("nothing to train: every parameter is frozen (check model.vision.lock / model.text.lock)")
    if lr is None:
        return [groups.get((False, None), {"params": [], "weight_decay": weight_decay, "names": []}),
                groups.get((True, None), {"params": [], "weight_decay": 0.0, "names": []})]
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], -k[1]))]


def build_optimizer(model: nn.Module, tc) -> torch.optim.Optimizer:
    """AdamW from the ``train:`` config (lr, lr_groups, layer_decay, weight_decay, betas, eps); fused where torch
    supports it. Every group records its ``base_lr`` (what the schedule multiplies)."""
    groups = [g for g in param_groups(model, tc.weight_decay, tc.lr, tc.lr_groups, tc.layer_decay) if g["params"]]
    for g in groups:
        g.pop("names")
        g["base_lr"] = g["lr"]
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
    that step of *this* schedule (the group's base lr from this config, this warmup and total), not the one a
    checkpoint was made with."""
    fn = lr_lambda_factory(min(tc.warmup_steps, max(total_steps - 1, 0)), total_steps, tc.schedule,
                           getattr(tc, "min_lr_ratio", 0.0))
    if start_step > 0:
        for g in optimizer.param_groups:
            g["initial_lr"] = g.get("base_lr", tc.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn, last_epoch=start_step - 1)
