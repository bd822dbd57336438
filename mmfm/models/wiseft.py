"""WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", 2022): the fine-tuned weights interpolated
with the weights the run started from, ``theta(alpha) = (1 - alpha) * theta_init + alpha * theta_ft``.

alpha = 0 is the initial model, alpha = 1 the fine-tuned one; values between usually keep most of the gain on the
new data and most of the initial model's robustness elsewhere. The initial weights are the run's
``train.init_from`` (stored in its config.yaml), rebuilt with the run's architecture; a LoRA run is merged first.

    w = WiseFT("runs/ft")            # loads both once
    model = w.at(0.5)                # the one model, its weights set for alpha (in place)
"""
from __future__ import annotations

import os

import torch
from torch import nn

from mmfm.config import ConfigError

__all__ = ["WiseFT", "wise_ft", "interpolate_weights", "initial_spec"]


def interpolate_weights(initial: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor],
                        alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * initial + alpha * finetuned`` for every floating-point tensor (others: the fine-tuned one,
    e.g. BatchNorm's step counter). Both must hold the same names and shapes."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"wise-ft alpha: must be in [0, 1] (0 = the initial weights, 1 = fine-tuned), got {alpha}")
    missing, extra = sorted(set(finetuned) - set(initial)), sorted(set(initial) - set(finetuned))
    shape = [k for k in finetuned if k in initial and initial[k].shape != finetuned[k].shape]
    if missing or extra or shape:
        raise ConfigError("wise-ft: the initial and fine-tuned weights differ in their tensors: "
                          f"only fine-tuned {missing[:10]}, only initial {extra[:10]}, other shapes {shape[:10]}")
    out = {}
    for k, ft in finetuned.items():
        init = initial[k].to(ft.device)
        out[k] = torch.lerp(init.to(ft.dtype), ft, float(alpha)) if ft.is_floating_point() else ft
    return out


def initial_spec(run: str | os.PathLike) -> str:
    """The ``train.init_from`` the run recorded: where its weights started."""
    from .layout import read_config

    init = read_config(run).train.init_from
    if not init:
        raise ConfigError(f"{run}: WiSE-FT interpolates with the weights the run started from, but its config has "
                          f"no train.init_from (train it with --init-from CHECKPOINT)")
    return init


def _initial_state(model_cfg, init: str, where: str) -> dict[str, torch.Tensor]:
    """The weights ``init`` holds, in the run's architecture (as the trainer loads train.init_from)."""
    import dataclasses

    from .checkpoint import load, load_weights
    from .layout import is_spec
    from .factory import build_model

    try:
        if is_spec(init):
            return load(init).state_dict()
        model = build_model(dataclasses.replace(model_cfg, lora=None), init_weights=False)
        load_weights(model, init, strict=True)
    except ConfigError as e:
        raise ConfigError(f"{where}: cannot read its initial weights (train.init_from: {init}): {e}") from e
    return model.state_dict()


class WiseFT:
    """The fine-tuned run and its initial weights, loaded once; ``at(alpha)`` sets the one model's weights."""

    def __init__(self, run: str | os.PathLike, device: str | torch.device = "cpu",
                 init_from: str | None = None):
        from .checkpoint import load

        self.run = str(run)
        self.model: nn.Module = load(run, device=device)          # merged when the run used LoRA
        self.init_from = init_from or initial_spec(run)
        self.finetuned = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        initial = _initial_state(self.model.model_cfg, self.init_from, self.run)
        interpolate_weights(initial, self.finetuned, 1.0)          # names and shapes checked once, here
        self.initial = {k: v.to(self.finetuned[k].device) for k, v in initial.items()}
        self.meta = dict(getattr(self.model, "checkpoint_meta", None) or {})

    def at(self, alpha: float) -> nn.Module:
        self.model.load_state_dict(interpolate_weights(self.initial, self.finetuned, alpha))
        self.model.checkpoint_meta = {**self.meta, "wise_ft": {"alpha": float(alpha), "init_from": self.init_from,
                                                               "finetuned": self.run}}
        return self.model.eval()


def wise_ft(run: str | os.PathLike, alpha: float, device: str | torch.device = "cpu",
            init_from: str | None = None) -> nn.Module:
    """The run's model with WiSE-FT weights for ``alpha`` (``init_from`` overrides the run's train.init_from)."""
    return WiseFT(run, device, init_from).at(alpha)
