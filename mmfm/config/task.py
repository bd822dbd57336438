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


@dataclass
class TaskConfig:
    name: Literal["contrastive", "caption", "vqa"] = "contrastive"
    contrastive: ContrastiveLossConfig = field(default_factory=ContrastiveLossConfig)
    caption: CaptionLossConfig = field(default_factory=CaptionLossConfig)
