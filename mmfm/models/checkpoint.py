"""The one loader and saver: ``load``, ``save_pretrained`` / ``write_pretrained``, ``export_pretrained``,
``load_weights``, ``init_weights_from`` and int8 loading.

The folder layouts, their names and resolution (``resolve_checkpoint``, ``latest``, ``read_config``,
``read_meta``) live one level below, in :mod:`mmfm.models.layout`, which imports no model code; this module builds
models (through :mod:`.factory`) and fills them.

``load(spec, device)`` takes any folder kind or spec and returns the model in eval mode with ``.model_cfg``,
``.preprocess``, ``.tokenizer``, ``.generate_config`` (the decoding settings stored with a captioner),
``.checkpoint_path`` and ``.checkpoint_meta``; a LoRA checkpoint comes back merged (plain weights,
``model_cfg.lora`` cleared), so every export format writes plain weights. Specs: ``openclip:MODEL_NAME[:FILE]`` /
``openclip:MODEL_NAME@PRETRAINED_TAG`` / ``openclip:hf-hub:ORG/REPO``; ``hf:DIR_OR_ID`` for transformers
CLIPModel / SiglipModel folders (:mod:`mmfm.models.hf_clip`). ``init_weights_from(model, spec)`` copies any of
them into a model (``train.init_from``). Weights are only ever read with safetensors (or open_clip's
``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from mmfm.config import ConfigError, ExperimentConfig, save_config, to_dict
from mmfm.config.model import ModelConfig

from .layout import (CHECKPOINT_FORMAT, CONFIG_YAML, EXPORT_CONFIG, EXPORT_FORMAT, META, QUANT_FORMAT, QUANT_WEIGHTS,
                     SHARDED, WEIGHTS, CheckpointMismatchError, atomic_dir, is_quantized_dir, is_sharded_dir,
                     is_spec, read_config, read_meta, resolve_checkpoint)
from .factory import build_model
from .quantized import quantize_model, restore_quantized
from .sharded import consolidate, read_sharded

__all__ = ["CheckpointMismatchError", "load", "load_weights", "save_pretrained", "write_pretrained", "load_state",
           "init_weights_from", "export_pretrained", "state_dict_to_save", "checkpoint_meta",
           "consolidate_checkpoint"]


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


def checkpoint_meta(model: nn.Module, meta: dict | None) -> dict:
    from mmfm.version import __version__

    tok = getattr(model, "tokenizer", None)
    out = {
        "format": CHECKPOINT_FORMAT,
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


def write_pretrained(model: nn.Module, cfg, directory: str | os.PathLike, meta: dict | None = None,
                     weights: bool = True) -> Path:
    """Write model.safetensors + config.yaml + meta.json into an existing (temporary) directory.
    ``weights=False``: only the config and meta (a sharded checkpoint, whose ranks write ``sharded/`` themselves)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if weights:
        save_file(state_dict_to_save(model), str(directory / WEIGHTS), metadata={"format": "pt"})
    save_config(_experiment_cfg(model, cfg), directory / CONFIG_YAML)
    if callable(getattr(model, "save_library_files", None)):      # a transformers captioner: config + processor
        model.save_library_files(directory)
    (directory / META).write_text(json.dumps(checkpoint_meta(model, meta), indent=2, default=str), encoding="utf-8")
    return directory


def save_pretrained(model: nn.Module, cfg=None, directory: str | os.PathLike = "model",
                    meta: dict | None = None) -> Path:
    """Save a checkpoint dir atomically (temp dir, then rename). ``cfg``: ExperimentConfig or ModelConfig."""
    return atomic_dir(directory, lambda tmp: write_pretrained(model, cfg, tmp, meta))


