"""Where the files that ship with mmfm live: ``resource_dir("configs", "models")``, ``resource_dir("data_recipes")``.

They are package data of ``mmfm.resources`` (read with ``importlib.resources``), so named models, decoding
presets, data recipes and the demo's configs work the same from a source checkout, an editable install and a
plain ``pip install`` of the wheel.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from .core import ConfigError

__all__ = ["resource_dir"]


def resource_dir(*parts: str) -> Path:
    """The shipped folder ``parts`` (e.g. ``"configs", "generate"``) as a filesystem path."""
    root = resources.files("mmfm.resources")
    target = root.joinpath(*parts)
    path = Path(str(target))
    if not path.is_dir():
        raise ConfigError(f"mmfm's package data has no folder {'/'.join(parts)} (looked in {path}); "
                          f"reinstall mmfm")
    return path
