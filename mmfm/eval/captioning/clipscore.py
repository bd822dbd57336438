"""CLIPScore and RefCLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning") with any CLIP model mmfm loads (an mmfm checkpoint, ``openclip:...``, ``hf:DIR``).

* CLIP-S(c, v) = w * max(cos(E_c, E_v), 0), w = 2.5: the caption's and the image's CLIP embeddings.
* RefCLIP-S(c, R, v) = the harmonic mean of CLIP-S(c, v) and max(max_r cos(E_c, E_r), 0) over the references R.
* Corpus scores are the means of the per-image scores. The paper (and its code) puts "A photo depicts" in front of
  every caption (``prefix``); torchmetrics' ``CLIPScore`` does not, and reports 100 * cos clamped after the
  mean: with ``prefix=""`` this module's per-image CLIP-S equals torchmetrics' on one image times 2.5 / 100.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["CLIPSCORE_W", "CLIPSCORE_PREFIX", "clip_scores", "corpus_clip_scores"]

CLIPSCORE_W = 2.5
CLIPSCORE_PREFIX = "A photo depicts"


def _with_prefix(texts: Sequence[str], prefix: str) -> list[str]:
    return [f"{prefix} {t}".strip() if prefix else t for t in texts]


@torch.no_grad()
def _image_embeddings(clip, images: Sequence, batch_size: int) -> tuple[torch.Tensor, list[str | None]]:
    from mmfm.data.transforms import model_transform
    from mmfm.generate import decode_images
    from mmfm.models.device import model_device

    tensors, errors = decode_images(images, model_transform(clip, train=False))
    device, dim = model_device(clip), None
    out: list[torch.Tensor | None] = [None] * len(tensors)
    ok = [i for i, t in enumerate(tensors) if t is not None]
    for s in range(0, len(ok), batch_size):
        idx = ok[s: s + batch_size]
        feats = clip.encode_image(torch.stack([tensors[i] for i in idx]).to(device), normalize=True).float().cpu()
        dim = feats.shape[1]
        for i, f in zip(idx, feats):
            out[i] = f
    zero = torch.zeros(dim or 1)
    return torch.stack([f if f is not None else zero for f in out]) if out else torch.zeros(0, 1), errors


def clip_scores(clip, images: Sequence, captions: Sequence[str], references: Sequence[Sequence[str]] | None = None,
                *, w: float = CLIPSCORE_W, prefix: str = CLIPSCORE_PREFIX, batch_size: int = 64) -> list[dict]:
    """Per image ``{"clipscore", "refclipscore"?, "error"?}``. ``images``: paths, bytes or PIL images; ``clip``: a
    loaded CLIP model or a spec for :func:`mmfm.eval.embedding.load_clip`."""
    from ..embedding import encode_texts, load_clip

    clip, _ = load_clip(clip)
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    img, errors = _image_embeddings(clip, images, batch_size)
    txt = encode_texts(clip, _with_prefix(captions, prefix), batch_size=batch_size)
    cos = (img * txt).sum(-1) if len(captions) else torch.zeros(0)
    clip_s = w * cos.clamp(min=0)
    rows = [{"clipscore": float(s)} for s in clip_s]
    if references is not None:
        flat = [r for refs in references for r in refs]
        ref = encode_texts(clip, _with_prefix(flat, prefix), batch_size=batch_size)
        start = 0
        for i, refs in enumerate(references):
            if not refs:
                raise ValueError(f"image {i} has no references for RefCLIPScore")
            best = float((ref[start: start + len(refs)] @ txt[i]).max().clamp(min=0))
            start += len(refs)
            c = rows[i]["clipscore"]
            rows[i]["refclipscore"] = 2 * c * best / (c + best) if c + best > 0 else 0.0
    for row, err in zip(rows, errors):
        if err:
            row.update({"clipscore": None, "refclipscore": None, "error": err})
    return rows


def corpus_clip_scores(rows: Sequence[dict]) -> dict[str, float]:
    """Means of the per-image scores (images that failed to decode left out)."""
    out = {}
    for name in ("clipscore", "refclipscore"):
        vals = [r[name] for r in rows if r.get(name) is not None]
        if vals:
            out[name] = sum(vals) / len(vals)
    return out
