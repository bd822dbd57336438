"""``hf`` export: a folder that open_clip's or transformers' own loaders open, where the architecture exists there.

Covered (anything else is refused with the reason):

=================================================  ==============================================================
mmfm model                                         folder opens with
=================================================  ==============================================================
CLIP from an open_clip architecture                ``open_clip.create_model_and_transforms("local-dir:OUT")``
(``model.openclip: ViT-B-32`` / ``openclip:...``)  (open_clip_config.json + open_clip_model.safetensors)
mmfm CLIP: timm vision + open_clip text tower      the same (open_clip CustomTextCLIP with a timm vision tower);
                                                   a timm tower with ``timm_kwargs`` / another image size is
                                                   described by ``OUT/timm_vision/config.json`` (timm's own
                                                   format) that open_clip reaches by absolute path
mmfm CLIP: timm vision + transformers text tower   the same, text tower = open_clip ``HFTextEncoder`` (mean
(``text.type: hf``, ``pooling: mean``)             pooling, linear projection) over ``OUT/hf_text/`` (its
                                                   config + tokenizer), reached by absolute path
captioner, vision width == decoder width          ``transformers.VisionEncoderDecoderModel.from_pretrained(OUT)``
(no projection between the towers)                 (encoder = transformers' TimmWrapperModel over the timm trunk,
                                                   decoder = the AutoModelForCausalLM with cross-attention;
                                                   generation_config.json holds the checkpoint's decoding
                                                   settings, decoder_start_token_id = bos)
captioner with a projection (Linear + LayerNorm)   ``OUT/decoder``: ``AutoModelForCausalLM.from_pretrained``;
                                                   ``OUT/vision_encoder``: ``timm.create_model("local-dir:...")``
                                                   or ``transformers.AutoModel``; the projection in
                                                   ``image_projection.safetensors`` (no single
                                                   VisionEncoderDecoderModel: its enc_to_dec_proj is a bare Linear)
=================================================  ==============================================================

Refused: CLIP text towers with cls/eos pooling (open_clip's HF poolers differ), and anything that is not a
CLIP or captioner. Tokenizers: a transformers tokenizer is saved with the model; open_clip's BPE is named in
mmfm_export.json (``open_clip.get_tokenizer`` reads it). open_clip's eval transform has no crop_pct, so a timm
tower with crop_pct < 1 preprocesses slightly differently there (the weights and embeddings are identical).

``mmfm_export.json`` records what was written, whether the folder is portable (no absolute paths inside), and
the parity figure checked right after writing (the target library's outputs vs mmfm's on fresh inputs).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from mmfm.config import ConfigError

__all__ = ["export_hf", "openclip_config_for"]

OPENCLIP_CONFIG, OPENCLIP_WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"


# ----------------------------------------------------------------------------- CLIP -> open_clip
def _openclip_preprocess(preprocess: dict) -> dict:
    size = preprocess.get("input_size", (3, 224, 224))
    mode = {"center": "shortest", "squash": "squash", "border": "longest"}.get(preprocess.get("crop_mode"), "shortest")
    return {"size": [int(size[1]), int(size[2])], "mean": list(preprocess.get("mean")),
            "std": list(preprocess.get("std")), "interpolation": preprocess.get("interpolation") or "bicubic",
            "resize_mode": mode}


def _timm_default_size(trunk: nn.Module) -> tuple[int, int] | None:
    cfg = getattr(trunk, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return (int(size[1]), int(size[2])) if size else None


def _vision_cfg(model, out: Path) -> tuple[dict, bool]:
    """open_clip vision_cfg for mmfm's TimmVisionTower (+ a timm config folder when timm needs its kwargs)."""
    v = model.model_cfg.vision
    trunk = model.visual.trunk
    size = tuple(model.preprocess["input_size"][1:])
    cfg = {"image_size": list(size), "timm_pool": "", "timm_proj": "linear", "timm_proj_bias": False,
           "timm_model_pretrained": False, "timm_drop": 0.0}
    if not v.timm_kwargs and _timm_default_size(trunk) == size:
        cfg["timm_model_name"] = v.timm_model
        return cfg, True
    from timm.models._hub import save_config_for_hf
    folder = out / "timm_vision"
    folder.mkdir()
    save_config_for_hf(trunk, str(folder / "config.json"))
    cfg["timm_model_name"] = f"local-dir:{_final(out) / 'timm_vision'}"
    return cfg, False


