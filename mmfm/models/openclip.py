"""Run open_clip models through mmfm: the same encode API, tokenizer contract and preprocessing dict.

``OpenCLIPModel`` wraps ``open_clip.create_model(name, pretrained=...)`` (weights from a local state-dict file,
or a pretrained tag when a hub is reachable). Embeddings are open_clip's own, bit for bit. Its state dict is
the open_clip model's under ``model.``; its config is ``ModelConfig(openclip=NAME)``, so it saves, exports and
fine-tunes like any mmfm CLIP.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from mmfm.config import ConfigError

from .clip import ClipApiMixin, LibraryModelMixin
from .pooled import openclip_text_pooled, openclip_vit_pooled
from .towers import KeepLockedEval

__all__ = ["OpenCLIPModel", "build_openclip_model", "preprocess_from_openclip", "parse_openclip_spec"]

_RESIZE_TO_CROP_MODE = {"shortest": "center", "squash": "squash", "longest": "border"}


def preprocess_from_openclip(model: nn.Module) -> dict:
    """open_clip's preprocess cfg as a timm data config dict (eval transform: resize shortest side, center crop)."""
    from open_clip.model import get_model_preprocess_cfg

    pp = get_model_preprocess_cfg(model)
    size = pp.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    mean = pp.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = pp.get("std", (0.26862954, 0.26130258, 0.27577711))
    mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(m) for m in mean]
    std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(s) for s in std]
    interpolation = pp.get("interpolation", "bicubic")
    return {
        "input_size": [3, int(h), int(w)],
        "interpolation": "bilinear" if interpolation == "bilinear" else "bicubic",
        "mean": mean,
        "std": std,
        "crop_pct": 1.0,
        "crop_mode": _RESIZE_TO_CROP_MODE.get(pp.get("resize_mode", "shortest"), "center"),
    }


def parse_openclip_spec(spec: str) -> tuple[str, str | None]:
    """``openclip:NAME[:FILE]`` or ``openclip:NAME@TAG`` -> (NAME, FILE or TAG or None).

    NAME may also be open_clip's ``hf-hub:ORG/REPO`` / ``local-dir:PATH`` (weights come with it) or a path to an
    open_clip model-config JSON (registered with ``open_clip.add_model_config``)."""
    body = spec.split(":", 1)[1] if spec.startswith("openclip:") else spec
    if body.startswith(("hf-hub:", "local-dir:")):
        return body, None
    if "@" in body:
        name, tag = body.split("@", 1)
        return name, tag or None
    if ":" in body:
        name, path = body.split(":", 1)
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise ConfigError(f"open_clip state-dict file not found: {path}")
        return name, path
    return body, None


def _short_or_library(features, library, normalize: bool) -> torch.Tensor:
    """The short path's features (``mmfm.models.pooled``), or the library's own when it declined (None)."""
    features = library() if features is None else features
    return F.normalize(features, dim=-1) if normalize else features


class OpenCLIPModel(LibraryModelMixin, ClipApiMixin, KeepLockedEval, nn.Module):
    """An open_clip CLIP model with mmfm's ``encode_image`` / ``encode_text`` / ``forward`` contract."""

    def __init__(self, model_name: str, pretrained: str | None = None, model_cfg=None):
        super().__init__()
        import open_clip

        from mmfm.data.tokenizers import WrappedOpenCLIPTokenizer, register_openclip_config

        spec, model_name = model_name, register_openclip_config(model_name)
        if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
            import difflib
            close = difflib.get_close_matches(model_name, open_clip.list_models(), n=3)
            raise ConfigError(f"'{model_name}' is not an open_clip model."
                              + (f" Did you mean {', '.join(close)}?" if close else ""))
        try:
            self.model = open_clip.create_model(model_name, pretrained=pretrained, pretrained_image=False,
                                                pretrained_text=False, weights_only=True)
        except Exception as e:  # noqa: BLE001 - name the weights; a tag needs a hub, say so
            if pretrained and not os.path.isfile(pretrained):
                raise ConfigError(f"cannot fetch open_clip pretrained tag '{pretrained}' for {model_name} "
                                  f"(is a hub reachable? HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}); "
                                  f"or pass a local file: openclip:{model_name}:PATH. Cause: {e}") from e
            raise ConfigError(f"cannot build open_clip {model_name}"
                              + (f" with weights {pretrained}" if pretrained else "") + f": {e}") from e
        self.model_name = model_name
        self.preprocess = preprocess_from_openclip(self.model)
        context_length = getattr(self.model, "context_length", None) or getattr(
            getattr(self.model, "text", None), "context_length", None)
        self.tokenizer = WrappedOpenCLIPTokenizer(spec, context_length=context_length)
        self.embed_dim = int(getattr(getattr(self.model, "visual", None), "output_dim", 0) or 0)
        if model_cfg is None:
            from mmfm.config.model import ModelConfig
            model_cfg = ModelConfig(openclip=spec, embed_dim=self.embed_dim or 512)
        self.model_cfg = model_cfg

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def tower_paths(self) -> dict[str, tuple[str, ...]]:
        """The tower names (``mmfm.models.tower_setup``): ``visual`` is open_clip's ``visual``; ``text`` its ``text``
        module (CustomTextCLIP) or the parts its ``lock_text_tower`` freezes (CLIP: embeddings, transformer, final
        norm, projection)."""
        if isinstance(getattr(self.model, "text", None), nn.Module):
            text = ("model.text",)
        else:
            text = tuple(f"model.{n}" for n in ("token_embedding", "positional_embedding", "transformer", "ln_final",
                                                 "text_projection") if getattr(self.model, n, None) is not None)
        return {"visual": ("model.visual",), "text": text}

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        # a class-token ViT computes its last block for the class token only (the same embedding; fewer FLOPs)
        return _short_or_library(openclip_vit_pooled(self.model.visual, image),
                                 lambda: self.model.encode_image(image), normalize)

    def encode_text(self, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = False) -> torch.Tensor:
        # causal and pooled at end-of-text: the padding after the batch's last end-of-text token is not run
        return _short_or_library(openclip_text_pooled(self.model, text_ids),
                                 lambda: self.model.encode_text(text_ids), normalize)

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        self.model.lock_image_tower(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)
        self.keep_locked_eval(freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers: int = 0) -> None:
        self.model.lock_text_tower(unlocked_layers=unlocked_layers)
        self.keep_locked_eval()

    def set_tower_grad_checkpointing(self, name: str, enable: bool = True) -> None:
        """Checkpointing in one tower (open_clip's own ``set_grad_checkpointing`` sets both)."""
        if name == "visual":
            self.model.visual.set_grad_checkpointing(enable)
        elif isinstance(getattr(self.model, "text", None), nn.Module):
            self.model.text.set_grad_checkpointing(enable)
        else:
            self.model.transformer.grad_checkpointing = enable

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for name in self.tower_paths:
            self.set_tower_grad_checkpointing(name, enable)


def build_openclip_model(cfg, pretrained: str | None = None) -> OpenCLIPModel:
    """``ModelConfig(openclip=NAME)`` -> OpenCLIPModel (lock / grad-checkpointing flags honoured)."""
    from .tower_setup import apply_tower_settings
    return apply_tower_settings(OpenCLIPModel(cfg.openclip, pretrained=pretrained, model_cfg=cfg), cfg)
