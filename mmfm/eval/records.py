"""Where evaluation samples come from: the one place that tells shards from tables and reads either.

* ``is_shard_source(data)``: the one "is this shards" rule of every evaluation (retrieval, caption, VQA, bias,
  compare and the in-training hooks).
* Shards (a folder with ``manifest.json`` or tars, a manifest, a ``.tar``, a brace pattern, or a URL) go through the
  training preflight first, so a truncated tar is a ``ShardError`` naming it, as in ``mmfm train``; then
  ``shard_records`` yields raw samples (the image bytes stay undecoded until a model needs them).
* Tables (CSV or JSONL) are read by ``read_rows`` (the rows as dicts) and ``read_table`` (an image path column and
  caption(s) per row, grouped by image); relative image paths are resolved against the file's folder.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mmfm.config import ConfigError
from mmfm.data import fs

SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MANIFEST = "manifest.json"
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
IMAGE_COLUMNS = ("image", "image_path", "filepath", "path", "file", "filename", "img", "jpg")
CAPTION_COLUMNS = ("captions", "caption", "text", "title", "txt", "alt")


# ----------------------------------------------------------------------------- which
def is_shard_source(data) -> bool:
    """Shards, as ``mmfm.data.sources.resolve_source`` reads them, rather than a table or an image folder: a brace
    pattern, a ``.tar``, a ``manifest.json``, a local folder holding a manifest or tars, or a URL that does not
    name a table (``.csv``/``.tsv``/``.jsonl``; a remote folder cannot be told apart without listing it, and its
    preflight names what is missing). A local folder without either is an image folder, not shards."""
    text = str(data)
    if fs.is_remote(text):
        return not text.endswith(TABLE_SUFFIXES)
    p = fs.local_path(text)
    if "{" in text or p.suffix == ".tar" or p.name == MANIFEST:
        return True
    return p.is_dir() and ((p / MANIFEST).is_file() or any(p.glob("*.tar")))


# ----------------------------------------------------------------------------- shards
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


# ----------------------------------------------------------------------------- tables
@dataclass
class TableData:
    """CSV/JSONL image-caption data: one entry per distinct image."""
    source: str
    paths: list[str]
    captions: list[list[str]]


def read_rows(path: str | os.PathLike, what: str = "retrieval data") -> list[dict]:
    """The rows of a CSV (header row) or JSONL file as dicts; ``what`` names the data in errors."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {p}: a folder with no manifest.json and no .tar shards; expected a shard folder, "
                          f"a .tar, or a .csv/.jsonl file")
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    ext = p.suffix.lower()
    if ext == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if ext in (".jsonl", ".json"):
        rows = []
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"{p} line {n}: invalid JSON ({e})") from None
        return rows
    raise ConfigError(f"{what} {p}: expected a shard folder, a .tar, or a .csv/.jsonl file")


def read_table(path: str | os.PathLike, image_key: str | None = None, caption_key: str | None = None, *,
               what: str = "retrieval data") -> TableData:
    """A CSV/JSONL of image paths and captions (``captions`` list, ``caption``, ``text``, ...); rows that repeat an
    image path add captions to it. ``what`` names the data in errors."""
    p = Path(path)
    rows = read_rows(p, what)
    if not rows:
        raise ConfigError(f"{p} holds no rows")
    cols = list(rows[0].keys())
    ikey = image_key or next((c for c in IMAGE_COLUMNS if c in cols), None)
    ckey = caption_key or next((c for c in CAPTION_COLUMNS if c in cols), None)
    for key, what, opts in ((ikey, "image path", IMAGE_COLUMNS), (ckey, "caption", CAPTION_COLUMNS)):
        if key is None or key not in cols:
            raise ConfigError(f"{p}: no {what} column (looked for {key or ', '.join(opts)}; "
                              f"columns are {', '.join(cols)}); name it with --{what.split()[0]}-key")
    order: dict[str, list[str]] = {}
    for n, row in enumerate(rows, start=1):
        img, caps = row.get(ikey), row.get(ckey)
        if not img:
            raise ConfigError(f"{p} row {n}: empty '{ikey}'")
        caps = _as_captions(caps, p, n, ckey)
        full = img if os.path.isabs(img) else str(p.parent / img)
        order.setdefault(full, []).extend(caps)
    paths = list(order)
    return TableData(str(p), paths, [order[k] for k in paths])


def _as_captions(value, p, n, key) -> list[str]:
    if isinstance(value, str) and value.startswith("[") and key == "captions":
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    caps = [value] if isinstance(value, str) else list(value or [])
    caps = [str(c).strip() for c in caps if str(c).strip()]
    if not caps:
        raise ConfigError(f"{p} row {n}: no caption in '{key}'")
    return caps
