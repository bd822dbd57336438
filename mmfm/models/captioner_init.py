"""``train.init_from`` for captioners: the checkpoint defines the architecture and the tokenizer.

``mmfm.train.init_model.adopt_init_model(cfg)``: when ``train.init_from`` is an mmfm captioner checkpoint (or
run), its stored model section (vision architecture, decoder, tokenizer) replaces the experiment's, which keeps
only its training choices (vision lock / unlocked groups / grad checkpointing / feature cache, LoRA). So
fine-tuning the demo's captioner with the shipped config works although the demo fitted its own 2,000-token vocabulary, and the CLIP checkpoint
the config names need not exist any more. ``tokenizer_mismatch`` adds the tokenizers of both sides to a
shape-mismatch error when they differ.
"""
from __future__ import annotations

__all__ = ["tokenizer_mismatch"]


def tokenizer_mismatch(model, meta: dict) -> str:
    """A line naming the tokenizers on both sides when a captioner checkpoint's differs from the model's."""
    tok = getattr(model, "tokenizer", None)
    theirs, ours = meta.get("tokenizer"), getattr(tok, "name", None)
    if getattr(model, "layout", None) is None or not theirs or theirs == ours:
        return ""
    return (f"\n  the checkpoint's decoder uses tokenizer {theirs}, the model section builds {ours} "
            f"({getattr(tok, 'vocab_size', '?')} ids): start from the checkpoint's model section (leave "
            f"model.decoder as the checkpoint stores it) or fine-tune with the same tokenizer")
