"""The towers of any model by one set of names, and the ``model.vision`` / ``model.text`` settings applied to them
the same way whatever built the model (mmfm's towers, open_clip, transformers).

* Tower names: ``visual`` and ``text`` for a CLIP model, ``vision`` and ``decoder`` for a captioner. Each model
  class says which of its modules (or parameters) a name covers in ``tower_paths``: ``visual`` is ``visual`` in
  mmfm's CLIP, ``model.visual`` in open_clip's, ``model.vision_model`` (+ its projection) in a transformers
  CLIPModel. ``model.lora.towers`` and ``train.lr_groups`` take these names; any other key stays a module path
  of the model (``model.transformer``, ``text.proj``).
* ``apply_tower_settings(model, cfg)``: ``lock`` + ``unlock_last_groups`` (an error without ``lock``),
  ``cache_locked_features`` (+ its ``memo_dir``) and ``grad_checkpointing`` of each section, on that section's
  tower only.
"""
from __future__ import annotations

from torch import nn

from mmfm.config import ConfigError

__all__ = ["apply_tower_settings", "expand_tower_names", "set_tower_grad_checkpointing", "tower_names",
           "tower_paths"]

# config section -> the tower name it configures (a CLIP's image tower is `visual`, a captioner's `vision`)
_SECTION_TOWERS = {"vision": ("visual", "vision"), "text": ("text",)}
_LOCKS = {"vision": "lock_image_tower", "text": "lock_text_tower"}


def tower_names(model: nn.Module) -> list[str]:
    """The tower names ``model`` answers to (``[]`` for a model without ``tower_paths``)."""
    return list(getattr(model, "tower_paths", None) or {})


def tower_paths(model: nn.Module, name: str) -> list[str] | None:
    """The paths (modules or parameters of ``model``) that the tower ``name`` covers, or None when ``name`` is not
    one of ``model``'s tower names (it is then a module path)."""
    paths = (getattr(model, "tower_paths", None) or {}).get(name)
    return None if paths is None else list(paths)


def expand_tower_names(model: nn.Module, mapping: dict) -> dict:
    """``{name or path: value}`` -> ``{path: value}``: a tower name gives each of its paths that value; a path as
    such wins over a tower name that covers the same path."""
    out: dict = {}
    for key, value in mapping.items():
        for path in tower_paths(model, key) or []:
            out.setdefault(path, value)
    out.update({k: v for k, v in mapping.items() if tower_paths(model, k) is None})
    return out


def _tower_of_section(model: nn.Module, section: str) -> str:
    names = tower_names(model)
    return next((n for n in _SECTION_TOWERS[section] if n in names), _SECTION_TOWERS[section][0])


def _modules(model: nn.Module, name: str) -> list[nn.Module]:
    paths = tower_paths(model, name) or [name]
    params = dict(model.named_parameters())
    return [model.get_submodule(p) for p in paths if p not in params]


def set_tower_grad_checkpointing(model: nn.Module, name: str, enable: bool = True) -> None:
    """Activation checkpointing in the tower ``name`` only: the model's own ``set_tower_grad_checkpointing`` when
    it has one (library adapters), else each tower module's ``set_grad_checkpointing``."""
    own = getattr(model, "set_tower_grad_checkpointing", None)
    if own is not None:
        own(name, enable)
        return
    for module in _modules(model, name):
        module.set_grad_checkpointing(enable)


def _cache_locked_features(model: nn.Module, section: str, name: str, memo_dir: str | None = None) -> None:
    modules = [m for m in _modules(model, name) if hasattr(m, "cache_locked_features")]
    if not modules:
        which = "text.type: hf" if section == "text" else "mmfm's timm vision towers"
        raise ConfigError(f"model.{section}.cache_locked_features: only for {which}; the '{name}' tower of a "
                          f"{type(model).__name__} does not cache its locked features")
    for module in modules:
        module.cache_locked_features(memo_dir=memo_dir)


def apply_tower_settings(model: nn.Module, cfg) -> nn.Module:
    """Apply ``cfg.vision`` / ``cfg.text`` (lock, unlock_last_groups, cache_locked_features, grad_checkpointing) to
    ``model``'s image and text towers: the same rules for every model source. A model without a text tower (a
    captioner) takes the ``vision`` section only."""
    for section, lock in _LOCKS.items():
        if not hasattr(model, lock):
            continue
        tc, name = getattr(cfg, section), _tower_of_section(model, section)
        if tc.lock:
            getattr(model, lock)(tc.unlock_last_groups)
        elif tc.unlock_last_groups:
            raise ConfigError(f"model.{section}.unlock_last_groups: only meaningful with model.{section}.lock: true")
        if tc.cache_locked_features:
            _cache_locked_features(model, section, name, tc.memo_dir)
        if tc.grad_checkpointing:
            set_tower_grad_checkpointing(model, name, True)
    return model
