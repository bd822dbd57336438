"""Recipes: ``data_recipes/NAME/recipe.yaml`` files (shipped as package data) in the ``BuildOptions`` schema.

Relative paths inside a recipe (``source.path``, ``source.image_root``, ``source.questions``,
``source.font``) are resolved against the recipe's folder, so every recipe runs out of the box on
its tiny fixture; point it at real data with ``--input`` / ``--images`` or ``--set source.path=...``.
A path starting with ``~`` is the user's home (``~/.cache/mmfm/...``).
"""
from __future__ import annotations

import os
from pathlib import Path

from mmfm.config import ConfigError, apply_overrides, from_dict, read_yaml

from .options import BuildOptions

PATH_FIELDS = ("path", "image_root", "questions", "font")


def find_recipe(name_or_path: str) -> Path:
    """A recipe path, a recipe folder, or the name of a folder in ``data_recipes/``."""
    from mmfm.config.resources import resource_dir

    recipes = resource_dir("data_recipes")
    p = Path(name_or_path)
    for cand in (p, p / "recipe.yaml", recipes / name_or_path / "recipe.yaml"):
        if cand.is_file():
            return cand
    known = sorted(d.name for d in recipes.iterdir() if (d / "recipe.yaml").is_file())
    raise ConfigError(f"--recipe: {name_or_path} not found (known recipes: {', '.join(known) or 'none'})")


def read_recipe(name_or_path: str) -> dict:
    path = find_recipe(name_or_path)
    data = read_yaml(path)
    source = data.get("source")
    if isinstance(source, dict):
        for key in PATH_FIELDS:
            value = source.get(key)
            if isinstance(value, str) and value.startswith("~"):
                source[key] = value = os.path.expanduser(value)
            if isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value:
                source[key] = str((path.parent / value).resolve())
    return data


def resolve_options(recipe: str | None = None, overrides: list[str] | None = None,
                    data: dict | None = None) -> BuildOptions:
    """defaults <- recipe <- ``data`` (CLI flags, as a nested dict) <- ``--set`` overrides."""
    base = read_recipe(recipe) if recipe else {}
    merged = _merge(base, data or {})
    return from_dict(BuildOptions, apply_overrides(merged, overrides))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
