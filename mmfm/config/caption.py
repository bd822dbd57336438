"""Schema of the captioner decoder and of generation settings. Owned by the caption/VQA code."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .core import ConfigError


@dataclass
class DecoderConfig:
    arch: str = "gpt2"                 # transformers model type (AutoConfig.for_model) with cross-attention
    hf_path: str | None = None         # warm-start folder (weights + tokenizer), or pkg:MODULE
    tokenizer: str | None = None       # "openclip" (bundled BPE) or a tokenizer folder; default: hf_path, else openclip
    config_overrides: dict[str, Any] = field(default_factory=dict)   # n_layer, n_embd, ... (AutoConfig kwargs)
    max_length: int = 32               # training sequence length: bos + prompt + caption + eos
    prompt: str = ""                   # caption prefix the loss ignores (e.g. "a picture of")
    projection: Literal["auto", "linear", "none"] = "auto"   # image tokens -> decoder width; none: refuse a mismatch
    contrastive_head: bool = False     # CoCa-style image/text embeddings (needed by task.caption.contrastive_weight)

    def validate(self) -> None:
        if self.max_length < 3:
            raise ConfigError(f"max_length: must be >= 3 (bos, one token, eos), got {self.max_length}")


@dataclass
class AltTextConfig:
    """Post-processing that turns a raw caption into alt text (applied by ``mmfm caption``)."""
    strip_prefix: bool = True          # drop "an image of", "a picture of", "a photo of" ...
    sentence_case: bool = True         # first letter upper case, a final period
    max_chars: int = 125               # cut at a word boundary; 0 = no limit

    def validate(self) -> None:
        if self.max_chars < 0:
            raise ConfigError(f"max_chars: must be >= 0 (0 = no limit), got {self.max_chars}")


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
    length_penalty: float = 1.0
    use_cache: bool = True
    prompt: str | None = None          # None: the decoder's training prompt (model.decoder.prompt)
    batch_size: int = 32
    seed: int | None = None            # for do_sample: reproducible draws
    alt_text: AltTextConfig = field(default_factory=AltTextConfig)

    def validate(self) -> None:
        if self.num_beams < 1:
            raise ConfigError(f"num_beams: must be >= 1, got {self.num_beams}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"min_new_tokens: must be in [0, max_new_tokens={self.max_new_tokens}], "
                              f"got {self.min_new_tokens}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty: must be > 0, got {self.repetition_penalty}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
