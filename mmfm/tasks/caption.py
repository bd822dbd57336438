"""Captioning: a captioner plus its loss (next-token cross-entropy on the caption only), optionally joined by a
CoCa-style contrastive loss; and the loader's sample processor.

Sequences are ``[bos] + prompt + caption + [eos]`` right-padded to ``model.decoder.max_length``; ``labels`` equal
the ids with -100 on bos, the prompt and the padding (found from the attention mask, not from the pad id).
The task shifts them: logits at position t predict the token at t + 1.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.config import ConfigError
from mmfm.data.transforms import model_transform

__all__ = ["CaptionTask", "CaptionProcessor", "shifted_token_loss", "check_captioner", "image_masked"]


def _text(value, key: str, name: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str) or not value.strip():
        raise KeyError(f"sample '{key}' has no usable '{name}' caption")
    return value.strip()


class CaptionProcessor:
    """Decoded sample ``{"image": PIL, "txt", "json", "__key__"}`` -> ``{"image", "text_ids", "attention_mask",
    "labels", "key"}``. Picklable (holds the transform and the model's TextLayout)."""

    def __init__(self, transform, layout, prompt_ids: list[int], text_key: str = "txt",
                 caption_key: str = "txt", train: bool = False):
        self.transform, self.layout, self.prompt_ids = transform, layout, list(prompt_ids)
        self.text_key, self.caption_key, self.train = text_key, caption_key, train

    def caption(self, sample: dict) -> str:
        key = sample.get("__key__", "?")
        if self.caption_key == "random" and self.train:
            meta = sample.get("json") or {}
            caps = [c for c in meta.get("captions") or [] if isinstance(c, str) and c.strip()]
            if caps:
                return random.choice(caps).strip()
        return _text(sample.get(self.text_key), key, self.text_key)

    def __call__(self, sample: dict) -> dict:
        key = sample.get("__key__", "?")
        image = sample.get("image")
        if image is None:
            raise KeyError(f"sample '{key}' has no image")
        ids, n_prefix = self.layout.sequence(self.prompt_ids, self.caption(sample))
        return {"image": self.transform(image), **self.layout.right_pad(ids, n_prefix), "key": key}


def shifted_token_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                       reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits[:, t]`` against ``labels[:, t + 1]`` (-100 ignored), in fp32.

    ``reduction="none"`` returns the per-sequence mean over its counted tokens (B,)."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    if reduction == "mean":
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                               label_smoothing=label_smoothing)
    tok = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, label_smoothing=label_smoothing,
                          reduction="none")
    count = (target != -100).sum(1).clamp(min=1)
    return tok.sum(1) / count


def image_masked(labels: torch.Tensor, out: dict) -> torch.Tensor:
    """``labels`` with -100 in front for the image positions a prefix captioner puts before the text
    (``out["image_positions"]``); unchanged for a captioner whose logits cover the text only."""
    n = int(out.get("image_positions", 0))
    return labels if n == 0 else torch.cat([labels.new_full((labels.shape[0], n), -100), labels], 1)


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        target = labels[:, 1:]
        keep = target != -100
        hit = (logits[:, :-1].argmax(-1) == target) & keep
        return hit.sum().float() / keep.sum().clamp(min=1)


def check_captioner(model: nn.Module, task: str) -> None:
    if not callable(getattr(model, "generate_ids", None)) or getattr(model, "layout", None) is None:
        kind = getattr(getattr(model, "model_cfg", None), "kind", "?")
        raise ConfigError(f"task.name={task} needs a captioner (model.kind: captioner), got "
                          f"{type(model).__name__} (kind={kind})")


class CaptionTask(nn.Module):
    """``task(batch) -> {"loss", "caption_loss", "token_acc"[, "contrastive_loss"]}``."""

    accumulation_mode = "plain"

    def __init__(self, cfg, model: nn.Module | None = None):
        super().__init__()
        from mmfm.models.factory import build_model

        self.cfg = cfg
        self.model = model if model is not None else build_model(cfg.model)
        check_captioner(self.model, "caption")
        self.loss_cfg = cfg.task.caption
        if self.loss_cfg.contrastive_weight > 0:
            if not self.model.has_contrastive_head:
                raise ConfigError("task.caption.contrastive_weight > 0 needs model.decoder.contrastive_head: true")
            from .losses import ContrastiveLoss
            self.contrastive = ContrastiveLoss("clip")
        else:
            self.contrastive = None
        prompt = self.model.prompt
        self.prompt_ids = self.model.encode_plain(prompt) if prompt else []

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def processor(self, train: bool) -> CaptionProcessor:
        data = getattr(self.cfg, "data", None)
        augment = train and (data.train_augment if data is not None else True)
        text_key = data.text_key if data is not None else "txt"
        return CaptionProcessor(model_transform(self.model, augment), self.model.layout, self.prompt_ids,
                                text_key, self.loss_cfg.caption_key, train)

    def forward(self, batch: dict) -> dict:
        library = getattr(self.model, "library_loss", False)      # a transformers captioner: its own loss
        out = self.model(image=batch["image"], text_ids=batch["text_ids"], attention_mask=batch["attention_mask"],
                         **({"labels": batch["labels"]} if library else {}))
        labels = image_masked(batch["labels"], out)
        cap = out["loss"] if library else shifted_token_loss(out["logits"], labels, self.loss_cfg.label_smoothing)
        result = {"caption_loss": cap.detach(), "token_acc": token_accuracy(out["logits"], labels)}
        loss = self.loss_cfg.caption_weight * cap
        if self.contrastive is not None:
            img = self.model.encode_image(image_tokens=out["image_tokens"], normalize=True)
            txt = self.model.encode_text(batch["text_ids"], batch["attention_mask"], normalize=True)
            scale = self.model.logit_scale.clamp(max=4.6052).exp()
            con = self.contrastive(img, txt, scale)
            loss = loss + self.loss_cfg.contrastive_weight * con
            result["contrastive_loss"] = con.detach()
        result["loss"] = loss
        return result
