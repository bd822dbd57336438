"""Schema of the ``task:`` section: which task module, and its loss settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ContrastiveLossConfig:
    loss: Literal["clip", "siglip"] = "clip"
    local_loss: bool = False
    gather_with_grad: bool = True


@dataclass
class CaptionLossConfig:
    label_smoothing: float = 0.0
    contrastive_weight: float = 0.0       # > 0: CoCa-style joint contrastive + caption loss
    caption_weight: float = 1.0
    caption_key: Literal["txt", "random"] = "txt"   # random: one of json "captions" per sample (train only)


@dataclass
class VQALossConfig:
    template: str = "question: {question} answer:"   # the decoder prompt; the loss ignores it
    max_answers: int = 10                 # distinct answers trained per question (highest weight first)
    weighting: Literal["vqa", "frequency"] = "vqa"   # vqa: official VQAv2 accuracy of each answer
    max_question_tokens: int = 40         # longer questions are truncated (with a warning)


@dataclass
class DistillConfig:
    """``task.name: distill``: train a (smaller) student CLIP from a teacher CLIP checkpoint."""
    teacher: str | None = None            # teacher checkpoint: anything mmfm.load accepts (run dir, export, openclip:)
    temperature: float = 1.0              # softens both similarity distributions in the KD term
    kd_weight: float = 1.0                # KL(teacher || student) over image->text and text->image in-batch logits
    contrastive_weight: float = 1.0       # the student's own CLIP loss on the true pairs
    feature_weight: float = 0.0           # 1 - cos(student, teacher) embeddings (needs equal embed_dim)

    def validate(self) -> None:
        from .core import ConfigError
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")
        for name in ("kd_weight", "contrastive_weight", "feature_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.kd_weight + self.contrastive_weight + self.feature_weight == 0:
            raise ConfigError("kd_weight, contrastive_weight, feature_weight: at least one must be > 0")


@dataclass
class TaskConfig:
    name: Literal["contrastive", "caption", "vqa", "distill"] = "contrastive"
    contrastive: ContrastiveLossConfig = field(default_factory=ContrastiveLossConfig)
    caption: CaptionLossConfig = field(default_factory=CaptionLossConfig)
    vqa: VQALossConfig = field(default_factory=VQALossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
