"""Typed configs: dataclasses built from YAML/dicts with strict checking.

* ``from_dict(Cls, data)`` builds a (nested) dataclass and checks every key and type.
  An unknown key raises ``ConfigError`` naming the dotted key and the closest valid key.
* ``ranged(default, ge=1)`` declares a field's bounds next to it (sizes, counts, ratios); ``from_dict``
  checks them: ``data.batch_size: must be >= 1, got 0``.
* ``apply_overrides(data, ["train.lr=1e-4"])`` applies ``--set`` style dotted overrides
  (values parsed as YAML, so ``true``, ``3``, ``[1, 2]`` work).
* ``load_config(path, Cls, overrides)`` reads YAML (with ``_base_: other.yaml`` inheritance).
* ``to_dict`` / ``save_config`` write the resolved config (atomically).
"""
from __future__ import annotations

import dataclasses
import difflib
import operator
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .files import atomic_write, atomic_write_text   # noqa: F401  (mmfm.config.core.atomic_write: the old home)


class ConfigError(ValueError):
    """A config key, type or value is wrong. The message names the dotted key."""


class InputError(ConfigError):
    """An input the user named (an image folder, a data file) is missing or unreadable. The message names the path.
    A ConfigError too, so every handler of bad settings handles it; the CLI says "input error"."""


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else f" Valid keys: {', '.join(sorted(valid))}."


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it, converted where lossless."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1 and isinstance(value, dict):   # an optional section: its own error names the field
            raise ConfigError(errors[0])
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}."
                              + (_closest(str(value), [str(a) for a in allowed]) if isinstance(value, str) else ""))
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        out = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


_BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def ranged(default: Any, **bounds: float) -> Any:
    """A dataclass field with bounds that :func:`from_dict` checks (``ge``, ``gt``, ``le``, ``lt``; ``None`` is
    not checked, a list or tuple is checked item by item): ``batch_size: int = ranged(32, ge=1)``."""
    unknown = sorted(set(bounds) - set(_BOUNDS))
    if unknown or not bounds:
        raise TypeError(f"ranged: bounds are {sorted(_BOUNDS)}, got {sorted(bounds)}")
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def _check_bounds(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        bounds = f.metadata.get("bounds")
        value = getattr(obj, f.name)
        if not bounds or value is None:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, v in items:
            if not all(_BOUNDS[op][1](v, b) for op, b in bounds.items()):
                rule = " and ".join(f"{_BOUNDS[op][0]} {b}" for op, b in bounds.items())
                raise ConfigError(f"{key}{'' if i is None else f'[{i}]'}: must be {rule}, got {v!r}")


def from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key '{dotted}'.{_closest(str(key), list(fields))}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None
    return check_config(obj, prefix)


def check_config(obj: Any, prefix: str = "") -> Any:
    """Check one built config dataclass: its :func:`ranged` bounds, then its own ``validate()`` (cross-field
    rules). :func:`from_dict` calls it; call it after ``dataclasses.replace`` on a config."""
    _check_bounds(obj, prefix)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{prefix}.{e}" if prefix and not str(e).startswith(prefix) else str(e)) from None
    return obj


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping, following ``_base_: relative/or/absolute.yaml`` (a str or a list)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    bases = data.pop("_base_", None)
    if bases:
        merged: dict = {}
        for b in [bases] if isinstance(bases, str) else bases:
            merged = _deep_merge(merged, read_yaml((path.parent / b) if not os.path.isabs(b) else b))
        data = _deep_merge(merged, data)
    return data


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` overrides to a nested dict (values parsed as YAML)."""
    data = dict(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override '{key}': '{p}' is not a section")
            node[p] = dict(nxt)
            node = node[p]
        node[parts[-1]] = value
    return data


def apply_values(data: dict, values: dict | None) -> dict:
    """Apply ``{"a.b.c": value}`` (Python values, no YAML parsing) to a nested dict: the typed twin of
    :func:`apply_overrides`, for applications that build configs in code."""
    data = dict(data)
    for key, value in (values or {}).items():
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is not None and not isinstance(nxt, dict):
                raise ConfigError(f"value for '{key}': '{p}' is not a section")
            node[p] = dict(nxt or {})
            node = node[p]
        node[parts[-1]] = value
    return data


def load_config(path: str | os.PathLike | None, cls: type, overrides: list[str] | None = None,
                data: dict | None = None) -> Any:
    """YAML file (or dict) + dotted overrides -> validated dataclass instance."""
    base = read_yaml(path) if path else dict(data or {})
    return from_dict(cls, apply_overrides(base, overrides))


def save_config(obj: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True))
