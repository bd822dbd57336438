"""Run transformers ``CLIPModel`` / ``SiglipModel`` through mmfm: the same encode API, tokenizer contract and
preprocessing dict as every other mmfm CLIP.

``HFCLIPModel("hf:DIR_OR_ID")`` opens a folder in ``save_pretrained`` layout (``config.json`` + weights, the
tokenizer files, and ``preprocessor_config.json`` when there is one); a hub id is fetched with
``huggingface_hub.snapshot_download`` when a hub is reachable. Embeddings are the library's own
(``get_image_features`` / ``get_text_features``). Its state dict is the transformers model's under ``model.``
and its config is ``ModelConfig(source="hf:...")``, so it trains, saves and loads like any mmfm CLIP, and
``model.save_pretrained`` (``mmfm export --format transformers``) gives the folder back to transformers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from mmfm.config import ConfigError

from .clip import ClipApiMixin, LibraryModelMixin
from .towers import KeepLockedEval

__all__ = ["HFCLIPModel", "build_hf_clip", "resolve_hf_source", "preprocess_from_hf", "pooled", "HF_CLASSES"]

HF_CLASSES = {"clip": "CLIPModel", "siglip": "SiglipModel"}          # config.model_type -> transformers class
_RESAMPLE = {2: "bilinear", 3: "bicubic"}                          # PIL resample ids in preprocessor configs
_DEFAULT_NORM = {"clip": ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
                 "siglip": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])}


def resolve_hf_source(source: str) -> Path:
    """``hf:DIR`` (a local save_pretrained folder, ``~`` and ``pkg:MODULE`` allowed) or ``hf:ORG/NAME`` (a hub id,
    downloaded when a hub is reachable) -> the local folder."""
    from mmfm.data.tokenizers import resolve_path

    body = source[3:] if source.startswith("hf:") else source
    local = resolve_path(body)
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, "config.json")):
            raise ConfigError(f"{source}: {local} has no config.json (expected a transformers save_pretrained folder)")
        return Path(local)
    if body.startswith((".", "/", "~", "pkg:")) or body.count("/") != 1:
        raise ConfigError(f"{source}: folder not found: {local} (expected a transformers save_pretrained folder "
                          f"or a hub id ORG/NAME)")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(body))
    except Exception as e:  # noqa: BLE001 - offline, unknown id: say which and why
        raise ConfigError(f"{source}: cannot fetch '{body}' from the Hugging Face hub (is it reachable? "
                          f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}); or pass a local folder: "
                          f"hf:DIR. Cause: {e}") from e


def preprocess_from_hf(folder: Path, config) -> dict:
    """The folder's image processor settings (``preprocessor_config.json``) as a timm data config dict:
    CLIP resizes the shortest side and centre-crops, SigLIP resizes to the exact size ("squash")."""
    kind = config.model_type
    size = int(config.vision_config.image_size)
    mean, std = _DEFAULT_NORM[kind]
    pre = {"input_size": [3, size, size], "interpolation": "bicubic", "mean": mean, "std": std,
           "crop_pct": 1.0, "crop_mode": "center" if kind == "clip" else "squash"}
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return pre
    try:
        pp = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    pre["mean"] = [float(m) for m in pp.get("image_mean", mean)]
    pre["std"] = [float(s) for s in pp.get("image_std", std)]
    pre["interpolation"] = _RESAMPLE.get(pp.get("resample"), "bicubic")
    resize, crop = pp.get("size") or {}, pp.get("crop_size") or {}
    if pp.get("do_center_crop", kind == "clip") and crop:
        h, w = int(crop.get("height", size)), int(crop.get("width", size))
        short = resize.get("shortest_edge")
        pre.update(input_size=[3, h, w], crop_mode="center", crop_pct=min(h, w) / short if short else 1.0)
    elif "height" in resize:
        pre.update(input_size=[3, int(resize["height"]), int(resize["width"])], crop_mode="squash")
    return pre


def pooled(out) -> torch.Tensor:
    """``get_image_features`` / ``get_text_features`` output -> the projected embeddings (transformers 5 returns
    a ModelOutput whose ``pooler_output`` holds them, 4.x the tensor itself)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFCLIPModel(LibraryModelMixin, ClipApiMixin, KeepLockedEval, nn.Module):
    """A transformers CLIPModel / SiglipModel with mmfm's ``encode_image`` / ``encode_text`` / ``forward``."""

    def __init__(self, source: str, model_cfg=None, load_weights: bool = True):
        super().__init__()
        import transformers

        from mmfm.data.tokenizers import HFTokenizer

        folder = resolve_hf_source(source)
        config = transformers.AutoConfig.from_pretrained(str(folder))
        name = HF_CLASSES.get(config.model_type)
        if name is None:
            raise ConfigError(f"{source}: {folder / 'config.json'} has model_type {config.model_type!r}; mmfm "
                              f"loads {', '.join(HF_CLASSES.values())} (model_type {', '.join(HF_CLASSES)})")
        cls = getattr(transformers, name)
        try:
            self.model = (cls.from_pretrained(str(folder), dtype=torch.float32) if load_weights
                          else cls(config).float())
        except Exception as e:  # noqa: BLE001 - name the folder
            raise ConfigError(f"{source}: cannot load {name} from {folder}: {e}") from e
        self.source, self.kind, self.folder = source, config.model_type, folder
        self.preprocess = preprocess_from_hf(folder, config)
        self.tokenizer = HFTokenizer(str(folder), context_length=int(config.text_config.max_position_embeddings))
        # give the text model what its own tokenizer gives it (SigLIP's gives no attention mask)
        self.uses_attention_mask = "attention_mask" in getattr(self.tokenizer.tokenizer, "model_input_names", ())
        self.embed_dim = int(getattr(config, "projection_dim", 0) or config.text_config.hidden_size)
        if model_cfg is None:
            from mmfm.config.model import ModelConfig
            model_cfg = ModelConfig(source=source, embed_dim=self.embed_dim)
        self.model_cfg = model_cfg

    @property
    def visual(self) -> nn.Module:
        return self.model.vision_model

    @property
    def tower_paths(self) -> dict[str, tuple[str, ...]]:
        """The tower names (``mmfm.models.tower_setup``): each tower with its projection, as ``lock`` freezes them."""
        def parts(*names):
            return tuple(f"model.{n}" for n in names if getattr(self.model, n, None) is not None)
        return {"visual": parts("vision_model", "visual_projection"), "text": parts("text_model", "text_projection")}

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = pooled(self.model.get_image_features(pixel_values=image))
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = False) -> torch.Tensor:
        mask = attention_mask if self.uses_attention_mask else None
        x = pooled(self.model.get_text_features(input_ids=text_ids, attention_mask=mask))
        return nn.functional.normalize(x, dim=-1) if normalize else x

    def _lock(self, tower: nn.Module, heads: list[nn.Module], unlocked: int) -> None:
        for p in [*tower.parameters(), *(p for h in heads for p in h.parameters())]:
            p.requires_grad = False
        layers = tower.encoder.layers
        if unlocked:
            tail = [*layers[len(layers) - min(unlocked, len(layers)):], *heads]
            tail += [m for n in ("post_layernorm", "final_layer_norm", "head") if (m := getattr(tower, n, None)) is not None]
            for m in tail:
                for p in m.parameters():
                    p.requires_grad = True
        self.keep_locked_eval()

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        self._lock(self.model.vision_model, [getattr(self.model, "visual_projection", nn.Identity())],
                   unlocked_groups)

    def lock_text_tower(self, unlocked_layers: int = 0) -> None:
        self._lock(self.model.text_model, [getattr(self.model, "text_projection", nn.Identity())], unlocked_layers)

    def set_tower_grad_checkpointing(self, name: str, enable: bool = True) -> None:
        """Checkpointing in one tower's layers (transformers' ``gradient_checkpointing_enable`` sets both): each
        layer's ``gradient_checkpointing`` flag and function, as transformers sets them (non-reentrant)."""
        import functools

        from torch.utils.checkpoint import checkpoint

        tower = {"visual": self.model.vision_model, "text": self.model.text_model}[name]
        for m in tower.modules():
            if hasattr(m, "gradient_checkpointing"):
                m._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
                m.gradient_checkpointing = enable

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for name in self.tower_paths:
            self.set_tower_grad_checkpointing(name, enable)

    def save_transformers(self, directory: str | os.PathLike) -> None:
        """The folder transformers opens: weights + config (``save_pretrained``), tokenizer, image processor."""
        directory = Path(directory)
        self.model.save_pretrained(str(directory))
        self.tokenizer.tokenizer.save_pretrained(str(directory))
        pp = self.folder / "preprocessor_config.json"
        if pp.is_file():
            (directory / pp.name).write_bytes(pp.read_bytes())


def build_hf_clip(cfg, init_weights: bool = True) -> HFCLIPModel:
    """``ModelConfig(source="hf:...")`` -> HFCLIPModel (its weights unless ``init_weights=False``; lock and
    grad-checkpointing flags honoured)."""
    from .tower_setup import apply_tower_settings
    return apply_tower_settings(HFCLIPModel(cfg.source, model_cfg=cfg, load_weights=init_weights), cfg)
