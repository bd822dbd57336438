"""Checkpoint layouts on disk: file names, resolution, ``latest``, reading the stored config and meta.

The bottom of the checkpoint stack (timm's ``_helpers.py`` under ``_builder.py``): it imports no model code, so
every model module may use it, and :mod:`mmfm.models.checkpoint` (load, save, init-from) and the trainer's
checkpointer (:mod:`mmfm.train.checkpointer`) build on it.

Layouts (all written atomically: a temp folder renamed into place):

* checkpoint folder (``save_pretrained``, the trainer's ``OUT/checkpoints/step_XXXXXXXX``): ``model.safetensors`` +
  ``config.yaml`` (the resolved ExperimentConfig) + ``meta.json`` (preprocess, tokenizer name, mmfm version, step,
  ...); the trainer adds ``trainer_state.pt``.
* sharded checkpoint folder (``train.strategy: fsdp``): ``sharded/`` (torch.distributed.checkpoint, one file per
  rank) in place of ``model.safetensors``; read whole by :mod:`.sharded`.
* run folder: ``OUT/checkpoints/step_XXXXXXXX`` and ``OUT/checkpoints/latest``, which names the newest step folder
  (a relative symlink, or a text file holding the folder's name on an fsspec URL).
* exported folder (``export_pretrained``): ``model.safetensors`` + ``config.json`` (model config, preprocess,
  tokenizer).
* int8 folder (``mmfm export --format int8``): ``model.int8.safetensors`` + ``config.yaml`` + ``meta.json``
  (``meta["quantization"]``); see :mod:`mmfm.models.quantized`.
* specs: ``openclip:...`` and ``hf:...`` name library models rather than folders (``is_spec``).

Any folder may be an fsspec URL (``s3://bucket/runs/clip``): ``atomic_dir`` fills a local temporary folder and
uploads it; ``resolve_checkpoint`` downloads the folder (a run's ``checkpoints/latest`` target) into a fresh
local copy under ``$MMFM_CACHE`` (default ``~/.cache/mmfm``) before reading it.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from mmfm.config import ConfigError, ExperimentConfig, from_dict, read_yaml
from mmfm.config.files import atomic_dir as local_atomic_dir, atomic_path
from mmfm.config.model import ModelConfig
from mmfm.data import fs

__all__ = ["WEIGHTS", "CONFIG_YAML", "META", "EXPORT_CONFIG", "EXPORT_FORMAT", "CHECKPOINT_FORMAT", "QUANT_WEIGHTS",
           "QUANT_FORMAT", "SHARDED", "TRAINER_STATE", "CHECKPOINTS", "LATEST", "STEP_RE", "CheckpointMismatchError",
           "step_dir_name", "list_checkpoints", "point_latest", "resolve_latest", "atomic_dir", "fetch_checkpoint",
           "resolve_checkpoint", "read_config", "read_meta", "is_sharded_dir", "is_quantized_dir", "is_spec"]

WEIGHTS, CONFIG_YAML, META, EXPORT_CONFIG = "model.safetensors", "config.yaml", "meta.json", "config.json"
EXPORT_FORMAT, CHECKPOINT_FORMAT = "mmfm-export/1", "mmfm-checkpoint/1"
QUANT_WEIGHTS, QUANT_FORMAT = "model.int8.safetensors", "mmfm-int8-dynamic/1"
SHARDED = "sharded"
TRAINER_STATE = "trainer_state.pt"
CHECKPOINTS, LATEST = "checkpoints", "latest"
STEP_RE = re.compile(r"^step_(\d{8,})$")


class CheckpointMismatchError(ConfigError):
    """The checkpoint's tensors do not fit the model: the message lists them."""


# ---------------------------------------------------------------- folder kinds
def is_sharded_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / SHARDED / ".metadata").is_file()


def is_quantized_dir(path: str | os.PathLike) -> bool:
    p = Path(os.path.expanduser(str(path)))
    return p.is_dir() and (p / QUANT_WEIGHTS).is_file()


def is_spec(spec) -> bool:
    """A model named by a library spec (``openclip:...``, ``hf:...``) rather than a folder."""
    return isinstance(spec, str) and spec.startswith(("openclip:", "hf:"))


