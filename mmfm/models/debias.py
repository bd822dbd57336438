"""Debiasing a CLIP model's text embeddings without training (Chuang et al. 2023, "Debiasing vision-language
models via biased prompts").

* ``orthogonal_projection(A)``: ``P = I - A^T (A A^T)^+ A`` for bias-prompt embeddings ``A`` (m, d), one per row:
  the projection onto the orthogonal complement of their span. Every text embedding ``z`` becomes ``P z``
  (re-normalised when asked for), so it carries no component along any bias prompt.
* ``calibrated_projection(P0, pairs, lam)``: the paper's calibrated matrix
  ``P* = P0 (I + lam/|S| sum_(i,j in S) (z_i - z_j)(z_i - z_j)^T)^-1`` for pairs of prompts that differ only in the
  attribute ("a photo of a male doctor" / "... female doctor"): it pulls each pair's projections together while
  staying close to ``P0``.
* ``attach_debias(model, P)``: the model's ``encode_text`` applies ``P`` from now on (zero-shot classifiers,
  retrieval, the bias report: everything that embeds text goes through it).
* ``attribute_directions(Z, items, k)`` + ``attach_image_debias(model, P)``: the image side. Embeddings of the
  same item in several attribute values (an emoji in its six skin tones) differ only by the attribute, so their
  differences from the item's mean span the attribute's directions in the image space; the top ``k`` principal
  directions of those residuals are projected out of every image embedding. Estimate them on training data only
  (the demo uses the training split's tone variants, never the held-out ones).
* ``save_debias`` / ``read_debias``: ``debias.safetensors`` (the matrix, the prompts in its metadata). The one
  loader (:func:`mmfm.models.checkpoint.load`) attaches a ``debias.safetensors`` found in a checkpoint or export
  folder, so a debiased export stays debiased.

A spec for the commands (``--debias SPEC``) is a ``.safetensors`` file written by ``save_debias``, a text file with
one bias prompt per line, or a JSON ``{"prompts": [...], "pairs": [[a, b], ...], "lambda": 500}``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from mmfm.config import ConfigError, InputError, atomic_write

__all__ = ["DEBIAS_FILE", "orthogonal_projection", "calibrated_projection", "embed_prompts", "attach_debias",
           "attribute_directions", "attach_image_debias",
           "debias_from_spec", "save_debias", "read_debias", "read_debias_spec"]

DEBIAS_FILE = "debias.safetensors"


def orthogonal_projection(A: torch.Tensor) -> torch.Tensor:
    """``I - A^T (A A^T)^+ A``: projects out the span of the rows of ``A`` (m, d); (d, d), float64."""
    A = A.double()
    if A.ndim != 2 or A.shape[0] == 0:
        raise ConfigError(f"debias: need at least one bias embedding (got shape {tuple(A.shape)})")
    return torch.eye(A.shape[1], dtype=torch.float64) - A.T @ torch.linalg.pinv(A @ A.T) @ A


def calibrated_projection(P0: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                          lam: float = 500.0) -> torch.Tensor:
    """Chuang et al.'s calibrated projection: ``P0 (I + lam/|S| sum (z_i - z_j)(z_i - z_j)^T)^-1``."""
    P0 = P0.double()
    if not pairs:
        return P0
    M = torch.zeros_like(P0)
    for zi, zj in pairs:
        d = (zi.double() - zj.double()).reshape(-1, 1)
        M += d @ d.T
    return P0 @ torch.linalg.inv(torch.eye(P0.shape[0], dtype=torch.float64) + lam / len(pairs) * M)


def embed_prompts(model, prompts: list[str]) -> torch.Tensor:
    """Unit text embeddings (n, d) of ``prompts`` with the model's own tokenizer, before any debiasing."""
    encode = getattr(model, "_encode_text_raw", model.encode_text)
    tok = model.tokenizer(list(prompts))
    dev = next(model.parameters()).device
    with torch.inference_mode():
        z = encode(tok["text_ids"].to(dev), attention_mask=tok["attention_mask"].to(dev)
                   if tok.get("attention_mask") is not None else None)
    return F.normalize(z.float().cpu(), dim=-1)


