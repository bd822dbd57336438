"""The LM of a prefix captioner (``model.decoder.fusion: prefix``) written back as a plain transformers folder:
``AutoModelForCausalLM.from_pretrained(OUT)`` and ``AutoTokenizer.from_pretrained(OUT)`` open it, and
``projector.safetensors`` beside them holds the MLP that maps the vision tower's tokens to the LM's input
embeddings. Checked right after writing: the reloaded LM's logits on the captioner's own input embeddings
against mmfm's (max abs diff, recorded in ``mmfm_export.json``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["export_prefix_lm"]


def _inputs(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = int(model.preprocess.get("input_size", (3, 224, 224))[-1])
    images = torch.randn(2, 3, size, size, generator=g)
    rows = [model.layout.right_pad(*model.sequence(model.encode_plain(p), t)) for p, t in
            (("", "a"), ("of", "the"))]
    return (images, torch.stack([r["text_ids"] for r in rows]), torch.stack([r["attention_mask"] for r in rows]))


def export_prefix_lm(model, out_dir: str | os.PathLike) -> dict:
    """Write the LM, its tokenizer and the projector to ``out_dir`` atomically; returns the export info."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from mmfm.config.files import atomic_dir, atomic_write_text

    out = Path(out_dir).resolve()
    model = model.eval()

    def fill(tmp: Path) -> None:
        model.decoder.save_pretrained(tmp)
        inner = getattr(model.tokenizer, "tokenizer", None)
        if inner is not None and hasattr(inner, "save_pretrained"):
            inner.save_pretrained(tmp)
        save_file({k: v.detach().contiguous() for k, v in model.proj.state_dict().items()},
                  str(tmp / "projector.safetensors"))

    with atomic_dir(out) as tmp:
        fill(Path(tmp))
    images, ids, mask = _inputs(model)
    with torch.no_grad():
        ours = model(image=images, text_ids=ids, attention_mask=mask)["logits"]
        embeds, full = model._inputs(model.image_tokens(images), ids, mask)
        theirs = AutoModelForCausalLM.from_pretrained(out).eval()(inputs_embeds=embeds, attention_mask=full).logits
    info = {"format": "mmfm-prefix-lm-export/1", "class": type(model.decoder).__name__,
            "loader": f"transformers.AutoModelForCausalLM.from_pretrained('{out}')",
            "projector": "projector.safetensors", "image_positions": int(embeds.shape[1] - ids.shape[1]),
            "max_abs_diff": float((ours - theirs).abs().max())}
    atomic_write_text(out / "mmfm_export.json", json.dumps(info, indent=2))
    return info
