"""Knowledge distillation of a (smaller) student CLIP from a teacher CLIP checkpoint (``task.name: distill``).

The student is ``model:`` (built like any CLIP); the teacher is ``task.distill.teacher`` (anything ``mmfm.load``
accepts), frozen and kept in eval mode. The loss (weights in ``task.distill``)::

    contrastive_weight * CLIP loss of the student on the true pairs (task.contrastive settings)
  + kd_weight          * T^2 * KL(teacher || student) of the in-batch similarity distributions, image->text and
                         text->image averaged (soft labels: how the teacher ranks the batch's other captions)
  + feature_weight     * (1 - cos) between student and teacher embeddings, images and texts (equal embed_dim)

The teacher sees the student's own (augmented) image tensor, re-normalised and resized to its preprocessing,
so both judge the same view; it gets its own token ids when its tokenizer differs. Only the student
(``task.model``) is optimised and saved, so checkpoints load with ``mmfm.load`` as a plain CLIP. Under DDP the
KD term uses each rank's local batch (the contrastive term gathers as configured).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.config import ConfigError
from mmfm.data.transforms import build_transform

from .contrastive import ContrastiveProcessor
from .losses import build_contrastive_loss

__all__ = ["DistillTask", "DistillProcessor", "kd_loss"]


class DistillProcessor(ContrastiveProcessor):
    """The contrastive sample processor, plus ``teacher_text_ids`` / ``teacher_attention_mask`` when the teacher
    tokenizes differently. Picklable."""

    def __init__(self, transform, tokenizer, teacher_tokenizer=None, text_key: str = "txt"):
        super().__init__(transform, tokenizer, text_key)
        self.teacher_tokenizer = teacher_tokenizer

    def __call__(self, sample: dict) -> dict:
        out = super().__call__(sample)
        if self.teacher_tokenizer is not None:
            text = sample.get(self.text_key)
            tok = self.teacher_tokenizer(text.decode("utf-8") if isinstance(text, bytes) else str(text))
            out["teacher_text_ids"] = tok["text_ids"][0]
            out["teacher_attention_mask"] = tok["attention_mask"][0]
        return out


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2-scaled KL(teacher || student) over rows (image->text) and columns (text->image), averaged."""
    t = float(temperature)
    rows = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True)
    cols = F.kl_div(F.log_softmax(student_logits.T / t, dim=1), F.log_softmax(teacher_logits.T / t, dim=1),
                    reduction="batchmean", log_target=True)
    return 0.5 * (rows + cols) * t * t


def _same_tokenizer(a, b) -> bool:
    return (getattr(a, "name", None) == getattr(b, "name", None)
            and getattr(a, "context_length", None) == getattr(b, "context_length", None))


