"""Evaluation samples read straight from WebDataset shards: one reader for the caption, VQA, bias and compare
evaluations (the image bytes stay undecoded until a model needs them). Shards go through the training
preflight first, so a truncated tar is a ``ShardError`` naming it, as in ``mmfm train``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def shard_urls(data: str) -> list[str]:
    """The tars of a shard folder, manifest, ``.tar`` or brace pattern, after the preflight ``mmfm train`` runs
    (``mmfm.data.sources.check_source``): a missing, empty or truncated shard is a ``ShardError`` naming it."""
    from mmfm.data.sources import check_source
    return [s.url for s in check_source(str(data)).shards]


def shard_records(data: str) -> Iterator[dict]:
    """Raw shard samples in order: ``{"key", "image" (bytes or None), "meta" (json dict, {} when missing or not a
    mapping), "txt", "cls" (int or None), "name" ("shard.tar:key")}``."""
    from mmfm.data.sources import read_samples

    for s in read_samples(shard_urls(str(data))):
        try:
            meta = json.loads(s["json"]) if "json" in s else {}
        except (ValueError, UnicodeDecodeError):
            meta = {}
        try:
            cls = int(s["cls"].decode().strip()) if "cls" in s else None
        except ValueError:
            cls = None
        key = next((k for k in SHARD_IMAGE_KEYS if k in s), None)
        yield {"key": s["__key__"], "image": s[key] if key else None, "meta": meta if isinstance(meta, dict) else {},
               "txt": s["txt"].decode("utf-8", "replace").strip() if "txt" in s else "", "cls": cls,
               "name": f"{os.path.basename(s.get('__url__', '?'))}:{s['__key__']}"}


def references(record: dict) -> list[str]:
    """Reference captions of a record: the json ``captions`` list, else its ``txt``."""
    refs = [c.strip() for c in record["meta"].get("captions") or [] if isinstance(c, str) and c.strip()]
    return refs or ([record["txt"]] if record["txt"] else [])


def is_shards(data: str) -> bool:
    """A brace pattern, a .tar, or a folder holding a manifest or tars."""
    p = Path(str(data))
    return "{" in str(data) or p.suffix == ".tar" or (p.is_dir() and (
        (p / "manifest.json").is_file() or any(p.glob("*.tar"))))