def _text_cfg(model, out: Path) -> tuple[dict, bool]:
    from mmfm.models.text import HFTextTower, OpenCLIPTextTower

    t, text = model.model_cfg.text, model.text
    if isinstance(text, OpenCLIPTextTower):
        return {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio}, True
    if isinstance(text, HFTextTower):
        if text.pooling != "mean":
            raise ConfigError(f"hf export: the text tower pools by '{text.pooling}'; open_clip's HFTextEncoder "
                              f"only matches mmfm for pooling 'mean'. Use --format onnx or safetensors.")
        folder = out / "hf_text"
        text.transformer.config.save_pretrained(folder)
        tok = getattr(model.tokenizer, "_tok", None) or getattr(model.tokenizer, "tokenizer", None)
        if tok is not None and hasattr(tok, "save_pretrained"):
            tok.save_pretrained(folder)
        path = str(_final(out) / "hf_text")
        return {"hf_model_name": path, "hf_tokenizer_name": path, "hf_model_pretrained": False,
                "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler",
                "context_length": t.context_length}, False
    raise ConfigError(f"hf export: no open_clip equivalent for text tower {type(text).__name__}")


def _native_state_dict(model) -> dict[str, torch.Tensor]:
    """mmfm CLIP keys -> open_clip CustomTextCLIP keys (visual.trunk.* and text.* keep their names)."""
    from mmfm.models.checkpoint import state_dict_to_save

    out = {}
    for k, v in state_dict_to_save(model).items():
        if k == "image_proj.weight":
            k = "visual.head.proj.weight"
        out[k] = v                                 # text.* (the HF text tower's proj included) keeps its name
    return out


def openclip_config_for(model, out: Path) -> tuple[dict, dict[str, torch.Tensor], bool]:
    """(open_clip_config.json content, open_clip state dict, portable) for a CLIP model."""
    from mmfm.models.clip import CLIP
    from mmfm.models.checkpoint import state_dict_to_save
    from mmfm.models.openclip import OpenCLIPModel

    if isinstance(model, OpenCLIPModel):
        import open_clip
        from open_clip.model import get_model_preprocess_cfg
        cfg = open_clip.get_model_config(model.model_name)
        if cfg is None:
            raise ConfigError(f"hf export: open_clip has no config for '{model.model_name}'")
        pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in get_model_preprocess_cfg(model.model).items()}
        return {"model_cfg": cfg, "preprocess_cfg": pp}, state_dict_to_save(model.model), True
    if not isinstance(model, CLIP):
        raise ConfigError(f"hf export: {type(model).__name__} is not an mmfm CLIP")
    vision, v_portable = _vision_cfg(model, out)
    text, t_portable = _text_cfg(model, out)
    cfg = {"embed_dim": model.embed_dim, "custom_text": True, "vision_cfg": vision, "text_cfg": text}
    if model.logit_bias is not None:
        cfg["init_logit_bias"] = float(model.logit_bias.detach())
    return ({"model_cfg": cfg, "preprocess_cfg": _openclip_preprocess(model.preprocess)},
            _native_state_dict(model), v_portable and t_portable)


_FINAL: dict[str, Path] = {}


def _final(tmp: Path) -> Path:
    """The folder's final path (configs that must name absolute paths point there, not at the temp dir)."""
    return _FINAL[str(tmp)]


def _check_openclip(model, folder: Path) -> float:
    import open_clip

    oc = open_clip.create_model(f"local-dir:{folder}")
    oc.eval()
    g = torch.Generator().manual_seed(0)
    size = tuple(model.preprocess["input_size"])
    image = torch.randn(2, *size, generator=g)
    tok = model.tokenizer(["a red circle", "two dogs playing in the snow"])
    with torch.no_grad():
        a = torch.cat([oc.encode_image(image, normalize=True), oc.encode_text(tok["text_ids"], normalize=True)])
        b = torch.cat([model.encode_image(image, normalize=True),
                       model.encode_text(tok["text_ids"], tok["attention_mask"], normalize=True)])
    return float((a - b).abs().max())


