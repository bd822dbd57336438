"""LLaVA-style prefix captioners: image tokens in front of the text of any causal LM (``model.decoder.fusion: prefix``).

* Vision: ``model.vision`` (any timm model; its token path, ``forward_features``), as in the cross-attention
  captioner (``mmfm.models.captioner``), ``model.vision.lock`` to freeze it.
* Projector: a small MLP (``model.decoder.projector_layers`` Linear layers, GELU between) from the vision width
  to the LM's hidden size; it always trains.
* LM: any ``AutoModelForCausalLM`` (GPT-2, Llama, Qwen2, SmolLM ...), from ``model.decoder.arch`` +
  ``config_overrides`` or a local folder (``model.decoder.hf_path``, weights and tokenizer);
  ``model.decoder.lock`` freezes it, ``model.lora: {towers: [decoder]}`` puts LoRA on it.
* The LM reads ``[image tokens] + [bos] + prompt + target + [eos]`` as input embeddings, with no cross-attention.
  ``forward`` returns the logits of the whole sequence and ``image_positions`` (the number of image tokens in
  front); the task masks those positions and the prompt (-100), not the model.
* ``generate_ids`` is the LM's own ``generate`` on ``inputs_embeds``, the batch left-padded in front of the image.
* ``lm_state()`` / :func:`mmfm.export` write the LM back as a plain transformers folder.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mmfm.config import ConfigError
from mmfm.config.caption import DecoderConfig
from mmfm.config.model import ModelConfig

from .captioner import (DecoderSizes, TextLayout, _quiet_transformers, build_causal_lm, build_decoder_tokenizer,
                        check_token_ids)
from .tower_setup import apply_tower_settings

__all__ = ["PrefixCaptioner", "build_prefix_captioner"]


def _projector(in_width: int, width: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Linear(in_width, width)]
    for _ in range(layers - 1):
        mods += [nn.GELU(), nn.Linear(width, width)]
    return nn.Sequential(*mods)


class PrefixCaptioner(DecoderSizes, nn.Module):
    """``forward(image, text_ids, attention_mask) -> {"logits" (B, N + T, V), "image_tokens", "image_positions"}``."""

    tower_paths = {"vision": ("visual",), "decoder": ("decoder",), "projector": ("proj",)}

    def __init__(self, visual: nn.Module, decoder: nn.Module, tokenizer, model_cfg: ModelConfig):
        super().__init__()
        dcfg = model_cfg.decoder
        self.visual, self.decoder, self.tokenizer, self.model_cfg = visual, decoder, tokenizer, model_cfg
        self.preprocess = dict(visual.preprocess)
        self.prompt, self.max_length = dcfg.prompt, dcfg.max_length
        self.layout = TextLayout(tokenizer, dcfg.max_length)
        self.proj = _projector(int(visual.width), self.hidden_size, dcfg.projector_layers)
        self.image_proj = None
        check_token_ids(tokenizer, self.vocab_size)

    has_contrastive_head = False

    def encode_plain(self, text: str) -> list[int]:
        return self.layout.encode_plain(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def sequence(self, prefix_ids: Sequence[int], target: str | None, max_length: int | None = None
                 ) -> tuple[list[int], int]:
        return self.layout.sequence(prefix_ids, target, max_length)

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.visual.forward_tokens(image))

    def _inputs(self, image_tokens: torch.Tensor, text_ids: torch.Tensor, attention_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = self.decoder.get_input_embeddings()(text_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(text_ids)
        n = image_tokens.shape[1]
        mask = torch.cat([attention_mask.new_ones((text_ids.shape[0], n)), attention_mask], 1)
        return torch.cat([image_tokens.to(embeds.dtype), embeds], 1), mask

    def forward(self, image: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_tokens: torch.Tensor | None = None) -> dict:
        if image_tokens is None:
            image_tokens = self.image_tokens(image)
        embeds, mask = self._inputs(image_tokens, text_ids, attention_mask)
        out = self.decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        return {"logits": out.logits, "image_tokens": image_tokens, "image_positions": int(image_tokens.shape[1])}

    @torch.no_grad()
    def generate_ids(self, image: torch.Tensor | None, prefix_ids: Sequence[Sequence[int]], *,
                     image_tokens: torch.Tensor | None = None, **generate_kwargs) -> torch.Tensor:
        """New token ids (B, T) after ``[image] + [bos] + prefix``, by the LM's ``generate`` on input embeddings
        (rows of unequal prompt length are left-padded in front of the image)."""
        from transformers import GenerationConfig

        if image_tokens is None:
            image_tokens = self.image_tokens(image)
        rows = [self.sequence(p, None)[0] for p in prefix_ids]
        if len(rows) != image_tokens.shape[0]:
            raise ValueError(f"{image_tokens.shape[0]} images but {len(rows)} prompts")
        ids, mask = self.layout.left_pad(rows, image_tokens.device)
        pad = (mask == 0).sum(1)
        embeds, full_mask = self._inputs(image_tokens, ids, mask)
        for i, p in enumerate(pad.tolist()):      # move each row's padding in front of its image tokens
            if p:
                order = torch.cat([torch.arange(image_tokens.shape[1], image_tokens.shape[1] + p),
                                   torch.arange(0, image_tokens.shape[1]),
                                   torch.arange(image_tokens.shape[1] + p, embeds.shape[1])]).to(embeds.device)
                embeds[i], full_mask[i] = embeds[i, order], full_mask[i, order]
        max_new = int(generate_kwargs.get("max_new_tokens", 20))
        if self.max_positions and embeds.shape[1] + max_new > self.max_positions:
            raise ValueError(f"image ({image_tokens.shape[1]} tokens) + prompt ({ids.shape[1]}) + max_new_tokens "
                             f"({max_new}) exceeds the LM's {self.max_positions} positions")
        tok = self.tokenizer
        gen = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, **{"use_cache": True, **generate_kwargs})
        with _quiet_transformers():
            return self.decoder.generate(inputs_embeds=embeds, attention_mask=full_mask, generation_config=gen)

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        self.visual.lock(unlocked_groups, freeze_bn_stats)


def build_prefix_captioner(cfg: ModelConfig, init_weights: bool = True) -> PrefixCaptioner:
    """``kind: captioner`` with ``decoder.fusion: prefix`` -> :class:`PrefixCaptioner`."""
    from .towers import TimmVisionTower

    dcfg = cfg.decoder
    if cfg.clip_checkpoint:
        raise ConfigError("model.clip_checkpoint: not supported with model.decoder.fusion: prefix yet; set "
                          "model.vision to the tower's architecture and vision.pretrained to its weights")
    v = cfg.vision
    visual = TimmVisionTower(v.timm_model, v.timm_kwargs, v.pretrained if init_weights else None, v.image_size)
    visual.drop_pooling_head()
    tokenizer = build_decoder_tokenizer(dcfg)
    check_token_ids(tokenizer, 2 ** 62)
    model = PrefixCaptioner(visual, build_causal_lm(dcfg, tokenizer, init_weights), tokenizer, cfg)
    if dcfg.lock:
        model.decoder.requires_grad_(False)
    return apply_tower_settings(model, cfg)
