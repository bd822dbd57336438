"""Contrastive losses: open_clip's ``ClipLoss`` (InfoNCE, gather-with-grad, local loss) and ``SigLipLoss``.

``ContrastiveLoss`` picks rank and world size from ``torch.distributed`` at call time (the task may be built
before the process group), so one module works in a single process and under torchrun. In eval mode
(validation) it is rank-local, with no collective: validation batches differ in number and size across ranks
(every sample is scored once), and open_clip's ``evaluate()`` also scores each batch on its own.

Exact DDP parity (same loss and gradients as one process on the global batch, after DDP's gradient mean)
holds for ``clip`` with ``gather_with_grad: true`` (with or without ``local_loss``) and for ``siglip``. With
``gather_with_grad: false`` gradients flow only through each rank's own features (open_clip's behaviour).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from mmfm.config import ConfigError
from mmfm.data.ranks import rank_world

__all__ = ["ContrastiveLoss", "build_contrastive_loss"]


class ContrastiveLoss(nn.Module):
    """``loss(image_features, text_features, logit_scale, logit_bias=None) -> scalar``; features L2-normalised,
    ``logit_scale`` already exponentiated."""

    def __init__(self, kind: str = "clip", local_loss: bool = False, gather_with_grad: bool = True):
        super().__init__()
        if kind not in ("clip", "siglip"):
            raise ValueError(f"task.contrastive.loss: '{kind}' is not one of clip, siglip")
        self.kind = kind
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self._impl: nn.Module | None = None
        self._key: tuple[int, int] | None = None

    def _loss_fn(self) -> nn.Module:
        from open_clip.loss import ClipLoss, SigLipLoss

        rank, world = rank_world() if self.training else (0, 1)
        if self._impl is None or self._key != (rank, world):
            if world > 1 and self.kind == "clip" and not self.gather_with_grad and rank == 0:
                warnings.warn("task.contrastive.gather_with_grad=false: gradients flow only through each rank's "
                              "own features, so they differ from single-process training (open_clip behaviour)",
                              stacklevel=3)
            if self.kind == "clip":
                self._impl = ClipLoss(local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
                                      cache_labels=True, rank=rank, world_size=world)
            else:
                self._impl = SigLipLoss(rank=rank, world_size=world)
            self._key = (rank, world)
        return self._impl

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        if image_features.shape != text_features.shape:
            raise ValueError(f"image features {tuple(image_features.shape)} and text features "
                             f"{tuple(text_features.shape)} must have the same shape")
        if self.kind == "siglip" and logit_bias is None:
            raise ValueError("the siglip loss needs a logit bias: set model.init_logit_bias (e.g. -10)")
        return self._loss_fn()(image_features, text_features, logit_scale, logit_bias)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}"


def build_contrastive_loss(lc, model, who: str = "model") -> ContrastiveLoss:
    """``task.contrastive`` -> the loss, refusing siglip for a model without a logit bias (at build time, not at
    the first step), and warning when the clip loss would leave a model's logit bias (SigLIP) unused."""
    if lc.loss == "siglip" and getattr(model, "logit_bias", None) is None:
        raise ConfigError(f"task.contrastive.loss=siglip needs a logit bias on the {who}: set model.init_logit_bias "
                          f"(SigLIP uses -10 with model.init_logit_scale: 2.302585 = ln 10)")
    if lc.loss == "clip" and getattr(model, "logit_bias", None) is not None:
        warnings.warn(f"task.contrastive.loss=clip: the {who} has a logit bias (a SigLIP model), which the clip "
                      f"loss ignores; its pre-training loss is task.contrastive.loss: siglip", stacklevel=2)
    return ContrastiveLoss(lc.loss, lc.local_loss, lc.gather_with_grad)
