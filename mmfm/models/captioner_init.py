"""``train.init_from`` for captioners: the checkpoint defines the architecture and the tokenizer.

``adopt_init_model(cfg)``: when ``train.init_from`` is an mmfm captioner checkpoint (or run), its stored model
section (vision architecture, decoder, tokenizer) replaces the experiment's, which keeps only its training choices
(vision lock / unlocked groups / grad checkpointing / feature cache, LoRA). So fine-tuning the demo's captioner
with the shipped config works although the demo fitted its own 2,000-token vocabulary, and the CLIP checkpoint
the config names need not exist any more. ``tokenizer_mismatch`` adds the tokenizers of both sides to a
shape-mismatch error when they differ.
"""
from __future__ import annotations

import copy
import dataclasses

from mmfm.config import ConfigError

__all__ = ["adopt_init_model", "tokenizer_mismatch"]

_TRAINING_CHOICES = ("lock", "unlock_last_groups", "grad_checkpointing", "cache_locked_features")


def adopt_init_model(cfg) -> bool:
    """Replace ``cfg.model`` by the captioner checkpoint's model section (see the module docstring). True when
    it did; any other ``init_from`` (a CLIP, a library spec, a folder that cannot be read) is left alone."""
    from .checkpoint import is_spec, read_config

    spec = cfg.train.init_from
    if not spec or is_spec(str(spec)) or cfg.model.kind != "captioner":
        return False
    try:
        stored = read_config(spec).model
    except (ConfigError, OSError):
        return False                      # init_weights_from reports it
    if stored.kind != "captioner":
        return False
    model = copy.deepcopy(stored)
    model.clip_checkpoint = None          # the vision architecture is recorded; the weights come from init_from
    mine = cfg.model.vision
    model.vision = dataclasses.replace(model.vision, **{k: getattr(mine, k) for k in _TRAINING_CHOICES})
    model.lora = cfg.model.lora
    cfg.model = model
    return True


def tokenizer_mismatch(model, meta: dict) -> str:
    """A line naming the tokenizers on both sides when a captioner checkpoint's differs from the model's."""
    tok = getattr(model, "tokenizer", None)
    theirs, ours = meta.get("tokenizer"), getattr(tok, "name", None)
    if getattr(model, "layout", None) is None or not theirs or theirs == ours:
        return ""
    return (f"\n  the checkpoint's decoder uses tokenizer {theirs}, the model section builds {ours} "
            f"({getattr(tok, 'vocab_size', '?')} ids): start from the checkpoint's model section (leave "
            f"model.decoder as the checkpoint stores it) or fine-tune with the same tokenizer")
