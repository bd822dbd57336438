"""Embedding images and texts with a CLIP model, as zero-shot, retrieval, probes and bias evaluation do it:
loading and checking the model, loader workers, autocast precision, the split eval transform (uint8 in workers,
normalised on the GPU), batched text encoding and the logit scale."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mmfm.config import ConfigError
from mmfm.data import fs
from mmfm.models.device import model_device, resolve_device


def load_clip(model, device: str | None = None):
    """Return ``(clip_model, spec_string_or_None)``; a string is loaded with ``mmfm.load``."""
    spec = None
    if isinstance(model, (str, os.PathLike)):
        spec = str(model)
        if not spec.startswith(("openclip:", "hf:")) and not fs.is_remote(spec) and not Path(spec).exists():
            raise ConfigError(f"checkpoint not found: {spec}")
        from mmfm.models.checkpoint import load as load_model
        model = load_model(spec, device=resolve_device(device))
    check_clip(model, spec)
    return model, spec


def model_kind(model) -> str:
    """``clip`` or ``captioner``: the kind a loaded model was built as (a model without a config is a CLIP)."""
    return getattr(getattr(model, "model_cfg", None), "kind", "clip")


def check_clip(model, name=None) -> None:
    """A CLIP model encodes both images and texts and carries its preprocessing and tokenizer."""
    what = f"checkpoint {name}" if name else f"model {type(model).__name__}"
    missing = [a for a in ("encode_image", "encode_text") if not callable(getattr(model, a, None))]
    kind = model_kind(model)
    if missing or kind != "clip":
        raise ConfigError(f"{what} is not a CLIP model (kind={kind!r}"
                          f"{', lacks ' + ', '.join(missing) if missing else ''}); zero-shot and retrieval "
                          f"need a contrastive image-text model")
    for attr in ("tokenizer", "preprocess"):
        if getattr(model, attr, None) is None:
            raise ConfigError(f"{what} has no .{attr}; load it with mmfm.load() so it carries one")


def default_workers(device) -> int:
    n = os.cpu_count() or 1
    return min(8, n) if str(device).startswith("cuda") else min(4, max(0, n - 1))


def autocast(device, precision: str = "auto"):
    """bf16 autocast on CUDA by default; fp32 on CPU (bf16 matmul is very slow on most CPUs)."""
    import torch
    dev_type = torch.device(device).type
    if precision == "auto":
        precision = "bf16" if dev_type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise ConfigError(f"precision: {precision!r} is not one of auto, fp32, bf16, fp16")
    return torch.autocast(dev_type, dtype=dtype)


def effective_precision(device, precision: str) -> str:
    import torch
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


class DeviceNormalize:
    """``ToTensor`` + ``Normalize`` applied to a uint8 batch on the model's device (same float32 ops, so
    bit-identical), letting loader workers ship 4x smaller uint8 images."""

    def __init__(self, mean, std):
        import torch
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x):
        x = x.float().div_(255)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))


def split_transform(transform, device):
    """``(worker_transform, finish)``: on CUDA, when the transform ends in ToTensor + Normalize (or mmfm's
    fused ``ToNormalizedTensor``), workers stop at a uint8 tensor and ``finish`` scales and normalises the
    batch on the GPU with torchvision's exact ops; otherwise ``(transform, None)``."""
    import torch
    from torchvision import transforms as T
    ops = getattr(transform, "transforms", None)
    if torch.device(device).type != "cuda" or not ops:
        return transform, None
    last = ops[-1]
    if type(last).__name__ == "ToNormalizedTensor":
        prefix = list(ops[:-1])
    elif (len(ops) >= 2 and isinstance(last, T.Normalize)
          and type(ops[-2]).__name__ in ("ToTensor", "MaybeToTensor")):
        prefix = list(ops[:-2])
    else:
        return transform, None
    return T.Compose(prefix + [T.PILToTensor()]), DeviceNormalize(last.mean, last.std)


