"""``train.strategy: fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) for the one trainer.

* :func:`shard` applies ``fully_shard`` to every block of every tower (the members of each list of like
  modules: timm's ``blocks`` / ConvNeXt ``stages``, open_clip's ``resblocks``, transformers' ``layer`` / ``h``),
  then to the whole model. Each rank keeps 1/N of every parameter, gradient and AdamW moment; a block's full
  weights exist only around its forward and backward. bf16 (or fp16) mixed precision on CUDA goes through
  FSDP's ``MixedPrecisionPolicy`` (parameters all-gathered in that dtype, gradients reduced in fp32).
* FSDP2 cannot shard 0-dim parameters (CLIP's ``logit_scale`` / ``logit_bias``): they stay replicated on every
  rank, and :func:`average_replicated_grads` averages their gradients (one all-reduce), as DDP would.
* Checkpoints: :func:`save_sharded` / :func:`load_sharded` write and read ``CKPT/sharded/`` with
  ``torch.distributed.checkpoint`` (model and optimizer, each rank its own shards; exact resume);
  ``mmfm.models.checkpoint`` reads the model back in one process for ``mmfm.load``, export and evaluation.
* Evaluation (:func:`full_weights`): hooks and validation run a different number of forwards on each rank, so
  every block is all-gathered once up front and kept whole until the evaluation ends (no collective per forward).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from mmfm.data.ranks import rank_world
from mmfm.models.layout import SHARDED


def blocks(module: nn.Module, _seen: set | None = None) -> list[nn.Module]:
    """The repeated blocks of ``module``: members of every ``ModuleList``/``Sequential`` of two or more modules
    of one class holding parameters (not searched inside a block already found; a module reached twice, as
    through a wrapper that keeps both a task and its model, counts once)."""
    seen = set() if _seen is None else _seen
    found: list[nn.Module] = []
    for child in module.children():
        if id(child) in seen:
            continue
        seen.add(id(child))
        kids = list(child.children()) if isinstance(child, (nn.ModuleList, nn.Sequential)) else []
        if len(kids) >= 2 and len({type(k) for k in kids}) == 1 and any(True for _ in child.parameters()):
            found.extend(k for k in kids if id(k) not in seen)
            seen.update(id(k) for k in kids)
        else:
            found.extend(blocks(child, seen))
    return found


def shard(root: nn.Module, device: torch.device, param_dtype: torch.dtype | None) -> list[nn.Parameter]:
    """FSDP2 over ``root`` (in place): each block, then the whole. Returns the replicated (0-dim) parameters,
    whose gradients :func:`average_replicated_grads` must average after backward."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    replicated = [p for p in root.parameters() if p.ndim == 0]
    kw = {}
    if param_dtype is not None and device.type == "cuda":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    ignored = set(replicated)
    for block in blocks(root):
        fully_shard(block, ignored_params=ignored, **kw)
    fully_shard(root, ignored_params=ignored, **kw)
    return replicated


def average_replicated_grads(params: list[nn.Parameter]) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    world = rank_world()[1]
    if grads and world > 1:
        flat = torch.stack([g.reshape(()) for g in grads])
        dist.all_reduce(flat)
        for g, v in zip(grads, (flat / world).unbind()):
            g.copy_(v)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded (DTensor) and replicated gradients: the norm of the full gradient."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if hasattr(g, "full_tensor")]
    plain = [g for g in grads if not hasattr(g, "full_tensor")]
    parts = []
    if sharded:
        norm = torch.nn.utils.get_total_norm(sharded)
        parts.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if plain:
        parts.append(torch.nn.utils.get_total_norm(plain))
    total = torch.linalg.vector_norm(torch.stack([p.float() for p in parts])) if parts else torch.zeros(())
    torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, total)
    return total


class GradScaler(torch.amp.GradScaler):
    """torch.amp.GradScaler for FSDP2 models with replicated parameters beside the sharded ones.

    torch unscales one device's gradients in one ``_amp_foreach_non_finite_check_and_unscale_`` call, which cannot
    take DTensors and plain tensors together; here the two kinds are unscaled in turn into the same ``found_inf``
    (the DTensor call already reduces it over the ranks, the replicated gradients are equal on every rank), so
    every rank skips the same steps."""

    def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16):
        out = {}
        for sharded in (True, False):
            params = [p for g in optimizer.param_groups for p in g["params"] if hasattr(p, "to_local") == sharded]
            if params:
                out.update(super()._unscale_grads_(_Params(params), inv_scale, found_inf, allow_fp16))
        return out


class _Params:
    """What GradScaler._unscale_grads_ reads of an optimizer: its param groups."""

    def __init__(self, params):
        self.param_groups = [{"params": params}]


def _fsdp_modules(root: nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule
    return [m for m in root.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_weights(root: nn.Module):
    """Collective: every FSDP module all-gathers its weights once and keeps them whole until the block ends, so the
    ranks may run different numbers of forwards (evaluation). Run the work inside the root module's forward, so
    that FSDP's root bookkeeping comes first (also before the first training step)."""
    mods = _fsdp_modules(root)
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        for m in mods:
            m.unshard()
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(m is not root, recurse=False)   # the root stays whole after forward


def save_sharded(ckpt: Path, root: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: every rank writes its shards of ``model`` (the saved model, inside the FSDP ``root``) and of the
    optimizer (its state named by ``root``'s parameter names) into ``ckpt/sharded``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = {"model": model.state_dict(), "optimizer": get_optimizer_state_dict(root, optimizer)}
    dcp.save(state, checkpoint_id=str(ckpt / SHARDED))


def load_sharded(ckpt: Path, root: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: each rank reads its shards of ``model`` and of the optimizer from ``ckpt/sharded``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_optimizer_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)

    state = {"model": model.state_dict(), "optimizer": get_optimizer_state_dict(root, optimizer)}
    dcp.load(state, checkpoint_id=str(ckpt / SHARDED))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(root, optimizer, state["optimizer"])
