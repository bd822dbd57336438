"""Perplexity per token of a captioner on held-out captions (teacher forcing).

Every reference caption of an image is laid out as in training (``[bos] + prompt + caption + [eos]``, the
caption task's labels: -100 on bos, prompt and padding) and scored with the caption task's own loss
(``mmfm.tasks.caption.shifted_token_loss``). Per sample we keep the summed negative log-likelihood and the number
of predicted tokens (the caption's tokens and eos), so that perplexity = exp(sum NLL / sum tokens) over any set
of samples - the corpus figure, not a mean of per-caption perplexities.
"""
from __future__ import annotations

import math

from mmfm.config import ConfigError

__all__ = ["caption_nll", "perplexity"]


def _rows(model, items: list[dict]):
    """(item index, image, sequence tensors) for every reference of every decodable item; and the failures."""
    from mmfm.data.decode import decode_image
    from mmfm.data.transforms import eval_transform
    tf = eval_transform(model)
    prompt = model.encode_plain(model.prompt) if getattr(model, "prompt", None) else []
    rows, failed = [], []
    for i, it in enumerate(items):
        try:
            image = tf(decode_image(it["image"]))
        except Exception as e:  # noqa: BLE001 - an undecodable image is reported, not scored
            failed.append({"key": it.get("key"), "image": it.get("name"), "error": f"{type(e).__name__}: {e}"})
            continue
        for ref in it["references"]:
            ids, n_prefix = model.layout.sequence(prompt, ref)
            rows.append((i, image, model.layout.right_pad(ids, n_prefix)))
    return rows, failed


def caption_nll(model, items: list[dict], *, batch_size: int = 32) -> dict:
    """``items``: ``[{"key", "image", "references": [...]}]`` (``read_caption_data``). Returns
    ``{"keys", "nll" (summed over tokens, per item), "tokens" (per item), "failed"}`` for the decodable items."""
    import torch

    from mmfm.models.device import model_device
    from mmfm.tasks.caption import shifted_token_loss
    device = model_device(model)
    rows, failed = _rows(model, items)
    if not rows:
        raise ConfigError(f"perplexity: no image could be decoded ({failed[:3]})")
    nll = [0.0] * len(items)
    tokens = [0] * len(items)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(rows), batch_size):
                chunk = rows[s:s + batch_size]
                batch = {k: torch.stack([r[2][k] for r in chunk]).to(device) for k in chunk[0][2]}
                image = torch.stack([r[1] for r in chunk]).to(device)
                out = model(image=image, text_ids=batch["text_ids"], attention_mask=batch["attention_mask"])
                count = (batch["labels"][:, 1:] != -100).sum(1)
                per_seq = shifted_token_loss(out["logits"], batch["labels"], reduction="none") * count
                for (i, _, _), v, c in zip(chunk, per_seq.double().cpu().tolist(), count.tolist()):
                    nll[i] += v
                    tokens[i] += int(c)
    finally:
        model.train(was_training)
    done = sorted({r[0] for r in rows})
    return {"keys": [items[i]["key"] for i in done], "nll": [nll[i] for i in done],
            "tokens": [tokens[i] for i in done], "failed": failed}


def perplexity(nll: list[float], tokens: list[int]) -> float:
    """exp(total NLL / total predicted tokens)."""
    total = sum(tokens)
    if total == 0:
        raise ConfigError("perplexity: no caption token to score")
    return math.exp(sum(nll) / total)
