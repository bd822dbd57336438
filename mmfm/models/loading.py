"""Saving, exporting and loading models, with the identity (config, preprocessing, tokenizer) they carry.

Checkpoint dir (written by ``save_pretrained`` and by the trainer): ``model.safetensors`` + ``config.yaml``
(the resolved ExperimentConfig) + ``meta.json`` (preprocess, tokenizer name, mmfm version, step, ...).
Exported folder (``export_pretrained``): ``model.safetensors`` + ``config.json`` (model config, preprocess,
tokenizer). ``load_pretrained`` accepts either, a run dir (its ``checkpoints/latest``), or
``openclip:MODEL_NAME[:STATE_DICT_FILE]`` / ``openclip:MODEL_NAME@PRETRAINED_TAG``.
Weights are only ever read with safetensors (or open_clip's ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from mmfm.config import ConfigError, ExperimentConfig, from_dict, read_yaml, save_config, to_dict
from mmfm.config.model import ModelConfig

__all__ = ["CheckpointMismatchError", "save_pretrained", "write_pretrained", "export_pretrained", "load_pretrained",
           "load_weights", "resolve_checkpoint", "read_checkpoint_config", "state_dict_to_save",
           "load_model_and_transforms"]

WEIGHTS, CONFIG_YAML, META, EXPORT_CONFIG = "model.safetensors", "config.yaml", "meta.json", "config.json"
EXPORT_FORMAT = "mmfm-export/1"


class CheckpointMismatchError(ConfigError):
    """The checkpoint's tensors do not fit the model: the message lists them."""


