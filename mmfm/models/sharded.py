"""Sharded checkpoints (``train.strategy: fsdp``), read as one full state dict in a single process.

A sharded checkpoint folder holds ``sharded/`` (written by ``torch.distributed.checkpoint``: one ``__R_0.distcp``
file per rank and ``.metadata``) in place of ``model.safetensors``, next to the usual ``config.yaml`` and
``meta.json``. Its ``model.*`` entries are the model's tensors (the trainer adds ``optimizer.*``). Reading needs no
process group and no GPU: DCP fills full-size CPU tensors shaped from its own metadata, whatever the number of
ranks that wrote it. :func:`consolidate` turns the folder into an ordinary one (a single ``model.safetensors``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mmfm.config import ConfigError, atomic_path

from .layout import SHARDED, WEIGHTS, is_sharded_dir

_PREFIX = "model."


def read_sharded(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model tensors of the sharded checkpoint folder ``path`` as full CPU tensors (FQN -> tensor)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    where = Path(path) / SHARDED
    try:
        meta = dcp.FileSystemReader(str(where)).read_metadata()
        entries = {k: m for k, m in meta.state_dict_metadata.items()
                   if k.startswith(_PREFIX) and isinstance(m, TensorStorageMetadata)}
        model = {k[len(_PREFIX):]: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in entries.items()}
        if not model:
            raise ConfigError(f"{where}: holds no model tensors (keys 'model.*')")
        dcp.load({"model": model}, checkpoint_id=str(where), no_dist=True)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a missing rank file, a truncated shard, a foreign folder
        raise ConfigError(f"cannot read the sharded checkpoint {where}: {e}") from e
    return model


def consolidate(path: str | os.PathLike, weights_name: str = WEIGHTS) -> Path:
    """Write the sharded checkpoint folder's model as one ``model.safetensors`` in that folder (write, then
    rename), so that any reader of ordinary checkpoints (export, evaluation, other tools) can use it."""
    from safetensors.torch import save_file

    d = Path(path)
    if not is_sharded_dir(d):
        raise ConfigError(f"{d}: not a sharded checkpoint (no {SHARDED}/.metadata)")
    target = d / weights_name
    with atomic_path(target) as tmp:
        save_file({k: v.contiguous() for k, v in read_sharded(d).items()}, str(tmp), metadata={"format": "pt"})
    return target
