"""Schema of the ``model:`` section. Owned by mmfm.models."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .caption import DecoderConfig


@dataclass
class VisionConfig:
    timm_model: str = "vit_tiny_patch16_224"
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None     # local weights file (safetensors / .pth); None = random init
    image_size: int | None = None     # overrides timm's default input size
    lock: bool = False                # freeze the tower (LiT)
    unlock_last_groups: int = 0       # with lock: unfreeze the last N blocks
    grad_checkpointing: bool = False


@dataclass
class TextConfig:
    type: Literal["openclip", "hf"] = "openclip"
    hf_path: str | None = None        # local folder (or hub id when online) for type=hf
    pooling: Literal["cls", "mean", "eos"] = "mean"
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    vocab_size: int = 49408
    lock: bool = False
    unlock_last_groups: int = 0
    grad_checkpointing: bool = False


@dataclass
class ModelConfig:
    name: str | None = None           # a named config from configs/models/<name>.yaml
    kind: Literal["clip", "captioner"] = "clip"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig | None = None        # captioner / VQA decoder
    embed_dim: int = 512
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None        # set (e.g. -10) for SigLIP
    clip_checkpoint: str | None = None          # captioner: take the vision tower from an mmfm CLIP ckpt