# ---------------------------------------------------------------- writing
def state_dict_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict, CPU + contiguous, with tied (shared-storage) tensors stored once."""
    out, seen = {}, {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = name
        out[name] = t.detach().to("cpu").contiguous()
    return out


def _meta_for(model: nn.Module, meta: dict | None) -> dict:
    from mmfm import __version__

    tok = getattr(model, "tokenizer", None)
    out = {
        "format": "mmfm-checkpoint/1",
        "mmfm_version": __version__,
        "model_class": type(model).__name__,
        "preprocess": getattr(model, "preprocess", None),
        "tokenizer": getattr(tok, "name", None),
        "context_length": getattr(tok, "context_length", None),
    }
    out.update(meta or {})
    return out


def _experiment_cfg(model: nn.Module, cfg) -> ExperimentConfig:
    if isinstance(cfg, ExperimentConfig):
        return cfg
    if cfg is None:
        cfg = getattr(model, "model_cfg", None)
    if isinstance(cfg, ModelConfig):
        return ExperimentConfig(model=cfg)
    raise ConfigError(f"save_pretrained: need an ExperimentConfig or ModelConfig (model.model_cfg), got "
                      f"{type(cfg).__name__}")


def write_pretrained(model: nn.Module, cfg, directory: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write model.safetensors + config.yaml + meta.json into an existing (temporary) directory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_to_save(model), str(directory / WEIGHTS), metadata={"format": "pt"})
    save_config(_experiment_cfg(model, cfg), directory / CONFIG_YAML)
    (directory / META).write_text(json.dumps(_meta_for(model, meta), indent=2, default=str), encoding="utf-8")
    return directory


def _atomic_dir(target: Path, fill) -> Path:
    """Fill a temp dir next to ``target``, then rename it into place (replacing an old one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_pretrained(model: nn.Module, cfg=None, directory: str | os.PathLike = "model",
                    meta: dict | None = None) -> Path:
    """Save a checkpoint dir atomically (temp dir, then rename). ``cfg``: ExperimentConfig or ModelConfig."""
    return _atomic_dir(Path(directory), lambda tmp: write_pretrained(model, cfg, tmp, meta))


def export_pretrained(model: nn.Module | str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export as ``model.safetensors`` + ``config.json`` (model config, preprocess, tokenizer), atomically.

    ``model`` may be a loaded model or anything ``load_pretrained`` accepts.
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        model = load_pretrained(model)
    cfg = getattr(model, "model_cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"export: {type(model).__name__} has no model_cfg to export")
    tok = getattr(model, "tokenizer", None)
    from mmfm import __version__
    config = {"format": EXPORT_FORMAT, "mmfm_version": __version__, "model": to_dict(cfg),
              "preprocess": getattr(model, "preprocess", None), "tokenizer": getattr(tok, "name", None),
              "context_length": getattr(tok, "context_length", None),
              "embed_dim": getattr(model, "embed_dim", None)}

    def fill(tmp: Path) -> None:
        save_file(state_dict_to_save(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / EXPORT_CONFIG).write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")

    return _atomic_dir(Path(out_dir), fill)


# ---------------------------------------------------------------- reading
def _read_latest(ckpts: Path) -> Path:
    latest = ckpts / "latest"
    if latest.is_dir():
        return latest.resolve()
    name = latest.read_text(encoding="utf-8").strip()
    target = Path(name) if os.path.isabs(name) else ckpts / name
    if not target.is_dir():
        raise ConfigError(f"{latest} names '{name}', which is not a checkpoint folder")
    return target


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint dir, a run dir (``checkpoints/latest``), an ``OUT/checkpoints`` dir, an exported folder,
    or a ``model.safetensors`` file -> the folder holding the weights."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_file() and p.name.endswith(".safetensors"):
        p = p.parent
    if not p.exists():
        raise ConfigError(f"checkpoint not found: {p}")
    if (p / WEIGHTS).is_file() and ((p / CONFIG_YAML).is_file() or (p / EXPORT_CONFIG).is_file()):
        return p
    for ckpts in (p / "checkpoints", p):
        if (ckpts / "latest").exists():
            return resolve_checkpoint(_read_latest(ckpts))
    raise ConfigError(f"not an mmfm checkpoint: {p} (expected model.safetensors with config.yaml or config.json, "
                      f"a run dir with checkpoints/latest, or openclip:MODEL_NAME[:STATE_DICT_FILE])")


def read_checkpoint_config(path: str | os.PathLike) -> ExperimentConfig:
    """The ExperimentConfig stored with a checkpoint (an export gives one with only its model section)."""
    d = resolve_checkpoint(path)
    if (d / CONFIG_YAML).is_file():
        return from_dict(ExperimentConfig, read_yaml(d / CONFIG_YAML))
    data = json.loads((d / EXPORT_CONFIG).read_text(encoding="utf-8"))
    if data.get("format") != EXPORT_FORMAT or "model" not in data:
        raise ConfigError(f"{d / EXPORT_CONFIG}: not an mmfm export (format {data.get('format')!r})")
    return ExperimentConfig(model=from_dict(ModelConfig, data["model"], prefix="model"))


def _read_meta(d: Path) -> dict:
    for name in (META, EXPORT_CONFIG):
        if (d / name).is_file():
            try:
                return json.loads((d / name).read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{d / name}: not valid JSON: {e}") from None
    return {}


def _fmt(names, limit: int = 20) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, list[str]]:
    """Load safetensors weights (a file, or anything resolve_checkpoint takes) into ``model``.

    With ``strict`` any missing, unexpected or wrongly shaped tensor raises CheckpointMismatchError listing
    them; otherwise the matching tensors load and the lists are returned.
    """
    from safetensors.torch import load_file

    p = Path(path)
    file = p if p.is_file() else resolve_checkpoint(p) / WEIGHTS
    try:
        sd = load_file(str(file), device="cpu")
    except Exception as e:  # noqa: BLE001 - a truncated / foreign file
        raise ConfigError(f"cannot read weights {file}: {e}") from e
    own = model.state_dict()
    obsolete = {f"{name}.{key}" if name else key for name, m in model.named_modules()
                for key in (getattr(m, "obsolete_keys", None) or ())}      # e.g. a captioner's dropped timm head
    sd = {k: v for k, v in sd.items() if k not in obsolete}
    aliases = {}   # tied tensors saved once: any name sharing storage with a saved tensor counts as present
    for name, t in own.items():
        if t.numel():
            aliases.setdefault((t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)), []).append(name)
    present = set(sd)
    for names in aliases.values():
        if present.intersection(names):
            present.update(names)
    missing = [k for k in own if k not in present]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k} (checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})"
             for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if strict and (missing or unexpected or shape):
        parts = [f"{file} does not fit {type(model).__name__}:"]
        if shape:
            parts.append(f"  {len(shape)} shape mismatches: {_fmt(shape)}")
        if missing:
            parts.append(f"  {len(missing)} tensors missing from the checkpoint: {_fmt(missing)}")
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected tensors in the checkpoint: {_fmt(unexpected)}")
        raise CheckpointMismatchError("\n".join(parts))
    bad = {s.split(" ", 1)[0] for s in shape}
    model.load_state_dict({k: v for k, v in sd.items() if k in own and k not in bad}, strict=False)
    # tied names that were not saved share storage with a loaded one, nothing more to do
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": shape}


def _build(cfg: ModelConfig) -> nn.Module:
    """The architecture only: the checkpoint about to be loaded replaces any pretrained tower weights."""
    from .factory import build_model
    return build_model(cfg, init_weights=False)


def load_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model, ready for inference (eval mode), with ``.preprocess``, ``.tokenizer`` and ``.model_cfg``."""
    spec = str(path)
    if spec.startswith("openclip:"):
        from .openclip import OpenCLIPModel, parse_openclip_spec
        name, weights = parse_openclip_spec(spec)
        model = OpenCLIPModel(name, pretrained=weights)
    else:
        d = resolve_checkpoint(path)
        cfg = read_checkpoint_config(d).model
        model = _build(cfg)
        load_weights(model, d / WEIGHTS, strict=True)
        meta = _read_meta(d)
        if meta.get("preprocess"):
            model.preprocess = dict(meta["preprocess"])
        model.checkpoint_path = str(d)
        model.checkpoint_meta = meta
    return model.to(device).eval()


def load_model_and_transforms(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(model, eval_transform, tokenizer)``, the open_clip-style triple, for scripts."""
    model = load_pretrained(path, device=device)
    transform = model.image_transform(False) if hasattr(model, "image_transform") else None
    if transform is None:
        from .clip import eval_transform
        transform = eval_transform(model.preprocess)
    return model, transform, getattr(model, "tokenizer", None)
