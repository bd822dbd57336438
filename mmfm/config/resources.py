"""Where the files that ship with mmfm live: ``resource_dir("configs", "models")``, ``resource_dir("data_recipes")``.

They are package data of ``mmfm.resources`` (read with ``importlib.resources``), so named models, decoding
presets, data recipes and the demo's configs work the same from a source checkout, an editable install and a
plain ``pip install`` of the wheel.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .core import ConfigError

__all__ = ["experiment_path", "resource_dir"]

_SHIPPED_PREFIX = "configs/experiments/"


def resource_dir(*parts: str) -> Path:
    """The shipped folder ``parts`` (e.g. ``"configs", "generate"``) as a filesystem path."""
    root = resources.files("mmfm.resources")
    target = root.joinpath(*parts)
    path = Path(str(target))
    if not path.is_dir():
        raise ConfigError(f"mmfm's package data has no folder {'/'.join(parts)} (looked in {path}); "
                          f"reinstall mmfm")
    return path


def experiment_path(spec: str | os.PathLike) -> Path:
    """An experiment config: a YAML path, else a name in the shipped ``configs/experiments`` (``demo/caption``,
    ``demo/caption.yaml``, or the checkout path ``configs/experiments/demo/caption.yaml``, so the commands in the
    docs work from any folder after a pip install). A name that is neither says where the named configs live."""
    path = Path(os.path.expanduser(str(spec)))
    if path.is_file():
        return path
    shipped = resource_dir("configs", "experiments")
    name = str(spec).replace(os.sep, "/")
    name = name[len(_SHIPPED_PREFIX):] if name.startswith(_SHIPPED_PREFIX) else name
    for cand in (shipped / name, shipped / f"{name}.yaml"):
        if cand.is_file():
            return cand
    names = sorted(q.relative_to(shipped).with_suffix("").as_posix() for q in shipped.rglob("*.yaml"))
    import difflib
    close = difflib.get_close_matches(name.removesuffix(".yaml"), names, n=1, cutoff=0.6)
    groups = sorted({n.split("/", 1)[0] + "/" for n in names if "/" in n})
    raise ConfigError(f"config file not found: {spec}." + (f" Did you mean '{close[0]}'?" if close else "")
                      + f" Named configs (e.g. mmfm train demo/caption) live in {shipped}: {', '.join(groups)} "
                      f"({len(names)} in all)")
