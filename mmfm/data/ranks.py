"""This process's place among the torch.distributed ranks, and the one object all-gather.

Both work with or without a process group (rank 0 of 1, ``[obj]``), so single-process code, the loaders, the
losses, the in-training evaluation and the trainer ask the same question the same way. It sits in ``mmfm.data``,
the lowest package that needs it (the loaders split shards by rank).
"""
from __future__ import annotations

__all__ = ["all_gather_object", "distributed", "rank_world"]


def distributed() -> bool:
    """Whether a torch.distributed process group is up in this process."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def rank_world(world=None) -> tuple[int, int]:
    """``(rank, world_size)``: from ``world`` when given (a world size, meaning rank 0, or a ``(rank, world)``
    pair), else from the process group, else ``(0, 1)``."""
    if world is not None:
        if isinstance(world, int):
            return 0, world
        return int(world[0]), int(world[1])
    if distributed():
        import torch.distributed as dist
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj`` (CPU tensors, numpy, lists, dicts), in rank order; ``[obj]`` without a
    process group or with one rank."""
    rank, world = rank_world()
    if world == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
