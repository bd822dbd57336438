"""CLIP / SigLIP contrastive pre-training: the model plus its loss, and the loader's sample processor."""
from __future__ import annotations

import torch
from torch import nn

from mmfm.config import ConfigError
from mmfm.data.transforms import build_transform

from .losses import build_contrastive_loss

__all__ = ["ContrastiveTask", "ContrastiveProcessor"]


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
        return self.model(image=batch["image"], text_ids=batch["text_ids"],
                          attention_mask=batch.get("attention_mask"))

    def compute_loss(self, out: dict) -> dict:
        img, txt = out["image_features"], out["text_features"]
        loss = self.loss(img, txt, out["logit_scale"], out.get("logit_bias"))
        with torch.no_grad():
            sims = img @ txt.T
            acc = (sims.argmax(1) == torch.arange(sims.shape[0], device=sims.device)).float().mean()
        return {"loss": loss, "logit_scale": out["logit_scale"].detach(), "i2t_acc": acc}

    def forward(self, batch: dict) -> dict:
        return self.compute_loss(self.encode(batch))
