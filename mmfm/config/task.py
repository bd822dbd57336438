"""Schema of the ``task:`` section: which task module, and its loss settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .core import ConfigError, ranged


@dataclass
class ContrastiveLossConfig:
    loss: Literal["clip", "siglip"] = "clip"
    local_loss: bool = False
    gather_with_grad: bool = True
    fairness_weight: float = ranged(0.0, ge=0)   # > 0: + w x (worst - best group's mean loss) in each batch; needs
                                                 # data.balance (its "group"); docs/bias.md


@dataclass
class CaptionLossConfig:
    label_smoothing: float = ranged(0.0, ge=0, lt=1)
    contrastive_weight: float = ranged(0.0, ge=0)   # > 0: CoCa-style joint contrastive + caption loss
    caption_weight: float = ranged(1.0, ge=0)
    caption_key: Literal["txt", "random"] = "txt"   # random: one of json "captions" per sample (train only)

    def validate(self) -> None:
        if self.contrastive_weight + self.caption_weight == 0:
            raise ConfigError("contrastive_weight, caption_weight: at least one must be > 0")


@dataclass
class VQALossConfig:
    template: str = "question: {question} answer:"   # the decoder prompt; the loss ignores it
    max_answers: int = ranged(10, ge=1)   # distinct answers trained per question (highest weight first)
    weighting: Literal["vqa", "frequency"] = "vqa"   # vqa: official VQAv2 accuracy of each answer
    max_question_tokens: int = ranged(40, ge=1)   # longer questions are truncated (with a warning)


@dataclass
class DistillConfig:
    """``task.name: distill``: train a (smaller) student CLIP from a teacher CLIP checkpoint."""
    teacher: str | None = None            # teacher checkpoint: anything mmfm.load accepts (run dir, export, openclip:)
    temperature: float = ranged(1.0, gt=0)   # softens both similarity distributions in the KD term
    kd_weight: float = ranged(1.0, ge=0)     # KL(teacher || student) over image->text and text->image in-batch logits
    contrastive_weight: float = ranged(1.0, ge=0)   # the student's own CLIP loss on the true pairs
    feature_weight: float = ranged(0.0, ge=0)   # 1 - cos(student, teacher) embeddings (needs equal embed_dim)

    def validate(self) -> None:
        if self.kd_weight + self.contrastive_weight + self.feature_weight == 0:
            raise ConfigError("kd_weight, contrastive_weight, feature_weight: at least one must be > 0")


@dataclass
class TaskConfig:
    name: Literal["contrastive", "caption", "vqa", "distill"] = "contrastive"
    contrastive: ContrastiveLossConfig = field(default_factory=ContrastiveLossConfig)
    caption: CaptionLossConfig = field(default_factory=CaptionLossConfig)
    vqa: VQALossConfig = field(default_factory=VQALossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
