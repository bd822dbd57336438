"""Export back to where users live: ``openclip`` (a weights file that ``open_clip.create_model(ARCH,
pretrained=FILE)`` loads) and ``transformers`` (a folder that ``CLIPModel`` / ``SiglipModel.from_pretrained``
opens). Both are written atomically and checked right after writing: the target library's embeddings against
mmfm's on fresh inputs (max abs diff <= 1e-5, recorded in ``mmfm_export.json``).

What maps:

* ``openclip``: CLIPs built from an open_clip architecture (``model.openclip`` / ``openclip:...``) and mmfm's
  own CLIP (timm vision tower + open_clip or transformers text tower, as in ``--format hf``). The folder holds
  ``open_clip_model.safetensors``, ``ARCH.json`` (the architecture, for ``open_clip.add_model_config`` when
  open_clip does not know ARCH) and ``open_clip_config.json`` (so ``local-dir:OUT`` opens it too).
* ``transformers``: CLIPs started from a transformers CLIPModel / SiglipModel (``model.source: hf:...``).

Anything else is refused with what does not map (mmfm's timm / open_clip towers have no transformers class;
a transformers CLIP has no open_clip architecture; captioners use ``--format hf``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from mmfm.config import ConfigError

__all__ = ["export_openclip", "export_transformers"]

WEIGHTS = "open_clip_model.safetensors"
TOLERANCE = 1e-5


def _inputs(model) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, *tuple(model.preprocess["input_size"]), generator=g)
    return image, model.tokenizer(["a red circle", "two dogs playing in the snow"])


def _finish(out: Path, info: dict, diff: float, what: str) -> dict:
    info["parity_max_abs_diff"] = diff
    (out / "mmfm_export.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    if not diff <= TOLERANCE:
        raise ConfigError(f"{what} export: {info['loader']} gives embeddings that differ from mmfm's by {diff:.3g} "
                          f"(> {TOLERANCE}); the folder {out} is kept for inspection")
    return info


def _write(out: Path, fill, info: dict, source: str | None) -> None:
    from mmfm.models.layout import atomic_dir
    from mmfm.version import __version__

    def wrapped(tmp: Path) -> None:
        fill(tmp)
        info.update(mmfm_version=__version__, source=source)
        (tmp / "mmfm_export.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")

    atomic_dir(out, wrapped)


def _describe(model) -> str:
    cfg = getattr(model, "model_cfg", None)
    if getattr(cfg, "kind", "clip") == "captioner":
        return "a captioner (use --format hf: transformers VisionEncoderDecoderModel)"
    if getattr(cfg, "openclip", None):
        return f"an open_clip architecture ({cfg.openclip})"
    if getattr(cfg, "source", None):
        return f"a transformers model ({cfg.source})"
    v, t = getattr(cfg, "vision", None), getattr(cfg, "text", None)
    text = f"transformers AutoModel text tower ({t.hf_path})" if getattr(t, "type", "") == "hf" else \
        "open_clip text transformer"
    return f"mmfm's own CLIP: timm vision tower '{getattr(v, 'timm_model', '?')}' + {text}"


# ----------------------------------------------------------------------------- open_clip
def _arch(model, out: Path) -> str:
    from mmfm.models.openclip import OpenCLIPModel
    if isinstance(model, OpenCLIPModel):
        return model.model_name
    return "mmfm-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", out.name)


def export_openclip(model, out_dir: str | os.PathLike, *, source: str | None = None, check: bool = True) -> dict:
    """Write ``OUT/open_clip_model.safetensors`` + ``OUT/ARCH.json``; returns the summary (loader, parity)."""
    from mmfm.models.clip import CLIP
    from mmfm.models.openclip import OpenCLIPModel

    from .hf import _FINAL, openclip_config_for

    if not isinstance(model, (OpenCLIPModel, CLIP)):
        raise ConfigError(f"openclip export: {_describe(model)} has no open_clip architecture; "
                          f"use --format transformers, onnx or safetensors")
    out = Path(out_dir).resolve()
    arch = _arch(model, out)
    info: dict = {"format": "mmfm-openclip-export/1", "kind": "clip", "arch": arch,
                  "loader": f"open_clip.add_model_config('{out / (arch + '.json')}'); "
                            f"open_clip.create_model('{arch}', pretrained='{out / WEIGHTS}')"}

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file
        _FINAL[str(tmp)] = out
        try:
            cfg, sd, portable = openclip_config_for(model, tmp)
        finally:
            _FINAL.pop(str(tmp), None)
        save_file(sd, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / f"{arch}.json").write_text(json.dumps(cfg["model_cfg"], indent=2), encoding="utf-8")
        (tmp / "open_clip_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        info.update(portable=portable, preprocess_cfg=cfg["preprocess_cfg"],
                    files=[WEIGHTS, f"{arch}.json", "open_clip_config.json"])

    _write(out, fill, info, source)
    if not check:
        return info
    import open_clip
    if arch not in open_clip.list_models():
        open_clip.add_model_config(str(out / f"{arch}.json"))
    oc = open_clip.create_model(arch, pretrained=str(out / WEIGHTS), weights_only=True).eval()
    model = model.float().eval().cpu()
    image, tok = _inputs(model)
    with torch.no_grad():
        a = torch.cat([oc.encode_image(image, normalize=True), oc.encode_text(tok["text_ids"], normalize=True)])
        b = torch.cat([model.encode_image(image, normalize=True),
                       model.encode_text(tok["text_ids"], tok["attention_mask"], normalize=True)])
    return _finish(out, info, float((a - b).abs().max()), "openclip")


# ----------------------------------------------------------------------------- transformers
def export_transformers(model, out_dir: str | os.PathLike, *, source: str | None = None,
                        check: bool = True) -> dict:
    """Write a transformers CLIPModel / SiglipModel folder (weights, config, tokenizer, image processor)."""
    from mmfm.models.hf_captioner import HFCaptioner
    from mmfm.models.hf_clip import HF_CLASSES, HFCLIPModel, pooled

    from mmfm.models.prefix_captioner import PrefixCaptioner

    if isinstance(model, PrefixCaptioner):              # the LM of a prefix captioner: mmfm.export.prefix_lm
        from .prefix_lm import export_prefix_lm
        return export_prefix_lm(model, out_dir)
    if isinstance(model, HFCaptioner):                  # an image-to-text model: mmfm.export.hf_captioner
        from .hf_captioner import export_hf_captioner
        return export_hf_captioner(model, out_dir, source=source, check=check, write=_write, finish=_finish)
    if not isinstance(model, HFCLIPModel):
        raise ConfigError(f"transformers export: {_describe(model)} has no transformers CLIPModel / SiglipModel "
                          f"equivalent; only models started from hf:DIR (model.source) map. Use --format openclip "
                          f"or hf (open_clip folder), onnx or safetensors")
    out = Path(out_dir).resolve()
    cls_name = HF_CLASSES[model.kind]
    info: dict = {"format": "mmfm-transformers-export/1", "kind": "clip", "class": cls_name,
                  "loader": f"transformers.{cls_name}.from_pretrained('{out}')"}

    def fill(tmp: Path) -> None:
        model.save_transformers(tmp)
        info["files"] = sorted(p.name for p in tmp.iterdir())

    _write(out, fill, info, source)
    if not check:
        return info
    import transformers
    try:
        ref = getattr(transformers, cls_name).from_pretrained(str(out)).eval()
    except Exception:
        shutil.rmtree(out, ignore_errors=True)
        raise
    model = model.float().eval().cpu()
    image, tok = _inputs(model)
    mask = tok["attention_mask"] if model.uses_attention_mask else None
    with torch.no_grad():
        a = torch.cat([pooled(ref.get_image_features(pixel_values=image)),
                       pooled(ref.get_text_features(input_ids=tok["text_ids"], attention_mask=mask))])
        b = torch.cat([model.encode_image(image), model.encode_text(tok["text_ids"], tok["attention_mask"])])
    return _finish(out, info, float((a - b).abs().max()), "transformers")
