"""Captions longer than the text tower's context (77 tokens for CLIP): ``model.text.long_captions``.

* ``truncate`` (the default, and what CLIP always did): the tokenizer keeps the first ``context_length - 1``
  tokens and puts the end-of-text token last, so a long caption encodes exactly as the caption cut there.
  Evaluations count the texts cut (``texts_cut`` in their results) and warn.
* ``stretch``: the learned positional embeddings are stretched as Long-CLIP does (Zhang et al. 2024): the first
  ``keep`` positions (20), which the model trained well, stay as they are; the remaining ones are linearly
  interpolated to ``factor`` (4) times as many, so a 77-position tower reads 20 + 57 * 4 = 248 tokens
  (``model.text.long_context`` sets another length). The tokenizer then cuts at the new length.
  For open_clip towers (``model.openclip`` and mmfm's ``text.type: openclip``) and transformers CLIP
  (``model.source: hf:...``); other text towers (a BERT-style ``text.type: hf``) are refused by name.

The stretch is applied when the model is built, before a checkpoint's weights load, so a checkpoint saved from a
stretched model loads into one of the same shape.
"""
from __future__ import annotations

import torch
from torch import nn

from mmfm.config import ConfigError

__all__ = ["KEEP", "FACTOR", "kept", "stretched_length", "stretch_positions", "apply_long_captions"]

KEEP, FACTOR = 20, 4


def kept(n: int) -> int:
    """Positions kept as they are: Long-CLIP's 20 (of 77); a tower of at most 40 positions (a test model) keeps a
    quarter of them."""
    return KEEP if n > 2 * KEEP else max(1, n // 4)


def stretched_length(n: int, factor: int = FACTOR) -> int:
    """Long-CLIP's length: the kept positions, then the other ones ``factor`` times (77 -> 248)."""
    return kept(n) + (n - kept(n)) * factor


def stretch_positions(pos: torch.Tensor, target: int) -> torch.Tensor:
    """(N, D) positional embeddings -> (target, D): rows ``[:kept(N)]`` unchanged, the rest linearly interpolated
    (end points kept) to the remaining rows."""
    n = pos.shape[0]
    if target <= n:
        raise ConfigError(f"model.text.long_context: {target} must exceed the tower's {n} positions")
    keep = kept(n)
    rest = pos[keep:].detach().float().T.unsqueeze(0)                      # (1, D, n - keep)
    wide = nn.functional.interpolate(rest, size=target - keep, mode="linear", align_corners=True)
    return torch.cat([pos[:keep].detach().float(), wide[0].T]).to(pos.dtype)


def _openclip_text(model: nn.Module) -> nn.Module | None:
    """The module holding open_clip's ``positional_embedding`` and causal ``attn_mask``."""
    for m in (model, getattr(model, "model", None), getattr(getattr(model, "model", None), "text", None),
              getattr(model, "text", None)):
        if m is not None and isinstance(getattr(m, "positional_embedding", None), nn.Parameter) \
                and hasattr(m, "context_length"):
            return m
    return None


def _stretch_openclip(text: nn.Module, target: int) -> None:
    text.positional_embedding = nn.Parameter(stretch_positions(text.positional_embedding, target))
    text.context_length = target
    if hasattr(text, "num_pos"):
        text.num_pos = target
    if getattr(text, "attn_mask", None) is not None:
        mask = torch.full((target, target), float("-inf")).triu_(1)       # causal, as open_clip builds it
        text.register_buffer("attn_mask", mask.to(text.attn_mask.dtype), persistent=False)


def _stretch_hf(model: nn.Module, target: int) -> None:
    emb = model.model.text_model.embeddings
    old = emb.position_embedding
    new = nn.Embedding(target, old.embedding_dim)
    new.weight.data.copy_(stretch_positions(old.weight, target))
    emb.position_embedding = new
    emb.register_buffer("position_ids", torch.arange(target).unsqueeze(0), persistent=False)
    if hasattr(emb, "num_positions"):
        emb.num_positions = target
    model.model.config.text_config.max_position_embeddings = target


def _longer_tokenizer(tok, target: int):
    """The same tokenizer, cutting at ``target`` tokens."""
    from mmfm.data.tokenizers import HFTokenizer, OpenCLIPBPETokenizer, WrappedOpenCLIPTokenizer
    if isinstance(tok, HFTokenizer):
        return HFTokenizer(tok.path, target, **tok._kwargs)
    if isinstance(tok, WrappedOpenCLIPTokenizer):
        return WrappedOpenCLIPTokenizer(tok.model_name, context_length=target)
    if isinstance(tok, OpenCLIPBPETokenizer):
        return OpenCLIPBPETokenizer(target)
    raise ConfigError(f"model.text.long_captions: stretch: cannot lengthen a {type(tok).__name__}")


def apply_long_captions(model: nn.Module, text_cfg) -> nn.Module:
    """``model.text.long_captions: stretch``: stretch the text tower's positions and lengthen its tokenizer (in
    place); ``truncate``: nothing to do."""
    if getattr(text_cfg, "long_captions", "truncate") != "stretch":
        return model
    text = _openclip_text(model)
    hf = getattr(getattr(getattr(model, "model", None), "text_model", None), "embeddings", None)
    if text is not None:
        target = text_cfg.long_context or stretched_length(int(text.positional_embedding.shape[0]))
        _stretch_openclip(text, target)
    elif hf is not None and isinstance(getattr(hf, "position_embedding", None), nn.Embedding):
        target = text_cfg.long_context or stretched_length(int(hf.position_embedding.num_embeddings))
        _stretch_hf(model, target)
    else:
        raise ConfigError(f"model.text.long_captions: stretch needs an open_clip or transformers CLIP text tower "
                          f"(learned positions), not {type(getattr(model, 'text', model)).__name__}; use truncate")
    model.tokenizer = _longer_tokenizer(model.tokenizer, target)
    return model