def export_pretrained(model: nn.Module | str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export as ``model.safetensors`` + ``config.json`` (model config, preprocess, tokenizer), atomically.

    ``model`` may be a loaded model or anything ``load`` accepts.
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        model = load(model)
    cfg = getattr(model, "model_cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"export: {type(model).__name__} has no model_cfg to export")
    tok = getattr(model, "tokenizer", None)
    from mmfm.version import __version__
    config = {"format": EXPORT_FORMAT, "mmfm_version": __version__, "model": to_dict(cfg),
              "preprocess": getattr(model, "preprocess", None), "tokenizer": getattr(tok, "name", None),
              "context_length": getattr(tok, "context_length", None),
              "embed_dim": getattr(model, "embed_dim", None)}

    def fill(tmp: Path) -> None:
        save_file(state_dict_to_save(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / EXPORT_CONFIG).write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")

    return atomic_dir(out_dir, fill)


# ---------------------------------------------------------------- reading
def _fmt(names, limit: int = 20) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def consolidate_checkpoint(path: str | os.PathLike) -> Path:
    """A sharded checkpoint (a step folder or a run folder's ``latest``) gets its single ``model.safetensors``;
    returns the file. Ordinary folders already have one."""
    d = resolve_checkpoint(path)
    return d / WEIGHTS if (d / WEIGHTS).is_file() else consolidate(d, WEIGHTS)


def _read_weights(path: str | os.PathLike) -> tuple[Path, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        d = resolve_checkpoint(p)
        if not (d / WEIGHTS).is_file() and is_sharded_dir(d):
            return d / SHARDED, read_sharded(d)
        p = d / WEIGHTS
    try:
        return p, load_file(str(p), device="cpu")
    except Exception as e:  # noqa: BLE001 - a truncated / foreign file
        raise ConfigError(f"cannot read weights {p}: {e}") from e


def _storage_key(t: torch.Tensor):
    """Tensors that share storage (tied weights) get the same key; a sharded DTensor is keyed by identity (FSDP
    hands out the same parameter object for tied names, and an empty local shard has no storage to compare)."""
    if hasattr(t, "to_local"):
        return ("dtensor", id(t))
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))


def _load_state(model: nn.Module, sd: dict[str, torch.Tensor], own: dict) -> None:
    if any(hasattr(t, "to_local") for t in own.values()):       # FSDP-sharded: every rank keeps its own shard
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        model.load_state_dict(sd, strict=False)


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, list[str]]:
    """Load weights (a safetensors file, or anything resolve_checkpoint takes, sharded folders included) into
    ``model``, which may itself be sharded by FSDP.

    With ``strict`` any missing, unexpected or wrongly shaped tensor raises CheckpointMismatchError listing
    them; otherwise the matching tensors load and the lists are returned.
    """
    file, sd = _read_weights(path)
    return load_state(model, sd, str(file), strict)


def load_state(model: nn.Module, sd: dict[str, torch.Tensor], origin: str,
               strict: bool = True) -> dict[str, list[str]]:
    """Load the state dict ``sd`` (read from ``origin``, named in errors) into ``model``, as ``load_weights``."""
    own = model.state_dict()
    from .lora import adapt_state_dict
    sd, fresh_adapters = adapt_state_dict(model, sd)      # a plain checkpoint into a LoRA model: adapters at init
    obsolete = {f"{name}.{key}" if name else key for name, m in model.named_modules()
                for key in (getattr(m, "obsolete_keys", None) or ())}      # e.g. a captioner's dropped timm head
    sd = {k: v for k, v in sd.items() if k not in obsolete}
    aliases = {}   # tied tensors saved once: any name sharing storage with a saved tensor counts as present
    for name, t in own.items():
        if t.numel():
            aliases.setdefault(_storage_key(t), []).append(name)
    present = set(sd)
    for names in aliases.values():
        if present.intersection(names):
            present.update(names)
    missing = [k for k in own if k not in present and k not in fresh_adapters]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k} (checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})"
             for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if strict and (missing or unexpected or shape):
        parts = [f"{origin} does not fit {type(model).__name__}:"]
        if shape:
            parts.append(f"  {len(shape)} shape mismatches: {_fmt(shape)}")
        if missing:
            parts.append(f"  {len(missing)} tensors missing from the checkpoint: {_fmt(missing)}")
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected tensors in the checkpoint: {_fmt(unexpected)}")
        raise CheckpointMismatchError("\n".join(parts))
    bad = {s.split(" ", 1)[0] for s in shape}
    _load_state(model, {k: v for k, v in sd.items() if k in own and k not in bad}, own)
    # tied names that were not saved share storage with a loaded one, nothing more to do
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": shape}


def _build(cfg: ModelConfig) -> nn.Module:
    """The architecture only: the checkpoint about to be loaded replaces any pretrained tower weights."""
    return build_model(cfg, init_weights=False)


def _load_int8(d: Path, meta: dict) -> tuple[nn.Module, ExperimentConfig]:
    from safetensors.torch import load_file

    info = meta.get("quantization") or {}
    if info.get("format") != QUANT_FORMAT:
        raise ConfigError(f"{d / META}: quantization format {info.get('format')!r}, expected {QUANT_FORMAT}")
    if not (d / CONFIG_YAML).is_file():
        raise ConfigError(f"{d}: {CONFIG_YAML} is missing (it rebuilds the architecture)")
    cfg = read_config(d)
    q = quantize_model(_build(cfg.model), info.get("dtype", "qint8"), inplace=True,
                       embeddings=bool(info.get("embeddings", False)))
    try:
        sd = load_file(str(d / QUANT_WEIGHTS), device="cpu")
    except Exception as e:  # noqa: BLE001 - truncated / foreign file
        raise ConfigError(f"cannot read {d / QUANT_WEIGHTS}: {e}") from e
    restore_quantized(q, sd, str(d / QUANT_WEIGHTS))
    q.quantization = info
    return q, cfg


