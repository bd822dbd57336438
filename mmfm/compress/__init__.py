"""Compression for CPU inference: dynamic int8 quantization (``mmfm.compress.quantize``) and the
comparison of a compressed model against its original (``mmfm.compress.compare``). Knowledge distillation
is a training task: ``task.name: distill`` (``mmfm.tasks.distill``)."""
from __future__ import annotations

import importlib

_EXPORTS = {"quantize_model": "quantize", "save_quantized": "quantize", "load_quantized": "quantize",
            "load_model": "quantize", "is_quantized_dir": "quantize", "model_size_bytes": "quantize",
            "compare_models": "compare"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
