"""CLIP / SigLIP contrastive pre-training: the model plus its loss, and the loader's sample processor."""
from __future__ import annotations

import torch
from torch import nn

from mmfm.config import ConfigError
from mmfm.data.transforms import build_transform

from .losses import build_contrastive_loss

__all__ = ["ContrastiveTask", "ContrastiveProcessor", "row_losses", "group_loss_gap"]


def row_losses(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, logit_bias=None,
               kind: str = "clip") -> torch.Tensor:
    """Each pair's own loss (B,) over this rank's batch: CLIP's two cross-entropies averaged, or SigLIP's
    sigmoid terms of the image's row. Its mean is the local (one-rank) CLIP / SigLIP loss."""
    import torch.nn.functional as F
    logits = logit_scale * img @ txt.T
    target = torch.arange(logits.shape[0], device=logits.device)
    if kind == "siglip":
        labels = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
        return -F.logsigmoid(labels * (logits + logit_bias)).sum(1)
    return (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none")) / 2


def group_loss_gap(rows: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Fairness regulariser: the worst group's mean loss minus the best group's, over the groups in the batch
    (0 with fewer than two); minimising it pulls the groups' losses together (a group-DRO-like gap penalty)."""
    means = torch.stack([rows[group == g].mean() for g in torch.unique(group)])
    return means.max() - means.min() if means.numel() > 1 else rows.sum() * 0


class ContrastiveProcessor:
    """Decoded sample ``{"image": PIL RGB, "txt": str, "__key__": str, ...}`` ->
    ``{"image": (3, H, W) float, "text_ids": (L,), "attention_mask": (L,), "key": str}``. Picklable."""

    def __init__(self, transform, tokenizer, text_key: str = "txt"):
        self.transform = transform
        self.tokenizer = tokenizer
        self.text_key = text_key

    def __call__(self, sample: dict) -> dict:
        key = sample.get("__key__", "?")
        image = sample.get("image")
        if image is None:
            raise KeyError(f"sample '{key}' has no image")
        text = sample.get(self.text_key)
        if text is None:
            raise KeyError(f"sample '{key}' has no '{self.text_key}' text")
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        tok = self.tokenizer(str(text))
        return {"image": self.transform(image), "text_ids": tok["text_ids"][0],
                "attention_mask": tok["attention_mask"][0], "key": key}


class ContrastiveTask(nn.Module):
    """``task(batch) -> {"loss", "logit_scale", "i2t_acc"}``.

    For accumulation that keeps every micro-batch's negatives the trainer can call ``encode(batch)`` (features)
    and ``compute_loss(features)`` separately: ``forward(batch) == compute_loss(encode(batch))``.
    """

    def __init__(self, cfg, model: nn.Module | None = None):
        super().__init__()
        from mmfm.models.factory import build_model, is_clip_model

        self.cfg = cfg
        self.model = model if model is not None else build_model(cfg.model)
        if not is_clip_model(self.model):
            raise ConfigError(f"task.name=contrastive needs a CLIP model (model.kind: clip), "
                              f"got {type(self.model).__name__}")
        self.loss = build_contrastive_loss(cfg.task.contrastive, self.model)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def processor(self, train: bool) -> ContrastiveProcessor:
        data = getattr(self.cfg, "data", None)
        augment = train and (data.train_augment if data is not None else True)
        text_key = data.text_key if data is not None else "txt"
        return ContrastiveProcessor(build_transform(self.model.preprocess, augment), self.model.tokenizer, text_key)

    def encode(self, batch: dict) -> dict:
        out = self.model(image=batch["image"], text_ids=batch["text_ids"],
                         attention_mask=batch.get("attention_mask"))
        for k in ("weight", "group"):           # from data.balance: per-sample loss weight, attribute group
            if k in batch:
                out[k] = batch[k].to(out["image_features"].device)
        return out

    def compute_loss(self, out: dict) -> dict:
        img, txt = out["image_features"], out["text_features"]
        fair = self.cfg.task.contrastive.fairness_weight if hasattr(self.cfg, "task") else 0.0
        weight, group = out.get("weight"), out.get("group")
        rows = None
        if weight is not None or (fair and group is not None):
            rows = row_losses(img, txt, out["logit_scale"], out.get("logit_bias"), self.loss.kind)
        if weight is not None:                  # data.balance mode weight: this rank's batch, weighted
            loss = (rows * weight).sum() / weight.sum()
        else:
            loss = self.loss(img, txt, out["logit_scale"], out.get("logit_bias"))
        extra = {}
        if fair and group is None and self.training:
            raise ConfigError("task.contrastive.fairness_weight > 0 needs each sample's group: set data.balance "
                              "(key: the json field naming it)")
        if fair and group is not None:
            spread = group_loss_gap(rows, group)
            loss = loss + fair * spread
            extra["group_loss_gap"] = spread.detach()
        with torch.no_grad():
            sims = img @ txt.T
            acc = (sims.argmax(1) == torch.arange(sims.shape[0], device=sims.device)).float().mean()
        return {"loss": loss, "logit_scale": out["logit_scale"].detach(), "i2t_acc": acc, **extra}

    def forward(self, batch: dict) -> dict:
        return self.compute_loss(self.encode(batch))
