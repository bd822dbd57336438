"""The captioner: a timm vision tower whose image tokens feed a transformers decoder through cross-attention.

* Vision: ``model.vision`` (any timm model), or the tower of an mmfm CLIP checkpoint (``model.clip_checkpoint``;
  its architecture is copied into ``model.vision`` so the saved config rebuilds the captioner alone). Only its
  token path (``forward_features``) is kept: timm's pooling head is dropped, its tensors ignored when loading.
  ``model.vision.lock`` / ``unlock_last_groups`` freeze it fully or partially.
* Decoder: any ``AutoModelForCausalLM`` architecture that supports cross-attention (GPT-2, BERT, RoBERTa, ...),
  built from ``AutoConfig.for_model(model.decoder.arch, **config_overrides)`` or warm-started from a local
  folder (``model.decoder.hf_path``; the cross-attention weights start fresh).
* Image tokens (B, N, vision width) are projected to the decoder width when they differ
  (``model.decoder.projection``: ``auto``/``linear``, or ``none`` to refuse with a clear message).
* Optional CoCa-style contrastive head (``model.decoder.contrastive_head``): image embedding = pooled image
  tokens, text embedding = the decoder run *without* cross-attention, read at the last real token.
* Sequences are laid out as ``[bos] + prompt + target + [eos]`` (right-padded for training, left-padded prompts
  for generation); generation is transformers' ``generate`` with an ``EncoderDecoderCache`` KV cache.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.config import ConfigError
from mmfm.config.caption import DecoderConfig
from mmfm.config.model import ModelConfig

from .tower_setup import apply_tower_settings

__all__ = ["Captioner", "TextLayout", "build_captioner", "build_decoder_tokenizer", "check_token_ids"]


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _cache_kwarg() -> str:
    """The name ``generate`` takes a Cache under: ``cache`` in current transformers 5 (``past_key_values``
    there is deprecated and warns on every call), ``past_key_values`` in the 5.x releases before the rename."""
    from transformers.generation import utils as generation_utils

    return "cache" if "cache" in getattr(generation_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def build_decoder_tokenizer(dcfg: DecoderConfig):
    from mmfm.data.tokenizers import build_tokenizer

    name = dcfg.tokenizer or dcfg.hf_path or "openclip"
    if name == "openclip":
        return build_tokenizer("openclip", context_length=dcfg.max_length)
    return build_tokenizer("hf", name, context_length=dcfg.max_length)


def check_token_ids(tokenizer, vocab_size: int) -> None:
    """Token-id hygiene: pad, eos and bos (the decoder start) must exist and fit the decoder's embeddings."""
    name = getattr(tokenizer, "name", type(tokenizer).__name__)
    for attr, role in (("pad_token_id", "pad"), ("eos_token_id", "eos"), ("bos_token_id", "bos (decoder start)")):
        tid = getattr(tokenizer, attr, None)
        if tid is None:
            raise ConfigError(f"model.decoder: tokenizer {name} has no {role} token; the captioner needs it "
                              f"({attr} is None). Use a tokenizer that defines it, or add it to the tokenizer folder.")
        if not 0 <= int(tid) < vocab_size:
            raise ConfigError(f"model.decoder: tokenizer {name}'s {role} id {tid} is outside the decoder's "
                              f"vocabulary of {vocab_size}")
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(f"model.decoder: the tokenizer {name} has {tokenizer.vocab_size} ids but the decoder's "
                          f"embedding has only {vocab_size}; set config_overrides.vocab_size >= {tokenizer.vocab_size}")


def build_causal_lm(dcfg: DecoderConfig, tokenizer, init_weights: bool, **config_extra) -> nn.Module:
    """A transformers causal LM from ``model.decoder`` (a local ``hf_path`` folder, or ``arch`` + overrides), with
    the tokenizer's special ids; ``config_extra`` (e.g. ``add_cross_attention``) goes into its config. Shared by
    mmfm's cross-attention captioner and the prefix captioner."""
    from transformers import AutoConfig, AutoModelForCausalLM

    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    overrides = dict(dcfg.config_overrides)
    with _quiet_transformers():
        if dcfg.hf_path:
            from mmfm.data.tokenizers import resolve_path
            path = resolve_path(dcfg.hf_path)
            if not os.path.isdir(path):
                raise ConfigError(f"model.decoder.hf_path: folder not found: {path}")
            config = AutoConfig.from_pretrained(path, **overrides)
            config.update({**config_extra, **special})
            if init_weights:
                return AutoModelForCausalLM.from_pretrained(path, config=config)
            return AutoModelForCausalLM.from_config(config)
        overrides.setdefault("vocab_size", tokenizer.vocab_size)
        try:
            config = AutoConfig.for_model(dcfg.arch, **config_extra, **{**special, **overrides})
        except ValueError as e:
            raise ConfigError(f"model.decoder.arch: '{dcfg.arch}' is not a transformers model type ({e})") from None
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError as e:
            raise ConfigError(f"model.decoder.arch: '{dcfg.arch}' has no causal-LM head in transformers "
                              f"({e})") from None


