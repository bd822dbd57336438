"""The CLIP dual encoder and the scripting API shared by every CLIP-like model in mmfm.

``CLIP.forward(image, text_ids, attention_mask)`` returns ``{"image_features", "text_features"`` (both
L2-normalised), ``"logit_scale"`` (already exponentiated, clamped at 100), ``"logit_bias"}`` (or None), the
inputs the contrastive losses take.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.data.decode import decode_image
from mmfm.data.transforms import eval_transform

from .device import model_device

__all__ = ["CLIP", "ClipApiMixin", "LibraryModelMixin", "MAX_LOGIT_SCALE"]

MAX_LOGIT_SCALE = math.log(100.0)
class ClipApiMixin:
    """``embed_images``, ``embed_texts`` and ``classify`` on top of ``encode_image`` / ``encode_text``.

    Needs ``.preprocess`` (timm data config), ``.tokenizer``, ``.logit_scale`` and ``.logit_bias`` on the host
    module. ``forward`` is the training contract shared by every CLIP: normalised features + scale + bias.
    """

    def forward(self, image: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        return {
            "image_features": self.encode_image(image, normalize=True) if image is not None else None,
            "text_features": self.encode_text(text_ids, attention_mask, normalize=True) if text_ids is not None else None,
            "logit_scale": self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp(),
            "logit_bias": self.logit_bias,
        }

    def image_transform(self, train: bool = False):
        """A callable PIL RGB image -> normalised tensor, from this model's ``.preprocess`` (timm data config)."""
        if not train:
            return eval_transform(self.preprocess)
        from mmfm.data.transforms import build_transform
        return build_transform(self.preprocess, train=True)

    def _image_batches(self, images, batch_size: int):
        if isinstance(images, torch.Tensor):
            images = images.unsqueeze(0) if images.ndim == 3 else images
            for i in range(0, images.shape[0], batch_size):
                yield images[i: i + batch_size]
            return
        if not isinstance(images, (list, tuple)):
            images = [images]
        from PIL import Image

        transform = None
        for i in range(0, len(images), batch_size):
            chunk = images[i: i + batch_size]
            tensors = []
            for item in chunk:
                if isinstance(item, torch.Tensor):
                    tensors.append(item)
                else:
                    transform = transform or eval_transform(self.preprocess)
                    if not isinstance(item, (str, os.PathLike, bytes, Image.Image)):
                        raise TypeError(f"expected a PIL image, a path or a tensor, got {type(item).__name__}")
                    tensors.append(transform(decode_image(item)))
            yield torch.stack(tensors)

    @torch.no_grad()
    def embed_images(self, images, batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        """PIL images, paths or preprocessed tensors -> (N, embed_dim) float CPU tensor."""
        was_training, device = self.training, model_device(self)
        self.eval()
        try:
            out = [self.encode_image(b.to(device), normalize=normalize).float().cpu()
                   for b in self._image_batches(images, batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, 0)

    @torch.no_grad()
    def embed_texts(self, texts: str | Sequence[str], batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
        """Strings -> (N, embed_dim) float CPU tensor."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        was_training, device = self.training, model_device(self)
        self.eval()
        try:
            out = []
            for i in range(0, len(texts), batch_size):
                tok = self.tokenizer(texts[i: i + batch_size])
                out.append(self.encode_text(tok["text_ids"].to(device), tok["attention_mask"].to(device),
                                            normalize=normalize).float().cpu())
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, 0)

    @torch.no_grad()
    def zero_shot_classifier(self, labels: Sequence[str], templates: Sequence[str] | str | None = None) -> torch.Tensor:
        """(embed_dim, C) class weights: the mean of normalised template embeddings, renormalised."""
        if templates is None:
            templates = ["a photo of a {}."]
        elif isinstance(templates, str):
            templates = [templates]
        for t in templates:
            if "{}" not in t and "{c}" not in t:
                raise ValueError(f"template {t!r} has no '{{}}' placeholder for the class name")
        labels = list(labels)
        prompts = [t.replace("{c}", "{}").format(label) for label in labels for t in templates]
        emb = self.embed_texts(prompts).view(len(labels), len(templates), -1).mean(1)   # all prompts in batches
        return F.normalize(emb, dim=-1).T

    @torch.no_grad()
    def classify(self, images, labels: Sequence[str], templates: Sequence[str] | str | None = None,
                 top_k: int = 5) -> list[dict[str, Any]]:
        """Zero-shot classify images among ``labels``.

        Returns one dict per image: ``{"label", "score", "top": [(label, prob), ...]}`` (softmax over labels).
        """
        labels = list(labels)
        if len(labels) < 2:
            raise ValueError(f"classify needs at least two labels, got {labels}")
        classifier = self.zero_shot_classifier(labels, templates)
        feats = self.embed_images(images)
        scale = float(self.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).exp()) if isinstance(
            self.logit_scale, torch.Tensor) else 100.0
        probs = (scale * feats @ classifier).softmax(dim=-1)
        k = min(top_k, len(labels))
        results = []
        for row in probs:
            p, idx = row.topk(k)
            top = [(labels[i], float(s)) for s, i in zip(p.tolist(), idx.tolist())]
            results.append({"label": top[0][0], "score": top[0][1], "top": top})
        return results


class LibraryModelMixin:
    """For wrappers of another library's CLIP (``self.model``: open_clip, transformers): its logit scale and
    bias are the wrapper's."""

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    @property
    def logit_bias(self):
        return getattr(self.model, "logit_bias", None)


class CLIP(ClipApiMixin, nn.Module):
    """Dual encoder: a vision tower (``.visual``, pooled width) + ``image_proj``, and a text tower (``.text``)
    that already projects to ``embed_dim``; learnable ``logit_scale`` (log space) and optional ``logit_bias``."""

    tower_paths = {"visual": ("visual",), "text": ("text",)}      # tower names: mmfm.models.tower_setup

    def __init__(self, visual: nn.Module, text: nn.Module, embed_dim: int, init_logit_scale: float = math.log(1 / 0.07),
                 init_logit_bias: float | None = None, tokenizer=None, model_cfg=None):
        super().__init__()
        self.visual = visual
        self.image_proj = nn.Linear(visual.width, embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=visual.width ** -0.5)
        self.text = text
        self.embed_dim = int(embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias))) if init_logit_bias is not None else None
        self.preprocess = dict(visual.preprocess)
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.image_proj(self.visual(image))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = False) -> torch.Tensor:
        x = self.text(text_ids, attention_mask)
        return F.normalize(x, dim=-1) if normalize else x

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        self.visual.lock(unlocked_groups, freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers: int = 0) -> None:
        self.text.lock(unlocked_layers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)
