"""``mmfm export --format int8``: dynamic int8 quantization of a checkpoint, saved as safetensors.

The int8 structure and its (de)serialisation live in :mod:`mmfm.models.quantized`; ``mmfm.load(OUT)`` (the one
checkpoint loader, :func:`mmfm.models.checkpoint.load`) reads the folder back.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from torch import nn

from mmfm.config import ConfigError, ExperimentConfig, save_config
from mmfm.config.model import ModelConfig
from mmfm.models.checkpoint import checkpoint_meta, load
from mmfm.models.layout import CONFIG_YAML, META, QUANT_FORMAT, QUANT_WEIGHTS, atomic_dir, read_config
from mmfm.models.quantized import quantize_model, quantized_state_dict

__all__ = ["save_quantized"]


def save_quantized(model_or_path, out_dir: str | os.PathLike, dtype: str = "qint8") -> dict:
    """Quantize a checkpoint (anything ``mmfm.load`` accepts, or a loaded model) into ``out_dir``, atomically."""
    from safetensors.torch import save_file

    if isinstance(model_or_path, nn.Module):
        model, source = model_or_path, getattr(model_or_path, "checkpoint_path", None)
    else:
        source = str(model_or_path)
        model = load(source)
    cfg = None
    if source and not source.startswith(("openclip:", "hf:")):
        try:
            cfg = read_config(source)
        except ConfigError:
            cfg = None
    mc = getattr(model, "model_cfg", None)
    if cfg is not None and isinstance(mc, ModelConfig):
        cfg = dataclasses.replace(cfg, model=mc)      # the model as loaded (a LoRA run comes merged: no model.lora)
    if cfg is None:
        if not isinstance(mc, ModelConfig):
            raise ConfigError(f"int8 export: {type(model).__name__} has no model config to save")
        cfg = ExperimentConfig(model=mc)
    q = quantize_model(model, dtype)
    sd = quantized_state_dict(q)
    meta = dict(getattr(model, "checkpoint_meta", None) or {})
    meta.update(checkpoint_meta(model, {"quantization": {**q.quantization, "source": source}}))

    written: dict = {}

    def fill(tmp: Path) -> None:
        save_file(sd, str(tmp / QUANT_WEIGHTS), metadata={"format": QUANT_FORMAT})
        save_config(cfg, tmp / CONFIG_YAML)
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        written.update(files=sorted(p.name for p in tmp.iterdir()), bytes=(tmp / QUANT_WEIGHTS).stat().st_size)

    out = atomic_dir(out_dir, fill)      # a folder or an fsspec URL
    return {**q.quantization, "format": "int8", "out": str(out), **written}
