"""``build_model(model_cfg)``: a ModelConfig (or a dict, or a named config) -> an nn.Module.

Every model has ``.preprocess`` (timm data config dict), ``.tokenizer`` and ``.model_cfg``.
``kind: clip`` builds :class:`mmfm.models.clip.CLIP` (or the open_clip adapter when ``openclip`` is set, the
transformers CLIPModel / SiglipModel adapter when ``source: hf:...`` is);
``kind: captioner`` is delegated to ``mmfm.models.captioner.build_captioner``.
"""
from __future__ import annotations


from torch import nn

from mmfm.config import ConfigError, from_dict
from mmfm.config.model import ModelConfig, expand_model_dict

__all__ = ["build_model", "get_model_config", "build_text_tokenizer", "is_clip_model"]


def get_model_config(spec: ModelConfig | dict | str | None = None) -> ModelConfig:
    """A ModelConfig from a named config (``"tiny"``), a dict (``name`` expanded) or a ModelConfig."""
    if spec is None:
        return ModelConfig()
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, dict):
        return from_dict(ModelConfig, expand_model_dict(spec), prefix="model")
    if isinstance(spec, ModelConfig):
        # ModelConfig(name="tiny") built in Python: nothing else set, so take the named config.
        if spec.name and spec == ModelConfig(name=spec.name):
            return get_model_config({"name": spec.name})
        return spec
    raise TypeError(f"expected a ModelConfig, dict or config name, got {type(spec).__name__}")


def build_text_tokenizer(cfg: ModelConfig):
    """The tokenizer a CLIP model config implies (openclip BPE or the hf_path folder's)."""
    from mmfm.data.tokenizers import build_tokenizer

    if cfg.openclip:
        return build_tokenizer(f"openclip:{cfg.openclip}")
    t = cfg.text
    if t.type == "hf":
        return build_tokenizer("hf", t.hf_path, context_length=t.context_length)
    return build_tokenizer("openclip", context_length=t.context_length)


def _check_token_ids(cfg: ModelConfig, tokenizer) -> None:
    """Token-id hygiene: the tokenizer's special ids must exist and fit the text tower's vocabulary."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        if getattr(tokenizer, attr, None) is None:
            raise ConfigError(f"model.text: tokenizer {tokenizer.name} has no {attr.replace('_id', '')}")
    if cfg.text.type == "openclip" and tokenizer.vocab_size > cfg.text.vocab_size:
        raise ConfigError(f"model.text.vocab_size: {cfg.text.vocab_size} is smaller than the tokenizer's "
                          f"vocabulary ({tokenizer.vocab_size} ids, {tokenizer.name})")


def _build_clip(cfg: ModelConfig, init_weights: bool) -> nn.Module:
    from .clip import CLIP
    from .text import HFTextTower, OpenCLIPTextTower
    from .tower_setup import apply_tower_settings
    from .towers import TimmVisionTower

    tokenizer = build_text_tokenizer(cfg)
    _check_token_ids(cfg, tokenizer)
    v, t = cfg.vision, cfg.text
    visual = TimmVisionTower(v.timm_model, v.timm_kwargs, v.pretrained if init_weights else None, v.image_size,
                             v.preprocess)
    if t.type == "hf":
        text = HFTextTower(t.hf_path, cfg.embed_dim, t.pooling, load_weights=init_weights)
    else:
        text = OpenCLIPTextTower(t.context_length, t.vocab_size, t.width, t.heads, t.layers, cfg.embed_dim,
                                 t.mlp_ratio)
    model = CLIP(visual, text, cfg.embed_dim, cfg.init_logit_scale, cfg.init_logit_bias, tokenizer, cfg)
    return apply_tower_settings(model, cfg)


def build_model(model_cfg: ModelConfig | dict | str | None = None, *, init_weights: bool = True) -> nn.Module:
    """Build the model a config describes.

    ``model.lora`` injects LoRA adapters (only they train; ``mmfm.models.lora``).
    ``init_weights=False`` skips loading pretrained tower weights (vision.pretrained, the hf text folder's
    weights) because a checkpoint is about to overwrite them; the architecture is the same.
    """
    cfg = get_model_config(model_cfg)
    prefix = cfg.kind == "captioner" and cfg.decoder is not None and cfg.decoder.fusion == "prefix"
    if cfg.lora is not None and cfg.kind != "clip" and not cfg.source and not prefix:
        raise ConfigError(f"model.lora: LoRA fine-tuning is for CLIP models (model.kind: clip), transformers "
                          f"captioners (model.source: hf:...) and prefix captioners (model.decoder.fusion: "
                          f"prefix), not a cross-attention {cfg.kind}")
    if prefix and not cfg.source:                        # a LLaVA-style prefix captioner (prefix_captioner.py)
        from .prefix_captioner import build_prefix_captioner
        model = build_prefix_captioner(cfg, init_weights=init_weights)
        if cfg.lora is not None:
            from .lora import apply_lora
            apply_lora(model, cfg.lora)
            model.proj.requires_grad_(True)             # the projector trains beside the adapters
        return model
    if cfg.kind == "captioner" and cfg.source:          # a transformers image-to-text model (hf_captioner.py)
        from .hf_captioner import build_hf_captioner
        model = build_hf_captioner(cfg, init_weights=init_weights)
        if cfg.lora is not None:
            from .lora import apply_lora
            apply_lora(model, cfg.lora)
        return model
    if cfg.kind == "captioner" and cfg.openclip:       # an open_clip CoCa (openclip_coca.py)
        from .openclip_coca import OpenCLIPCoCa
        from .tower_setup import apply_tower_settings
        return apply_tower_settings(OpenCLIPCoCa(cfg.openclip, model_cfg=cfg), cfg)
    if cfg.kind == "captioner":
        try:
            from mmfm.models.captioner import build_captioner
        except ImportError as e:
            raise ConfigError(f"model.kind=captioner: the captioner module is unavailable ({e})") from e
        return build_captioner(cfg, init_weights=init_weights)
    if cfg.openclip:
        from .openclip import build_openclip_model
        model = build_openclip_model(cfg)
    elif cfg.source:
        from .hf_clip import build_hf_clip
        model = build_hf_clip(cfg, init_weights=init_weights)
    else:
        model = _build_clip(cfg, init_weights)
    from .long_text import apply_long_captions
    apply_long_captions(model, cfg.text)     # after pretrained weights, before a checkpoint's: mmfm.models.long_text
    if cfg.lora is not None:            # after any pretrained weights: they become the adapters' base
        from .lora import apply_lora
        apply_lora(model, cfg.lora)
    return model


def is_clip_model(model: nn.Module) -> bool:
    """True for models with the CLIP encode API (mmfm CLIP, open_clip adapter)."""
    return all(callable(getattr(model, m, None)) for m in ("encode_image", "encode_text"))

