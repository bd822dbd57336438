"""``manifest.json`` and ``shard-NNNNNN_stats.json``: what the shard builder promises the loader.

Format (docs/architecture.md section 1)::

    {"format": "mmfm-shards/1",
     "shards": [{"name": "shard-000000.tar", "samples": 1000, "bytes": 123, "sha256": "..."}],
     "total_samples": 1000,
     "keys": {"jpg": "image", "txt": "caption", "json": "metadata", "cls": "label"},
     "args": {...}, "failures": {"not_an_image": 2}, "classes": ["cat", "dog"]}
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mmfm.config import ConfigError, atomic_write
from mmfm.data import fs

FORMAT = "mmfm-shards/1"
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-%06d.tar"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
KEY_ROLES = {"txt": "caption", "json": "metadata", "cls": "label"}


class ShardError(ConfigError):
    """A shard folder, manifest or tar is missing or corrupt. The message names the file."""


def key_role(ext: str) -> str:
    if ext in IMAGE_EXTS:
        return "image"
    return KEY_ROLES.get(ext, "data")


def stats_name(shard_name: str) -> str:
    """``shard-000003.tar`` -> ``shard-000003_stats.json``."""
    return shard_name[: -len(".tar")] + "_stats.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` via a temp file + ``os.replace`` (never half-written), synced to disk."""
    atomic_write(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n", fsync=True)


def make_manifest(shards: list[dict], keys: dict[str, str], args: dict | None = None,
                  failures: dict[str, int] | None = None, classes: list[str] | None = None,
                  **extra: Any) -> dict:
    entries = [{k: s[k] for k in ("name", "samples", "bytes", "sha256")} for s in shards]
    manifest = {
        "format": FORMAT,
        "shards": entries,
        "total_samples": sum(s["samples"] for s in entries),
        "keys": dict(sorted(keys.items())),
        "args": args or {},
        "failures": dict(sorted((failures or {}).items())),
        "classes": list(classes) if classes else [],
    }
    manifest.update(extra)
    return manifest


def write_manifest(out_dir: str | os.PathLike, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST
    atomic_write_json(path, manifest)
    return path


def read_manifest(path: str | os.PathLike) -> dict:
    """Read ``DIR/manifest.json`` (or the manifest file itself) and check its format.

    ``path`` may be an fsspec URL (``s3://bucket/shards``). Raises ``ShardError`` naming the file when it is
    missing, not JSON, or not ``mmfm-shards/1``.
    """
    if fs.is_remote(path):
        path = str(path) if str(path).endswith(".json") else fs.join(str(path), MANIFEST)
        if not fs.exists(path, "manifest"):
            raise ShardError(f"{path}: no manifest.json (build shards with `mmfm shards build`)")
        text = fs.read_text(path, "manifest")
    else:
        path = fs.local_path(path)
        if path.is_dir():
            path = path / MANIFEST
        if not path.is_file():
            raise ShardError(f"{path}: no manifest.json (build shards with `mmfm shards build`)")
        text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ShardError(f"{path}: format is {got!r}, expected {FORMAT!r}")
    for field in ("shards", "total_samples", "keys"):
        if field not in data:
            raise ShardError(f"{path}: missing field '{field}'")
    for i, s in enumerate(data["shards"]):
        for field in ("name", "samples", "bytes", "sha256"):
            if field not in s:
                raise ShardError(f"{path}: shards[{i}] is missing '{field}'")
    data.setdefault("failures", {})
    data.setdefault("classes", [])
    data.setdefault("args", {})
    return data


def shard_paths(path: str | os.PathLike) -> list[Path]:
    """Absolute paths of the tars a manifest lists, in order."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return [folder / s["name"] for s in read_manifest(path)["shards"]]