def _trimmed_openclip_text(model):
    """For an open_clip ``CLIP`` (wrapped by mmfm's adapter) whose text tower is causal and pooled at the
    end-of-text token, an encoder that runs only up to the longest prompt of the batch instead of the full
    77-token context. Earlier tokens never attend to later padding under the causal mask and pooling reads
    the EOT position, so the embeddings are the same (to float rounding) at a fraction of the cost.
    None for any other model (their own ``encode_text`` is used)."""
    oc = getattr(model, "model", None)
    if getattr(model, "debias", None) is not None:    # mmfm.models.debias wraps encode_text: go through it
        return None
    try:
        from open_clip.model import CLIP as OpenCLIP
        from open_clip.transformer import text_global_pool
    except ImportError:
        return None
    if (type(oc) is not OpenCLIP or getattr(oc, "text_pool_type", None) != "argmax"
            or getattr(oc, "attn_mask", None) is None):
        return None
    import torch.nn.functional as F
    from torch import nn

    def encode(ids, mask):
        n = int(mask.sum(1).max()) if mask is not None else ids.shape[1]
        ids = ids[:, :max(n, 1)]
        cast = oc.transformer.get_cast_dtype()
        x = oc.token_embedding(ids).to(cast) + oc.positional_embedding[:ids.shape[1]].to(cast)
        x = oc.transformer(x, attn_mask=oc.attn_mask[:ids.shape[1], :ids.shape[1]])
        x = text_global_pool(oc.ln_final(x), ids, oc.text_pool_type, eos_token_id=getattr(oc, "text_eos_id", None))
        proj = oc.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1)
    return encode


def texts_cut(model, texts: list[str]) -> int:
    """How many of ``texts`` the tokenizer cuts at the text tower's context (``model.text.long_captions:
    truncate``; ``stretch`` lengthens the context, mmfm.models.long_text)."""
    tok = getattr(model, "tokenizer", None)
    n = getattr(tok, "context_length", None)
    if not texts or tok is None or not n:
        return 0
    cut = 0
    for s in range(0, len(texts), 1024):
        mask = tok(list(texts[s:s + 1024]), context_length=n + 1).get("attention_mask")
        if mask is None:
            return 0
        cut += int((mask.sum(1) > n).sum())
    return cut


def long_caption_note(model, texts: list[str]) -> dict:
    """``{"long_captions": policy, "texts_cut": n}`` for a result's meta."""
    text_cfg = getattr(getattr(model, "model_cfg", None), "text", None)
    return {"long_captions": getattr(text_cfg, "long_captions", "truncate"), "texts_cut": texts_cut(model, texts)}


def encode_texts(model, texts: list[str], *, batch_size: int = 256, precision: str = "auto",
                 progress: bool = False, desc: str = "texts"):
    """L2-normalised text embeddings (N, D), float32 on the CPU.

    Prompts are batched by token length (then put back in order), so each batch carries little padding
    for text towers that skip it (mmfm's own towers trim trailing padding; open_clip CLIPs go through
    ``_trimmed_openclip_text``)."""
    import torch
    from tqdm.auto import tqdm
    if not texts:
        return torch.zeros(0, 0)
    device = model_device(model)
    tok = model.tokenizer(list(texts))
    ids_all, mask_all = tok["text_ids"], tok.get("attention_mask")
    order = torch.argsort(mask_all.sum(1), stable=True) if mask_all is not None else torch.arange(len(texts))
    trimmed = _trimmed_openclip_text(model) if mask_all is not None else None
    out = torch.empty(0)
    with torch.inference_mode(), autocast(device, precision):
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[s:s + batch_size]
            ids = ids_all[idx].to(device, non_blocking=True)
            mask = mask_all[idx].to(device, non_blocking=True) if mask_all is not None else None
            if trimmed is not None:
                feats = trimmed(ids, mask)
            else:
                feats = model.encode_text(ids, attention_mask=mask, normalize=True)
            feats = feats.float().cpu()
            if out.numel() == 0:
                out = torch.empty(len(texts), feats.shape[1])
            out[idx] = feats
    return out


def logit_scale(model) -> float:
    """exp(logit_scale) of a CLIP model (stored as a log), capped at 100 as in training."""
    import math
    ls = getattr(model, "logit_scale", None)
    if ls is None:
        return 100.0
    v = float(ls.detach().float().reshape(-1)[0]) if hasattr(ls, "detach") else float(ls)
    return min(math.exp(v), 100.0)
