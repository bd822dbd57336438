"""Memoised outputs of a locked (frozen, eval-mode) tower: what a frozen part computes, computed once per input.

LiT trains only the projections on top of locked towers, so a tower's output for a given input never changes
during training. When training sees the same preprocessed inputs again (no random augmentation: every epoch
shows each image and caption exactly as before), :class:`RowMemo` returns the stored output rows and runs the
tower only on the rows it has not seen. Rows are keyed by a hash of their exact bytes, so a changed input is a
new key: the result always equals running the tower (it is never stale), and only the speed depends on repeats.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch

__all__ = ["RowMemo"]


class RowMemo:
    """``memo(rows, keys, compute) -> (B, D)``: row ``i``'s output is the stored one for ``keys[i]`` or comes from
    ``compute(index_tensor)`` (run once on all missing rows). Stores at most ``max_bytes`` of outputs (then it
    keeps what it has and computes the rest), on the CPU."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self.store: dict[bytes, torch.Tensor] = {}
        self.nbytes = 0
        self.hits = self.misses = 0

    @staticmethod
    def key(row: torch.Tensor) -> bytes:
        data = row.detach().contiguous().cpu().numpy().tobytes()
        return hashlib.blake2b(data, digest_size=16, person=str(tuple(row.shape)).encode()[:16]).digest()

    def __call__(self, keys: list[bytes], compute: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device) -> torch.Tensor:
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = compute(torch.tensor(missing, dtype=torch.long, device=device)).detach() if missing else None
        if fresh is not None:
            for j, i in enumerate(missing):
                if self.nbytes >= self.max_bytes:
                    break
                if keys[i] not in self.store:
                    row = fresh[j].cpu().clone()
                    self.store[keys[i]] = row
                    self.nbytes += row.numel() * row.element_size()
        rows: list[torch.Tensor | None] = [None] * len(keys)
        for j, i in enumerate(missing):
            rows[i] = fresh[j]
        for i, k in enumerate(keys):
            if rows[i] is None:
                rows[i] = self.store[k].to(device)
        return torch.stack(rows)
