"""The inputs of ``mmfm eval compare``: named data sets (``NAME=PATH``), what each one is scored by for the models'
kind, and the probe train folders that go with them."""
from __future__ import annotations

from pathlib import Path

from mmfm.config import ConfigError

from ..records import is_shard_source, read_rows, shard_records

__all__ = ["parse_data", "probe_folders", "data_kind"]


def parse_data(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after its file or folder, without the extension) -> ``(name, path)``."""
    name, sep, path = str(spec).partition("=")
    if sep and name and "/" not in name and path:
        return name, path
    return Path(str(spec).rstrip("/")).stem or str(spec), str(spec)


def probe_folders(probe_train, data_names: list[str]) -> dict[str, str]:
    """``--probe-train`` entries (``NAME=FOLDER`` or ``FOLDER``; a string or a list) -> ``{data name: folder}``.
    A bare folder is the default of every data set; a name that no ``--data`` has is an error naming it."""
    entries = [probe_train] if isinstance(probe_train, str) else list(probe_train or [])
    named: dict[str, str] = {}
    default = None
    for entry in entries:
        name, sep, folder = str(entry).partition("=")
        if sep and name and "/" not in name and folder:
            if name not in data_names:
                raise ConfigError(f"--probe-train {entry}: no --data is named {name!r} (the data sets: "
                                  f"{', '.join(data_names)})")
            if name in named:
                raise ConfigError(f"--probe-train: two train folders for the data set {name!r}")
            named[name] = folder
        elif default is not None:
            raise ConfigError(f"--probe-train: two unnamed train folders ({default}, {entry}); name them "
                              f"NAME=FOLDER after their --data")
        else:
            default = str(entry)
    return {n: named.get(n, default) for n in data_names if named.get(n, default)}


def _first_row(path: str) -> dict:
    if is_shard_source(path):
        r = next(iter(shard_records(path)), None)
        return {} if r is None else dict(r["meta"], question=r["meta"].get("question"))
    rows = read_rows(path, "--data")
    return rows[0] if rows else {}


def data_kind(path: str, model_kind: str) -> str:
    """``folder`` | ``pairs`` | ``captions`` | ``vqa`` for a data set and the models' kind: an image folder (a folder
    that is not shards, ``mmfm.eval.records.is_shard_source``) is scored by zero-shot classification, anything
    else by retrieval (CLIP) or by captions or questions (captioners, by the fields of its first row)."""
    p = Path(path)
    shards = is_shard_source(path)
    if not (shards or p.exists()):
        raise ConfigError(f"--data {path}: not found")
    if p.is_dir() and not shards:
        if model_kind != "clip":
            raise ConfigError(f"--data {path}: an image folder is scored by zero-shot classification, which needs "
                              f"CLIP models, not {model_kind}s")
        return "folder"
    if model_kind == "clip":
        return "pairs"
    row = _first_row(path)
    return "vqa" if row.get("question") and (row.get("answers") or row.get("answer")) else "captions"