# ---------------------------------------------------------------- a run's step folders and `latest`
def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """The ``step_XXXXXXXX`` folders of ``OUT/checkpoints``, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if p.is_dir() and (m := STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def point_latest(ckpt_root: Path, target: Path) -> None:
    """Repoint ``ckpt_root/latest`` at the step folder ``target`` (a relative symlink, replaced atomically)."""
    with atomic_path(ckpt_root / LATEST) as tmp:
        os.symlink(target.name, tmp)


def resolve_latest(ckpts: Path) -> Path:
    """The checkpoint folder that ``ckpts/latest`` names (a symlink, or a file holding the folder name)."""
    latest = ckpts / LATEST
    if latest.is_dir():
        return latest.resolve()
    name = latest.read_text(encoding="utf-8").strip()
    target = Path(name) if os.path.isabs(name) else ckpts / name
    if not target.is_dir():
        raise ConfigError(f"{latest} names '{name}', which is not a checkpoint folder")
    return target


# ---------------------------------------------------------------- writing a folder atomically
def atomic_dir(target: str | os.PathLike, fill) -> Path | str:
    """Fill a temp dir next to ``target``, then rename it into place (replacing an old one). An fsspec URL
    ``target``: fill a local temp dir, then upload it in place of the old folder (returns the URL)."""
    if fs.is_remote(target):
        with tempfile.TemporaryDirectory(prefix="mmfm-upload-") as tmp:
            fill(Path(tmp))
            fs.remove(str(target), "output folder")
            fs.upload(tmp, str(target), "output folder")
        return str(target)
    target = fs.local_path(target)
    with local_atomic_dir(target) as tmp:
        fill(tmp)
    return target


# ---------------------------------------------------------------- resolution
def _remote_target(url: str) -> str:
    """The folder holding the weights behind an fsspec URL (a checkpoint/export/int8 folder, or a run / its
    ``checkpoints`` folder through ``latest``)."""
    url = url.rstrip("/")
    names = fs.listing(url, "checkpoint")
    if WEIGHTS in names or QUANT_WEIGHTS in names:
        return url
    for ckpts in (fs.join(url, CHECKPOINTS), url):
        if LATEST in fs.listing(ckpts, "checkpoint"):
            name = fs.read_text(fs.join(ckpts, LATEST), "checkpoint").strip()
            return _remote_target(fs.join(ckpts, name))
    raise ConfigError(f"not an mmfm checkpoint: {url} (no {WEIGHTS}, {QUANT_WEIGHTS} or checkpoints/latest there)")


def fetch_checkpoint(url: str) -> Path:
    """A fresh local copy of the checkpoint folder behind the fsspec URL ``url`` (see ``_remote_target``)."""
    import hashlib

    src = _remote_target(str(url))
    cache = Path(os.environ.get("MMFM_CACHE") or Path.home() / ".cache" / "mmfm") / "checkpoints"
    dest = cache / f"{src.rsplit('/', 1)[-1]}-{hashlib.sha1(src.encode()).hexdigest()[:12]}"
    return atomic_dir(dest, lambda tmp: fs.download(src, tmp, "checkpoint"))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint dir, a run dir (``checkpoints/latest``), an ``OUT/checkpoints`` dir, an exported folder,
    or a ``model.safetensors`` file -> the folder holding the weights."""
    if fs.is_remote(path):
        return fetch_checkpoint(str(path))
    p = Path(os.path.expanduser(str(fs.local_path(path))))
    if p.is_file() and p.name.endswith(".safetensors"):
        p = p.parent
    if not p.exists():
        raise ConfigError(f"checkpoint not found: {p}")
    if (p / WEIGHTS).is_file() and ((p / CONFIG_YAML).is_file() or (p / EXPORT_CONFIG).is_file()):
        return p
    if is_sharded_dir(p) and (p / CONFIG_YAML).is_file():
        return p
    if is_quantized_dir(p):
        return p
    for ckpts in (p / CHECKPOINTS, p):
        if (ckpts / LATEST).exists():
            return resolve_checkpoint(resolve_latest(ckpts))
    raise ConfigError(f"not an mmfm checkpoint: {p} (expected model.safetensors with config.yaml or config.json, "
                      f"{QUANT_WEIGHTS} with config.yaml, {SHARDED}/ with config.yaml, a run dir with checkpoints/latest, or "
                      f"openclip:MODEL_NAME[:STATE_DICT_FILE])")


# ---------------------------------------------------------------- reading config and meta
def read_config(path: str | os.PathLike) -> ExperimentConfig:
    """The ExperimentConfig stored with a checkpoint, run, int8 folder or export (an export gives one with only its
    model section). The one config reader: every command, the service and export use it."""
    d = resolve_checkpoint(path)
    if (d / CONFIG_YAML).is_file():
        return from_dict(ExperimentConfig, read_yaml(d / CONFIG_YAML))
    data = json.loads((d / EXPORT_CONFIG).read_text(encoding="utf-8"))
    if data.get("format") != EXPORT_FORMAT or "model" not in data:
        raise ConfigError(f"{d / EXPORT_CONFIG}: not an mmfm export (format {data.get('format')!r})")
    return ExperimentConfig(model=from_dict(ModelConfig, data["model"], prefix="model"))


def read_meta(d: Path) -> dict:
    """``meta.json`` (or an export's ``config.json``) of the resolved folder ``d``; ``{}`` when it has neither."""
    for name in (META, EXPORT_CONFIG):
        if (d / name).is_file():
            try:
                return json.loads((d / name).read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{d / name}: not valid JSON: {e}") from None
    return {}