def _export_clip(model, tmp: Path) -> dict:
    from safetensors.torch import save_file

    cfg, sd, portable = openclip_config_for(model, tmp)
    (tmp / OPENCLIP_CONFIG).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    save_file(sd, str(tmp / OPENCLIP_WEIGHTS), metadata={"format": "pt"})
    return {"kind": "clip", "loader": "open_clip.create_model_and_transforms('local-dir:FOLDER')",
            "files": [OPENCLIP_CONFIG, OPENCLIP_WEIGHTS], "portable": portable}


# ----------------------------------------------------------------------------- captioner -> transformers
def _save_timm_for_transformers(trunk: nn.Module, folder: Path) -> None:
    """timm's own HF layout, adjusted so transformers' TimmWrapperModel opens it too (it sets num_classes
    itself, and VisionEncoderDecoderModel reads ``hidden_size``)."""
    from timm.models import save_for_hf

    save_for_hf(trunk, str(folder))
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg.get("model_args", {}).pop("num_classes", None)
    cfg["hidden_size"] = int(trunk.num_features)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def _hf_tokenizer(model):
    inner = getattr(model.tokenizer, "tokenizer", None)
    return inner if inner is not None and hasattr(inner, "save_pretrained") else None


def _generation_config(model):
    from transformers import GenerationConfig

    tok = model.tokenizer
    from mmfm.generate import generation_kwargs, stored_generate
    gen = stored_generate(model, default=None)
    kw = generation_kwargs(gen) if gen is not None else {}
    return GenerationConfig(decoder_start_token_id=tok.bos_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)


def _check_ved(model, folder: Path) -> float:
    from transformers import VisionEncoderDecoderModel

    ved = VisionEncoderDecoderModel.from_pretrained(str(folder)).eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, *tuple(model.preprocess["input_size"]), generator=g)
    ids = torch.randint(3, model.vocab_size - 1, (2, 6), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    with torch.no_grad():
        a = ved(pixel_values=image, decoder_input_ids=ids).logits
        b = model(image=image, text_ids=ids, attention_mask=torch.ones_like(ids))["logits"]
    return float((a - b).abs().max())


def _check_parts(model, folder: Path) -> float:
    """Decoder (AutoModelForCausalLM) + timm encoder + the saved projection == the mmfm captioner."""
    import timm
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    dec = AutoModelForCausalLM.from_pretrained(str(folder / "decoder")).eval()
    enc = timm.create_model(f"local-dir:{folder / 'vision_encoder'}", pretrained=True, num_classes=0).eval()
    proj = model.proj.__class__(*[type(m)(*_shape_args(m)) for m in model.proj])
    proj.load_state_dict(load_file(str(folder / "image_projection.safetensors")))
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, *tuple(model.preprocess["input_size"]), generator=g)
    ids = torch.randint(3, model.vocab_size - 1, (2, 6), generator=g)
    with torch.no_grad():
        a = dec(input_ids=ids, encoder_hidden_states=proj(enc.forward_features(image))).logits
        b = model(image=image, text_ids=ids, attention_mask=torch.ones_like(ids))["logits"]
    return float((a - b).abs().max())


def _shape_args(m: nn.Module) -> tuple:
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, nn.LayerNorm):
        return tuple(m.normalized_shape)
    raise ConfigError(f"hf export: unexpected projection layer {type(m).__name__}")


