"""The one device helper: which device a command runs on, and where a model's weights are."""
from __future__ import annotations

import torch

__all__ = ["resolve_device", "model_device"]


def resolve_device(device: str | None = None, local_rank: int = 0) -> str:
    """``None``/``""``/``"auto"`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; anything else as
    given."""
    if device in (None, "", "auto"):
        return f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    return str(device)


def model_device(model) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
