"""Collate processed samples into a dict batch (docs/architecture.md section 2)."""
from __future__ import annotations

from typing import Any


def collate_dicts(samples: list[dict]) -> dict[str, Any]:
    """Stack tensors (and numbers) key by key; everything else becomes a list. Keys must agree."""
    import torch

    if not samples:
        raise ValueError("collate_dicts: empty batch")
    keys = list(samples[0])
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, bool) or not isinstance(first, (int, float)):
            batch[key] = values
        else:
            batch[key] = torch.tensor(values)
    return batch
