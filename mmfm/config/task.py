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
class TaskConfig:
    name: Literal["contrastive", "caption", "vqa"] = "contrastive"
    contrastive: ContrastiveLossConfig = field(default_factory=ContrastiveLossConfig)
    caption: CaptionLossConfig = field(default_factory=CaptionLossConfig)
    vqa: VQALossConfig = field(default_factory=VQALossConfig)
