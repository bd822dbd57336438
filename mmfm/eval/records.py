"""Evaluation samples read straight from WebDataset shards: one reader for the caption, VQA, bias and compare
evaluations (the image bytes stay undecoded until a model needs them)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def shard_records(data: str) -> Iterator[dict]:
    """Raw shard samples in order: ``{"key", "image" (bytes or None), "meta" (json dict, {} when missing or not a
    mapping), "txt", "cls" (int or None), "name" ("shard.tar:key")}``."""
    import webdataset as wds

    from .retrieval import shard_urls

    for s in wds.WebDataset(shard_urls(str(data)), shardshuffle=False, nodesplitter=None, empty_check=False):
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
