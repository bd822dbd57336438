"""Schema of the captioner decoder and of generation settings. Owned by the caption/VQA code."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .core import ConfigError, ranged


@dataclass
class DecoderConfig:
    arch: str = "gpt2"                 # transformers model type (AutoConfig.for_model) with cross-attention
    hf_path: str | None = None         # warm-start folder (weights + tokenizer), or pkg:MODULE
    tokenizer: str | None = None       # "openclip" (bundled BPE) or a tokenizer folder; default: hf_path, else openclip
    config_overrides: dict[str, Any] = field(default_factory=dict)   # n_layer, n_embd, ... (AutoConfig kwargs)
    max_length: int = ranged(32, ge=3)  # training sequence length: bos + prompt + caption + eos
    prompt: str = ""                   # caption prefix the loss ignores (e.g. "a picture of")
    projection: Literal["auto", "linear", "none"] = "auto"   # image tokens -> decoder width; none: refuse a mismatch
    contrastive_head: bool = False     # CoCa-style image/text embeddings (needed by task.caption.contrastive_weight)
    fusion: Literal["cross_attention", "prefix"] = "cross_attention"   # prefix: LLaVA-style, image tokens through
                                       # an MLP projector in front of the text of any causal LM (no cross-attention)
    projector_layers: int = ranged(2, ge=1)   # fusion=prefix: Linear layers of the MLP projector (GELU between)
    lock: bool = False                 # freeze the decoder / LM (fusion=prefix: train only the projector, or LoRA)


PERSON_ATTRIBUTES = ("skin_tone", "gender", "age")


@dataclass
class AltTextConfig:
    """Post-processing that turns a raw caption into alt text (applied by ``mmfm caption``)."""
    strip_prefix: bool = True          # drop "an image of", "a picture of", "a photo of" ...
    sentence_case: bool = True         # first letter upper case, a final period
    max_chars: int = ranged(125, ge=0)  # cut at a word boundary; 0 = no limit
    fallback: str | None = None        # alt text for a degenerate caption (empty, one word, a loop, the prompt
                                       # repeated); None: keep the caption, marked in its "degenerate" field
    min_confidence: float | None = None   # mean token log-probability below which a caption counts as
                                          # degenerate ("low_confidence"); None: not checked
    person_attributes: list[str] = field(default_factory=lambda: list(PERSON_ATTRIBUTES))
                                       # what alt text may state about a person: skin_tone, gender, age; one left
                                       # out is removed or made neutral ("a dark-skinned woman" -> "a person" with
                                       # []); trade-off in docs/captioning.md

    def validate(self) -> None:
        unknown = [a for a in self.person_attributes if a not in PERSON_ATTRIBUTES]
        if unknown:
            raise ConfigError(f"person_attributes: unknown attribute {unknown[0]!r}; choose from "
                              f"{', '.join(PERSON_ATTRIBUTES)} (the list says what alt text may state)")



@dataclass
class GenerateConfig:
    num_beams: int = ranged(1, ge=1)
    do_sample: bool = False
    temperature: float = ranged(1.0, gt=0)
    top_p: float = ranged(1.0, gt=0, le=1)
    top_k: int = ranged(50, ge=0)
    min_new_tokens: int = 1
    max_new_tokens: int = ranged(20, ge=1)
    no_repeat_ngram_size: int = ranged(0, ge=0)
    repetition_penalty: float = ranged(1.0, gt=0)
    length_penalty: float = 1.0
    use_cache: bool = True
    prompt: str | None = None          # None: the decoder's training prompt (model.decoder.prompt)
    batch_size: int = ranged(32, ge=1)
    seed: int | None = None            # for do_sample: reproducible draws
    alt_text: AltTextConfig = field(default_factory=AltTextConfig)

    def validate(self) -> None:
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"min_new_tokens: must be in [0, max_new_tokens={self.max_new_tokens}], "
                              f"got {self.min_new_tokens}")
