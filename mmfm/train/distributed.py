"""Process group setup for torchrun (gloo on CPU, nccl on CUDA) and the few collectives the trainer uses.

``init_distributed()`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT or a
rendezvous endpoint), so ``mmfm train`` runs unchanged under ``torchrun --nnodes N --nproc_per_node M``.
Every collective has a bounded timeout: a rank that dies makes the others fail, not hang.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mmfm.data.ranks import all_gather_object, distributed, rank_world

__all__ = ["DistInfo", "all_gather_object", "all_reduce", "any_flags", "barrier", "cleanup", "init_distributed",
           "rank_world"]

_HOST_GROUP: list = []      # the gloo group for host-side flags when the default group is nccl (made once)
_TIMEOUT: list = []         # the bound given to init_distributed, for that group too


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _pick_device(local_rank: int, device: str | None) -> torch.device:
    from mmfm.models.device import resolve_device
    return torch.device(resolve_device(device, local_rank))


def init_distributed(timeout_minutes: float = 30.0, device: str | None = None) -> DistInfo:
    """Join the torchrun process group if there is one (idempotent). Returns rank/world/device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(local_rank, device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes), **kw)
        _TIMEOUT[:] = [datetime.timedelta(minutes=timeout_minutes)]
    return DistInfo(*rank_world(), local_rank, dev, dist.get_backend())


def barrier() -> None:
    if distributed():
        dist.barrier()


def all_reduce(t: torch.Tensor, op: str = "mean") -> torch.Tensor:
    """In-place all-reduce (``mean``, ``sum`` or ``max``); a no-op without a process group."""
    if rank_world()[1] == 1:
        return t
    red = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    dist.all_reduce(t, op=red)
    if op == "mean":
        t /= rank_world()[1]
    return t


def _host_group():
    if dist.get_backend() == "gloo":
        return None                                   # the default group already works on CPU tensors
    if not _HOST_GROUP:                               # collective: every rank reaches the first call together
        _HOST_GROUP.append(dist.new_group(backend="gloo", timeout=(_TIMEOUT or [None])[0]))
    return _HOST_GROUP[0]


def any_flags(flags: list[bool]) -> list[bool]:
    """For each flag, whether it is set on any rank: one all-reduce of a CPU tensor (gloo, also under nccl),
    so it never waits for the GPU. Without a process group, ``flags`` as they are."""
    if rank_world()[1] == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_host_group())
    return [bool(v) for v in t.tolist()]


def cleanup() -> None:
    _HOST_GROUP.clear()
    if distributed():
        dist.destroy_process_group()