def _build_decoder(dcfg: DecoderConfig, tokenizer, init_weights: bool) -> nn.Module:
    decoder = build_causal_lm(dcfg, tokenizer, init_weights, is_decoder=True, add_cross_attention=True)
    if not any("cross" in n for n, _ in decoder.named_modules()):
        raise ConfigError(f"model.decoder: {type(decoder).__name__} has no cross-attention layers; use an "
                          f"architecture that supports add_cross_attention (gpt2, bert, roberta, ...)")
    return decoder


def _vision_cfg_from_clip(cfg: ModelConfig):
    """The CLIP checkpoint's vision architecture, with this config's lock / checkpointing / caching choices and
    preprocessing keys on top of the CLIP's (e.g. a captioner without the CLIP's random crop)."""
    from .layout import read_config

    clip_cfg = read_config(cfg.clip_checkpoint).model
    if clip_cfg.kind != "clip" or clip_cfg.openclip:
        raise ConfigError(f"model.clip_checkpoint: {cfg.clip_checkpoint} is not an mmfm CLIP checkpoint with a "
                          f"timm vision tower (kind={clip_cfg.kind}, openclip={clip_cfg.openclip})")
    v = cfg.vision
    return dataclasses.replace(clip_cfg.vision, pretrained=None, lock=v.lock,
                               unlock_last_groups=v.unlock_last_groups, grad_checkpointing=v.grad_checkpointing,
                               cache_locked_features=v.cache_locked_features, memo_dir=v.memo_dir,
                               preprocess={**clip_cfg.vision.preprocess, **v.preprocess})


def _load_clip_vision(visual: nn.Module, ckpt: str) -> dict:
    from safetensors.torch import load_file

    from .layout import WEIGHTS, read_meta, resolve_checkpoint

    d = resolve_checkpoint(ckpt)
    sd = {k[len("visual."):]: v for k, v in load_file(str(d / WEIGHTS), device="cpu").items()
          if k.startswith("visual.")}
    if not sd:
        raise ConfigError(f"model.clip_checkpoint: {d} holds no 'visual.*' tensors")
    result = visual.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"model.clip_checkpoint: the vision tower in {d} does not fit: missing "
                          f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    return read_meta(d)