class DistillTask(nn.Module):
    """``task(batch) -> {"loss", "loss_contrastive", "loss_kd", "loss_feature", "logit_scale", "i2t_acc",
    "teacher_agreement"}``."""

    accumulation_mode = "plain"

    def __init__(self, cfg, model: nn.Module | None = None, teacher: nn.Module | None = None):
        super().__init__()
        from mmfm.models.factory import build_model, is_clip_model

        self.cfg = cfg
        dc = cfg.task.distill
        self.dc = dc
        if teacher is None:
            if not dc.teacher:
                raise ConfigError("task.distill.teacher: the teacher CLIP checkpoint is required for task.name=distill")
            teacher = _load_teacher(dc.teacher)
        self.model = model if model is not None else build_model(cfg.model)
        for what, m in (("model (the student)", self.model), (f"task.distill.teacher ({dc.teacher})", teacher)):
            if not is_clip_model(m):
                raise ConfigError(f"task.name=distill: {what} must be a CLIP model, got {type(m).__name__}")
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.float().eval()
        s_dim, t_dim = _embed_dim(self.model), _embed_dim(teacher)
        if dc.feature_weight > 0 and s_dim != t_dim:
            raise ConfigError(f"task.distill.feature_weight: needs equal embedding sizes, but the student's is "
                              f"{s_dim} and the teacher's {t_dim}; set feature_weight: 0 (the KD term has no such need)")
        self.loss = build_contrastive_loss(cfg.task.contrastive, self.model, who="student")
        self.separate_tokens = not _same_tokenizer(self.model.tokenizer, teacher.tokenizer)
        s_pre, t_pre = dict(self.model.preprocess), dict(teacher.preprocess)
        self.register_buffer("_s_mean", torch.tensor(s_pre["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_s_std", torch.tensor(s_pre["std"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_t_mean", torch.tensor(t_pre["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_t_std", torch.tensor(t_pre["std"]).view(1, 3, 1, 1), persistent=False)
        self.teacher_size = tuple(int(x) for x in t_pre["input_size"][1:])
        self.same_pixels = (tuple(s_pre["input_size"]) == tuple(t_pre["input_size"])
                            and list(s_pre["mean"]) == list(t_pre["mean"]) and list(s_pre["std"]) == list(t_pre["std"]))

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()                       # no dropout / BN updates in the teacher, ever
        return self

    def processor(self, train: bool) -> DistillProcessor:
        data = getattr(self.cfg, "data", None)
        augment = train and (data.train_augment if data is not None else True)
        text_key = data.text_key if data is not None else "txt"
        return DistillProcessor(build_transform(self.model.preprocess, augment), self.model.tokenizer,
                                self.teacher.tokenizer if self.separate_tokens else None, text_key)

    def teacher_pixels(self, image: torch.Tensor) -> torch.Tensor:
        """The student's normalised image tensor re-expressed in the teacher's preprocessing (same view)."""
        if self.same_pixels:
            return image
        x = image * self._s_std + self._s_mean
        if tuple(x.shape[-2:]) != self.teacher_size:
            x = F.interpolate(x, size=self.teacher_size, mode="bicubic", align_corners=False, antialias=True)
        return (x - self._t_mean) / self._t_std

    @torch.no_grad()
    def teacher_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = batch.get("teacher_text_ids", batch["text_ids"]) if self.separate_tokens else batch["text_ids"]
        mask = batch.get("teacher_attention_mask", batch.get("attention_mask")) if self.separate_tokens else \
            batch.get("attention_mask")
        if self.separate_tokens and "teacher_text_ids" not in batch:
            raise ConfigError("distill: the teacher's tokenizer differs from the student's but the batch has no "
                              "teacher_text_ids (build the loader with task.processor())")
        out = self.teacher(image=self.teacher_pixels(batch["image"]), text_ids=ids, attention_mask=mask)
        return out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float()

    def forward(self, batch: dict) -> dict:
        s = self.model(image=batch["image"], text_ids=batch["text_ids"], attention_mask=batch.get("attention_mask"))
        s_img, s_txt, s_scale = s["image_features"], s["text_features"], s["logit_scale"]
        t_img, t_txt, t_scale = self.teacher_features(batch)
        dc = self.dc
        zero = s_img.new_zeros(())
        l_con = self.loss(s_img, s_txt, s_scale, s.get("logit_bias")) if dc.contrastive_weight > 0 else zero
        s_logits = s_scale * s_img @ s_txt.T
        t_logits = t_scale * t_img @ t_txt.T
        l_kd = kd_loss(s_logits, t_logits, dc.temperature) if dc.kd_weight > 0 else zero
        l_feat = zero
        if dc.feature_weight > 0:
            l_feat = (1 - F.cosine_similarity(s_img, t_img, dim=-1)).mean() + \
                     (1 - F.cosine_similarity(s_txt, t_txt, dim=-1)).mean()
        loss = dc.contrastive_weight * l_con + dc.kd_weight * l_kd + dc.feature_weight * l_feat
        with torch.no_grad():
            target = torch.arange(s_logits.shape[0], device=s_logits.device)
            acc = (s_logits.argmax(1) == target).float().mean()
            agree = (s_logits.argmax(1) == t_logits.argmax(1)).float().mean()
        return {"loss": loss, "loss_contrastive": l_con.detach(), "loss_kd": l_kd.detach(),
                "loss_feature": l_feat.detach(), "logit_scale": s_scale.detach(), "i2t_acc": acc,
                "teacher_agreement": agree}


def _embed_dim(model: nn.Module) -> int | None:
    d = getattr(model, "embed_dim", None)
    return int(d) if d else None


def _load_teacher(spec: str) -> nn.Module:
    import os

    from mmfm.models.checkpoint import load as load_model

    if not str(spec).startswith("openclip:") and not os.path.exists(os.path.expanduser(str(spec))):
        raise ConfigError(f"task.distill.teacher: checkpoint not found: {spec}")
    teacher = load_model(spec, device="cpu")
    if getattr(teacher, "quantization", None):
        raise ConfigError(f"task.distill.teacher: {spec} is an int8 checkpoint; distil from the float one")
    return teacher
