"""Export checkpoints for other runtimes: ``export(model_path, format, out)``.

Formats:

* ``safetensors``: ``model.safetensors`` + ``config.json`` (model config, preprocessing, tokenizer);
  ``mmfm.load(OUT)`` reads it back identically (``mmfm.models.checkpoint.export_pretrained``).
* ``onnx``: CLIP image and text towers as two graphs, captioners as vision encoder + decoder; each
  graph is checked against PyTorch in onnxruntime right after export (``mmfm.export.onnx``).
* ``hf``: a folder open_clip's / transformers' own loaders open (``mmfm.export.hf`` lists the combinations).
* ``openclip``: a weights file ``open_clip.create_model(ARCH, pretrained=FILE)`` loads, with ``ARCH.json``;
  ``transformers``: a ``CLIPModel`` / ``SiglipModel.from_pretrained`` folder (``mmfm.export.library``).
* ``--wise-ft ALPHA`` (any format): the run's weights interpolated with its initial ones (WiSE-FT).
* ``int8``: dynamic int8 quantization of the Linear layers for CPU inference, saved as safetensors
  (``mmfm.export.int8``); ``mmfm.load(OUT)`` reads it.
"""
from __future__ import annotations

import os
from pathlib import Path

from mmfm.config import ConfigError

__all__ = ["export", "FORMATS"]

FORMATS = ("onnx", "safetensors", "hf", "openclip", "transformers", "int8")


def export(model_path, format: str, out: str | os.PathLike, wise_ft: float | None = None, **options) -> dict:
    """Export the checkpoint at ``model_path`` (anything ``mmfm.load`` accepts, or a loaded model) as ``format``
    into the folder ``out`` (written atomically). ``wise_ft``: export the run's WiSE-FT weights for that alpha
    instead (``mmfm.models.wiseft``; the run must record train.init_from). Returns a summary dict."""
    if format not in FORMATS:
        import difflib
        close = difflib.get_close_matches(str(format), FORMATS, n=1)
        raise ConfigError(f"export format {format!r} is not one of {', '.join(FORMATS)}."
                          + (f" Did you mean '{close[0]}'?" if close else ""))
    if wise_ft is not None:
        from mmfm.models.wiseft import wise_ft as interpolated
        model = interpolated(model_path, wise_ft)
        return {**export(model, format, out, **options), "wise_ft": model.checkpoint_meta["wise_ft"]}
    source = None if hasattr(model_path, "parameters") else str(model_path)
    if format == "int8":
        from .int8 import save_quantized
        return save_quantized(model_path, out, **options)
    if source is not None:
        from mmfm.models.checkpoint import load
        model = load(source)
    else:
        model = model_path
    if format == "safetensors":
        from mmfm.models.checkpoint import export_pretrained
        path = export_pretrained(model, out)
        return {"format": "safetensors", "out": str(path), "files": sorted(p.name for p in Path(path).iterdir())}
    if format == "onnx":
        from .onnx import export_onnx
        return export_onnx(model, out, source=source, **options)
    if format in ("openclip", "transformers"):
        from .library import export_openclip, export_transformers
        fn = export_openclip if format == "openclip" else export_transformers
        return fn(model, out, source=source, **options)
    from .hf import export_hf
    return export_hf(model, out, source=source, **options)