class TextLayout:
    """Decoder sequences ``[bos] + prefix + target + [eos]`` for one tokenizer. Picklable (loader processors)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.bos, self.eos, self.pad = (int(tokenizer.bos_token_id), int(tokenizer.eos_token_id),
                                        int(tokenizer.pad_token_id))

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        tok = self.tokenizer
        inner = getattr(tok, "tokenizer", None)
        if inner is not None and hasattr(inner, "encode"):            # a transformers tokenizer
            return list(inner.encode(text, add_special_tokens=False))
        bpe = getattr(tok, "_tok", None)
        if bpe is not None and hasattr(bpe, "encode"):                # open_clip's SimpleTokenizer
            return list(bpe.encode(text))
        raise TypeError(f"cannot encode plain text with {type(tok).__name__}")

    def sequence(self, prefix_ids: Sequence[int], target: str | None, max_length: int | None = None
                 ) -> tuple[list[int], int]:
        """``[bos] + prefix + target + [eos]`` (target None: prompt only, no eos) and the prefix length
        including bos. The target is cut to fit ``max_length`` with eos kept last."""
        ids = [self.bos] + [int(i) for i in prefix_ids]
        n_prefix = len(ids)
        if target is None:
            return ids, n_prefix
        limit = int(max_length or self.max_length)
        room = limit - n_prefix - 1
        if room < 1:
            raise ValueError(f"the prompt takes {n_prefix} of {limit} tokens: no room for a target")
        return ids + self.encode_plain(target)[:room] + [self.eos], n_prefix

    def right_pad(self, ids: Sequence[int], n_prefix: int, length: int | None = None) -> dict[str, torch.Tensor]:
        """Training tensors: ``text_ids``/``attention_mask`` padded right to ``length`` and ``labels`` equal to
        the ids except -100 on the prefix (bos + prompt) and on padding. Pads are found by the mask, never by
        id, so a tokenizer whose pad id equals eos still learns to stop."""
        length = int(length or self.max_length)
        if len(ids) > length:
            raise ValueError(f"sequence of {len(ids)} tokens is longer than {length}")
        text_ids = torch.full((length,), self.pad, dtype=torch.long)
        mask = torch.zeros(length, dtype=torch.long)
        text_ids[: len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        mask[: len(ids)] = 1
        labels = text_ids.clone()
        labels[mask == 0] = -100
        labels[:n_prefix] = -100
        return {"text_ids": text_ids, "attention_mask": mask, "labels": labels}

    def left_pad(self, rows: Sequence[Sequence[int]], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts for generation, padded on the left."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
                mask[i, width - len(r):] = 1
        return ids.to(device), mask.to(device)


class DecoderSizes:
    """Sizes read from a captioner's transformers ``decoder`` (mmfm's cross-attention captioner and the prefix
    captioner share them)."""

    @property
    def hidden_size(self) -> int:
        return int(self.decoder.config.get_text_config().hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.decoder.get_input_embeddings().num_embeddings)

    @property
    def max_positions(self) -> int | None:
        c = self.decoder.config.get_text_config()
        return getattr(c, "n_positions", None) or getattr(c, "max_position_embeddings", None)


class Captioner(DecoderSizes, nn.Module):
    """``forward(image, text_ids, attention_mask) -> {"logits", "image_tokens"}``; see the module docstring."""

    tower_paths = {"vision": ("visual",), "decoder": ("decoder",)}     # tower names: mmfm.models.tower_setup

    def __init__(self, visual: nn.Module, decoder: nn.Module, tokenizer, model_cfg: ModelConfig):
        super().__init__()
        dcfg = model_cfg.decoder or DecoderConfig()
        self.visual = visual
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.preprocess = dict(visual.preprocess)
        self.prompt = dcfg.prompt
        self.max_length = dcfg.max_length
        self.layout = TextLayout(tokenizer, dcfg.max_length)
        width = self.hidden_size
        vw = int(visual.width)
        if vw != width and dcfg.projection == "none":
            raise ConfigError(
                f"model.decoder: the vision tower's tokens are {vw} wide ({model_cfg.vision.timm_model}) but the "
                f"decoder's hidden size is {width}; cross-attention needs them equal. Set "
                f"model.decoder.projection: auto (a learned linear projection) or make the widths match.")
        if vw != width or dcfg.projection == "linear":
            self.proj = nn.Sequential(nn.Linear(vw, width), nn.LayerNorm(width))
        else:
            self.proj = nn.Identity()
        self.embed_dim = int(model_cfg.embed_dim)
        if dcfg.contrastive_head:
            self.image_proj = nn.Linear(width, self.embed_dim, bias=False)
            self.text_proj = nn.Linear(width, self.embed_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(float(model_cfg.init_logit_scale)))
        else:
            self.image_proj = self.text_proj = self.logit_scale = None
        check_token_ids(tokenizer, self.vocab_size)


    @property
    def has_contrastive_head(self) -> bool:
        return self.image_proj is not None

    # ------------------------------------------------------------ text layout
    def encode_plain(self, text: str) -> list[int]:
        return self.layout.encode_plain(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def sequence(self, prefix_ids: Sequence[int], target: str | None, max_length: int | None = None
                 ) -> tuple[list[int], int]:
        return self.layout.sequence(prefix_ids, target, max_length)

    # ------------------------------------------------------------ forward passes
    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.visual.forward_tokens(image))

    def forward(self, image: torch.Tensor | None = None, text_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_tokens: torch.Tensor | None = None) -> dict:
        if image_tokens is None:
            image_tokens = self.image_tokens(image)
        image_tokens = image_tokens.contiguous()        # some decoders (GPT-2's Conv1D) need a view
        out = self.decoder(input_ids=text_ids, attention_mask=attention_mask, encoder_hidden_states=image_tokens,
                           use_cache=False)
        return {"logits": out.logits, "image_tokens": image_tokens}

    def encode_image(self, image: torch.Tensor | None = None, normalize: bool = False,
                     image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        if not self.has_contrastive_head:
            raise ConfigError("this captioner has no contrastive head (model.decoder.contrastive_head: false)")
        tokens = self.image_tokens(image) if image_tokens is None else image_tokens
        x = self.image_proj(tokens.mean(1))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = False) -> torch.Tensor:
        if not self.has_contrastive_head:
            raise ConfigError("this captioner has no contrastive head (model.decoder.contrastive_head: false)")
        if attention_mask is None:
            attention_mask = torch.ones_like(text_ids)
        out = self.decoder(input_ids=text_ids, attention_mask=attention_mask, output_hidden_states=True,
                           use_cache=False)
        last = attention_mask.long().sum(1).clamp(min=1) - 1              # right padding: last real token
        h = out.hidden_states[-1][torch.arange(text_ids.shape[0], device=text_ids.device), last]
        x = self.text_proj(h)
        return F.normalize(x, dim=-1) if normalize else x

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_ids(self, image: torch.Tensor | None, prefix_ids: Sequence[Sequence[int]], *,
                     image_tokens: torch.Tensor | None = None, **generate_kwargs) -> torch.Tensor:
        """New token ids (B, T) after ``[bos] + prefix`` for each image, via transformers' ``generate``.

        ``generate_kwargs`` are GenerationConfig fields (num_beams, do_sample, max_new_tokens, use_cache ...)."""
        from transformers import GenerationConfig
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        if image_tokens is None:
            image_tokens = self.image_tokens(image)
        image_tokens = image_tokens.contiguous()
        rows = [self.sequence(p, None)[0] for p in prefix_ids]
        if len(rows) != image_tokens.shape[0]:
            raise ValueError(f"{image_tokens.shape[0]} images but {len(rows)} prompts")
        ids, mask = self.layout.left_pad(rows, image_tokens.device)
        max_new = int(generate_kwargs.get("max_new_tokens", 20))
        if self.max_positions and ids.shape[1] + max_new > self.max_positions:
            raise ValueError(f"prompt ({ids.shape[1]} tokens) + max_new_tokens ({max_new}) exceeds the decoder's "
                             f"{self.max_positions} positions")
        tok = self.tokenizer
        kwargs = {"use_cache": True, **generate_kwargs}
        gen = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, **kwargs)
        extra = {}
        if kwargs["use_cache"]:   # decoder-only models get a self-attention-only cache from generate(); give both
            c = self.decoder.config
            extra[_cache_kwarg()] = EncoderDecoderCache(DynamicCache(config=c), DynamicCache(config=c))
        with _quiet_transformers():
            out = self.decoder.generate(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_tokens,
                                        generation_config=gen, **extra)
        return out[:, ids.shape[1]:]

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        self.visual.lock(unlocked_groups, freeze_bn_stats)


def build_captioner(cfg: ModelConfig, init_weights: bool = True) -> Captioner:
    """``kind: captioner`` -> :class:`Captioner`. ``init_weights=False``: same architecture, no pretrained
    weights read (a checkpoint is about to be loaded)."""
    from .towers import TimmVisionTower

    dcfg = cfg.decoder or DecoderConfig()
    if cfg.decoder is None:
        cfg.decoder = dcfg
    clip_meta = None
    if cfg.clip_checkpoint and (init_weights or os.path.exists(os.path.expanduser(cfg.clip_checkpoint))):
        # record the CLIP tower's architecture in this config, so the saved captioner rebuilds without it
        cfg.vision = _vision_cfg_from_clip(cfg)
    v = cfg.vision
    visual = TimmVisionTower(v.timm_model, v.timm_kwargs, v.pretrained if init_weights else None, v.image_size,
                             preprocess=v.preprocess)      # the config's keys hold without a CLIP checkpoint too
    visual.drop_pooling_head()               # tokens only: no parameter DDP would find unused
    if cfg.clip_checkpoint and init_weights:
        clip_meta = _load_clip_vision(visual, cfg.clip_checkpoint)
    tokenizer = build_decoder_tokenizer(dcfg)
    check_token_ids(tokenizer, 2 ** 62)      # missing specials fail here, before a decoder is built
    decoder = _build_decoder(dcfg, tokenizer, init_weights)
    model = Captioner(visual, decoder, tokenizer, cfg)
    if clip_meta and clip_meta.get("preprocess"):
        model.preprocess = {**clip_meta["preprocess"], **v.preprocess}
    return apply_tower_settings(model, cfg)
