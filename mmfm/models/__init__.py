"""Models: timm vision towers, open_clip / transformers text towers, the CLIP dual encoder, captioners, factories,
the checkpoint layouts (:mod:`mmfm.models.layout`: file names, resolution, config/meta reading; no model code)
and the one loader above them (:mod:`mmfm.models.checkpoint`).

Public API (imported lazily so that ``import mmfm.models`` stays cheap):
``build_model(model_cfg)``, ``get_model_config(name_or_dict)``, ``CLIP``, ``OpenCLIPModel``, ``load``,
``read_config``, ``save_pretrained``, ``export_pretrained``, ``load_weights``, ``is_clip_model``.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_model": "factory", "get_model_config": "factory", "build_text_tokenizer": "factory",
    "is_clip_model": "factory",
    "CLIP": "clip", "ClipApiMixin": "clip",
    "TimmVisionTower": "towers", "OpenCLIPTextTower": "text", "HFTextTower": "text",
    "OpenCLIPModel": "openclip",
    "load": "checkpoint", "save_pretrained": "checkpoint", "write_pretrained": "checkpoint",
    "export_pretrained": "checkpoint", "load_weights": "checkpoint",
    "read_config": "layout", "resolve_checkpoint": "layout", "CheckpointMismatchError": "layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