def _export_captioner(model, tmp: Path) -> dict:
    from transformers import VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    decoder = getattr(model, "decoder", None)
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if decoder is None or not hasattr(decoder, "save_pretrained") or trunk is None:
        raise ConfigError(f"hf export: {type(model).__name__} is not an mmfm captioner (timm .visual + "
                          f"transformers .decoder)")
    tok = _hf_tokenizer(model)
    tokenizer_note = ("saved with the model" if tok is not None else
                      f"{model.tokenizer.name}: not a transformers tokenizer; use open_clip.get_tokenizer / "
                      f"mmfm's tokenizer")
    if isinstance(getattr(model, "proj", None), nn.Identity):
        enc_dir = tmp / ".encoder"
        _save_timm_for_transformers(trunk, enc_dir)
        from transformers import AutoModel
        encoder = AutoModel.from_pretrained(str(enc_dir))
        config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder.config, decoder.config)
        ved = VisionEncoderDecoderModel(config=config, encoder=encoder, decoder=decoder)
        ved.config.decoder_start_token_id = model.tokenizer.bos_token_id
        ved.config.pad_token_id = model.tokenizer.pad_token_id
        ved.generation_config = _generation_config(model)
        ved.save_pretrained(str(tmp))
        shutil.rmtree(enc_dir)
        if tok is not None:
            tok.save_pretrained(str(tmp))
        return {"kind": "captioner", "loader": "transformers.VisionEncoderDecoderModel.from_pretrained(FOLDER)",
                "files": sorted(p.name for p in tmp.iterdir()), "portable": True, "tokenizer": tokenizer_note,
                "prompt": model.prompt or "",
                "note": "decoder_input_ids start with the bos token (decoder_start_token_id)"
                        + (f" followed by the prompt {model.prompt!r}" if model.prompt else "")}
    # a projection (Linear + LayerNorm) between the towers: VisionEncoderDecoderModel has only a Linear
    from safetensors.torch import save_file

    decoder.save_pretrained(str(tmp / "decoder"))
    if tok is not None:
        tok.save_pretrained(str(tmp / "decoder"))
    _save_timm_for_transformers(trunk, tmp / "vision_encoder")
    save_file({k: v.contiguous() for k, v in model.proj.state_dict().items()}, str(tmp / "image_projection.safetensors"))
    return {"kind": "captioner", "portable": True, "tokenizer": tokenizer_note,
            "loader": "transformers.AutoModelForCausalLM.from_pretrained('FOLDER/decoder') (cross-attends to "
                      "encoder_hidden_states); timm.create_model('local-dir:FOLDER/vision_encoder') or "
                      "transformers.AutoModel (TimmWrapperModel)",
            "files": ["decoder/", "vision_encoder/", "image_projection.safetensors"],
            "not_covered": "a single VisionEncoderDecoderModel: this captioner projects image tokens with "
                           "Linear + LayerNorm (vision width != decoder width), which VisionEncoderDecoderModel "
                           "cannot express (its enc_to_dec_proj is a bare Linear). image_projection.safetensors "
                           "holds it (keys 0.* = Linear, 1.* = LayerNorm)."}


# ----------------------------------------------------------------------------- entry
def export_hf(model: nn.Module, out_dir: str | os.PathLike, *, source: str | None = None, check: bool = True) -> dict:
    from mmfm.models.layout import atomic_dir

    from .onnx import model_kind

    from mmfm.data import fs
    if fs.is_remote(out_dir):
        raise ConfigError(f"--out {out_dir}: the hf export writes a local folder (it reloads it to check); "
                          "export locally, then copy the folder")
    out = Path(out_dir).resolve()
    kind = model_kind(model)
    info: dict = {}

    def fill(tmp: Path) -> None:
        _FINAL[str(tmp)] = out
        try:
            info.update(_export_clip(model, tmp) if kind == "clip" else _export_captioner(model, tmp))
        finally:
            _FINAL.pop(str(tmp), None)
        from mmfm.version import __version__
        info.update({"format": "mmfm-hf-export/1", "mmfm_version": __version__, "source": source})
        (tmp / "mmfm_export.json").write_text(json.dumps(info, indent=2), encoding="utf-8")

    atomic_dir(out, fill)
    if check:
        try:
            model = model.float().eval().cpu()
            diff = (_check_openclip(model, out) if kind == "clip" else
                    _check_ved(model, out) if (out / "config.json").is_file() else _check_parts(model, out))
        except Exception:
            shutil.rmtree(out, ignore_errors=True)
            raise
        info["parity_max_abs_diff"] = diff
        (out / "mmfm_export.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        if not diff <= 1e-4:
            raise ConfigError(f"hf export: the exported model's outputs differ from mmfm's by {diff:.3g} (> 1e-4); "
                              f"the folder {out} is kept for inspection")
    return info
