"""Schema of the captioner decoder and of generation settings. Owned by the caption/VQA code."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DecoderConfig:
    arch: str = "gpt2"                 # transformers config type with add_cross_attention
    hf_path: str | None = None         # warm-start folder (weights + tokenizer)
    tokenizer: str | None = None       # tokenizer folder; default: hf_path, else open_clip BPE
    config_overrides: dict[str, Any] = field(default_factory=dict)   # n_layer, n_embd, ...
    max_length: int = 32
    prompt: str = ""


@dataclass
class GenerateConfig:
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    min_new_tokens: int = 1
    max_new_tokens: int = 20
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    use_cache: bool = True
    prompt: str = ""