def attach_debias(model, P: torch.Tensor, prompts: list[str] | None = None):
    """From now on ``model.encode_text`` returns ``P z`` (re-normalised when ``normalize=True``)."""
    raw = getattr(model, "_encode_text_raw", None) or model.encode_text
    P = P.float()

    def encode_text(text_ids, attention_mask=None, normalize: bool = False):
        z = raw(text_ids, attention_mask=attention_mask, normalize=False)
        z = z @ P.to(z.device, z.dtype).T
        return F.normalize(z, dim=-1) if normalize else z

    model._encode_text_raw = raw
    model.encode_text = encode_text
    model.debias = {"P": P, "prompts": list(prompts or [])}
    return model


def attribute_directions(Z: torch.Tensor, items: list, k: int) -> tuple[torch.Tensor, list[float]]:
    """The top ``k`` principal directions (k, d) of the within-item residuals ``z - mean(z of the same item)``
    over the items seen at least twice, and each direction's share of the residual variance."""
    by: dict = {}
    for i, it in enumerate(items):
        by.setdefault(it, []).append(i)
    groups = [ix for ix in by.values() if len(ix) > 1]
    if not groups or k < 1:
        raise ConfigError(f"image debias: need items seen in at least two attribute values and k >= 1 "
                          f"(got {len(groups)} such items, k={k})")
    Z = Z.double()
    R = torch.cat([Z[ix] - Z[ix].mean(0, keepdim=True) for ix in groups])
    _, S, Vh = torch.linalg.svd(R, full_matrices=False)
    var = S ** 2 / (S ** 2).sum()
    k = min(k, Vh.shape[0])
    return Vh[:k], [float(v) for v in var[:k]]


def attach_image_debias(model, P: torch.Tensor, info: dict | None = None):
    """From now on ``model.encode_image`` returns ``P z`` (re-normalised when ``normalize=True``)."""
    raw = getattr(model, "_encode_image_raw", None) or model.encode_image
    P = P.float()

    def encode_image(image, normalize: bool = False):
        z = raw(image, normalize=False)
        z = z @ P.to(z.device, z.dtype).T
        return F.normalize(z, dim=-1) if normalize else z

    model._encode_image_raw = raw
    model.encode_image = encode_image
    model.image_debias = {"P": P, **(info or {})}
    return model


def read_debias_spec(path: str | os.PathLike) -> dict:
    """``{"prompts", "pairs", "lambda"}`` from a prompt list (.txt, one per line) or a JSON file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--debias: {p} not found")
    if p.suffix == ".json":
        try:
            spec = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"--debias {p}: not valid JSON ({e})") from None
        if not isinstance(spec, dict) or not spec.get("prompts"):
            raise ConfigError(f"--debias {p}: expected {{\"prompts\": [...], \"pairs\": [[a, b], ...]}}")
        pairs = spec.get("pairs") or []
        if any(len(x) != 2 for x in pairs):
            raise ConfigError(f"--debias {p}: 'pairs' must hold two prompts each")
        return {"prompts": list(spec["prompts"]), "pairs": [tuple(x) for x in pairs],
                "lambda": float(spec.get("lambda", 500.0))}
    prompts = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not prompts:
        raise ConfigError(f"--debias {p}: no prompts")
    return {"prompts": prompts, "pairs": [], "lambda": 0.0}


def debias_from_spec(model, spec: str | os.PathLike):
    """Attach the projection that ``spec`` names (see the module docstring) to ``model``; returns the model."""
    if str(spec).endswith(".safetensors"):
        P, prompts = read_debias(spec)
        return attach_debias(model, P, prompts)
    s = read_debias_spec(spec)
    P = orthogonal_projection(embed_prompts(model, s["prompts"]))
    if s["pairs"]:
        zs = embed_prompts(model, [x for pr in s["pairs"] for x in pr])
        P = calibrated_projection(P, [(zs[2 * i], zs[2 * i + 1]) for i in range(len(s["pairs"]))], s["lambda"])
    return attach_debias(model, P, s["prompts"])


def save_debias(path: str | os.PathLike, P: torch.Tensor, prompts: list[str]) -> Path:
    """``P`` and its prompts as safetensors; ``path`` a folder (writes ``debias.safetensors`` in it) or a file."""
    from safetensors.torch import save

    p = Path(path)
    if p.suffix != ".safetensors":
        p = p / DEBIAS_FILE
    data = save({"P": P.float().contiguous()}, metadata={"prompts": json.dumps(list(prompts))})
    return atomic_write(p, data)


def read_debias(path: str | os.PathLike) -> tuple[torch.Tensor, list[str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("P"), json.loads((f.metadata() or {}).get("prompts", "[]"))
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"{path}: not a debias projection ({e})") from None