def init_weights_from(model: nn.Module, spec: str | os.PathLike) -> dict:
    """``train.init_from``: copy the weights of ``spec`` into ``model`` (same architecture; a mismatch lists the
    tensors). ``spec`` is an mmfm checkpoint, run or export folder, or a library spec: ``openclip:ARCH:FILE``
    (a bare state dict or an open_clip_train checkpoint), ``openclip:ARCH@TAG``, ``openclip:hf-hub:ORG/REPO``,
    ``hf:DIR_OR_ID``. Returns the provenance that checkpoints record in ``meta.json["init_from"]``."""
    if not is_spec(str(spec)):
        d = resolve_checkpoint(spec)
        try:
            load_weights(model, d / WEIGHTS, strict=True)
        except CheckpointMismatchError as e:
            from .captioner_init import tokenizer_mismatch
            raise CheckpointMismatchError(f"{e}{tokenizer_mismatch(model, read_meta(d))}") from None
        return {"spec": str(spec), "resolved": str(d.resolve())}
    source = load(str(spec))
    if type(source) is not type(model):
        raise ConfigError(f"train.init_from {spec}: gives a {type(source).__name__}, but the model section builds a "
                          f"{type(model).__name__}. Leave the model section out (the spec defines the "
                          f"architecture) or set model.openclip / model.source to the same model")
    load_state(model, source.state_dict(), str(spec), strict=True)
    from .openclip import parse_openclip_spec
    weights = parse_openclip_spec(str(spec))[1] if str(spec).startswith("openclip:") else None
    resolved = str(Path(weights).resolve()) if weights and os.path.isfile(weights) else \
        str(getattr(source, "folder", "") or spec)
    return {"spec": str(spec), "resolved": resolved}


_KINDS = {"clip": ("encode_image", "CLIP model (model.kind: clip)"),
          "captioner": ("generate_ids", "captioner (model.kind: captioner)")}


def load(spec: str | os.PathLike, device: str | torch.device = "cpu", expect: str | None = None) -> nn.Module:
    """Load any model mmfm knows, ready for inference (eval mode): a checkpoint or run folder, an exported or
    int8 folder, or an ``openclip:`` / ``hf:`` spec. ``expect`` ("clip" | "captioner") turns a model of the wrong kind into
    a ConfigError naming the spec. The model carries ``.model_cfg``, ``.preprocess``, ``.tokenizer``,
    ``.generate_config``, ``.checkpoint_path`` and ``.checkpoint_meta``."""
    text = str(spec)
    if text.startswith("openclip:"):
        from .openclip import OpenCLIPModel, parse_openclip_spec
        from .openclip_coca import OpenCLIPCoCa, is_coca_name
        name, weights = parse_openclip_spec(text)
        model = (OpenCLIPCoCa if is_coca_name(name) else OpenCLIPModel)(name, pretrained=weights)
        model.checkpoint_path, model.checkpoint_meta, model.generate_config = text, {"source": text}, None
    elif text.startswith("hf:"):
        from .hf_captioner import load_hf_spec
        model = load_hf_spec(text)          # a CLIPModel / SiglipModel, or an image-to-text captioner
        model.checkpoint_path, model.checkpoint_meta, model.generate_config = text, {"source": text}, None
    else:
        d = resolve_checkpoint(spec)
        meta = read_meta(d)
        if is_quantized_dir(d):
            if str(device) != "cpu":
                raise ConfigError(f"{d}: int8 dynamic quantization runs on the CPU only (device={device})")
            model, cfg = _load_int8(d, meta)
        else:
            cfg = read_config(d)               # read once: architecture and decoding settings
            from .hf_captioner import use_stored_library_files
            use_stored_library_files(cfg.model, d)     # a transformers captioner: its config + processor
            model = _build(cfg.model)
            load_weights(model, d, strict=True)
            if cfg.model.lora is not None:      # a LoRA run: adapters folded into plain weights for use
                from .lora import merge_lora
                merge_lora(model)
        if meta.get("preprocess"):
            model.preprocess = dict(meta["preprocess"])
        model.checkpoint_path, model.checkpoint_meta = str(d), meta
        model.generate_config = cfg.generate if (d / CONFIG_YAML).is_file() else None   # exports store none
        from .debias import DEBIAS_FILE, attach_debias, read_debias
        if (d / DEBIAS_FILE).is_file():         # a debiased export stays debiased (mmfm.models.debias)
            attach_debias(model, *read_debias(d / DEBIAS_FILE))
    if expect is not None:
        attr, what = _KINDS[expect]
        if not callable(getattr(model, attr, None)):
            kind = getattr(getattr(model, "model_cfg", None), "kind", type(model).__name__)
            raise ConfigError(f"{text} is not a {what}; it is a {kind} model")
    return model.to(device).eval()
