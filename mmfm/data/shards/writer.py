"""Write WebDataset shards with webdataset's own ``ShardWriter``, plus stats and ``manifest.json``.

Public API::

    from mmfm.data.shards import write_shards, read_manifest
    manifest = write_shards(samples, "out/", shard_size=1000, classes=["cat", "dog"])

``samples`` yields dicts ``{"__key__": str, "jpg"|"png"|"webp": bytes | PIL.Image, "txt": str,
"json": dict, "cls": int}``. Each tar is written to ``NAME.partial`` and renamed when complete, then
gets ``shard-NNNNNN_stats.json``; ``manifest.json`` is written last (atomically).
"""
from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import sys
import types
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable

from .manifest import (IMAGE_EXTS, SHARD_PATTERN, ShardError, atomic_write_json, failed_name, key_role,
                       make_manifest, sha256_file, stats_name, write_manifest)

PARTIAL = ".partial"
TAR_MTIME = 1_700_000_000  # fixed member mtime: the same samples give byte-identical tars
_PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def webdataset_writer() -> types.ModuleType:
    """webdataset's own ``writer`` module (``ShardWriter``, ``TarWriter``).

    ``import webdataset`` runs its ``__init__``, which imports torch (1-3 s and ~300 MB in every
    ``mmfm shards`` call, on a CPU shared with the workers). The writer itself needs only numpy, so when
    webdataset is not imported yet we load the same ``webdataset/writer.py`` under a private package
    name. When webdataset is already imported (training, tests) its module is used as is.
    """
    if "webdataset" in sys.modules:
        return importlib.import_module("webdataset.writer")
    alias = "_mmfm_webdataset"
    if alias + ".writer" in sys.modules:
        return sys.modules[alias + ".writer"]
    spec = importlib.util.find_spec("webdataset")
    if spec is None or not spec.submodule_search_locations:
        return importlib.import_module("webdataset.writer")  # raises a clear ImportError
    pkg = types.ModuleType(alias)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules[alias] = pkg
    try:
        return importlib.import_module(alias + ".writer")
    except Exception:  # noqa: BLE001 - a future webdataset layout: fall back to the plain import
        sys.modules.pop(alias, None)
        return importlib.import_module("webdataset.writer")


def encode_image(image: Any, ext: str, quality: int = 95) -> bytes:
    """PIL image -> encoded bytes in the format named by ``ext`` (jpg, png, webp)."""
    fmt = _PIL_FORMATS[ext]
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    opts = {"quality": quality} if fmt in ("JPEG", "WEBP") else {"optimize": False}
    buf = io.BytesIO()
    image.save(buf, format=fmt, **opts)
    return buf.getvalue()


def encode_sample(sample: dict, quality: int = 95) -> dict:
    """Turn a sample dict into ``{"__key__": str, ext: bytes}`` with deterministic encodings."""
    if "__key__" not in sample or not isinstance(sample["__key__"], str) or not sample["__key__"]:
        raise ShardError(f"sample is missing a string '__key__': keys {sorted(sample)}")
    key = sample["__key__"]
    if "." in key or "/" in key:
        raise ShardError(f"sample key {key!r}: '.' and '/' are not allowed in WebDataset keys")
    out: dict[str, Any] = {"__key__": key}
    for ext, value in sample.items():
        if ext.startswith("__"):
            continue
        if isinstance(value, (bytes, bytearray, memoryview)):
            out[ext] = bytes(value)
        elif ext in IMAGE_EXTS:
            out[ext] = encode_image(value, ext, quality)
        elif ext == "json":
            out[ext] = json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")
        elif ext == "cls":
            out[ext] = str(int(value)).encode("ascii")
        elif isinstance(value, str):
            out[ext] = value.encode("utf-8")
        else:
            raise ShardError(f"sample {key!r}: field '{ext}' has type {type(value).__name__}; "
                             "give bytes, str, a PIL image (jpg/png/webp), a dict (json) or an int (cls)")
    return out


def light_stats(stats: dict) -> dict:
    """A shard's stats without its per-sample lists (image digests; ``failed_items`` of older builds), which stay
    in its stats file only: what a build keeps in memory per shard, so memory does not grow with the samples."""
    return {k: v for k, v in stats.items() if k not in ("image_sha256", "failed_items")}


class ShardSink:
    """Streams encoded samples into ``OUT/shard-%06d.tar`` through ``webdataset.ShardWriter``.

    ``write(sample, state)`` takes an already encoded sample and an optional ``state`` dict (the
    builder's resume position after this sample); the state of a shard's last sample is stored in its
    ``_stats.json`` so ``--resume`` can continue exactly after the last complete shard.
    """

    def __init__(self, out_dir: str | os.PathLike, shard_size: int = 1000, start_shard: int = 0,
                 max_shard_bytes: float = 3e12, on_shard: Callable[[dict], None] | None = None):
        wds = webdataset_writer()
        if shard_size < 1:
            raise ShardError(f"shard_size: must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size = int(shard_size)
        self.max_shard_bytes = max_shard_bytes
        self.on_shard = on_shard
        self.shards: list[dict] = []
        self.keys: Counter = Counter()
        self.tail_failed: Path | None = None   # after close(): the skipped inputs after the last shard
        self.timer: Callable[[str], Any] = lambda name: nullcontext()   # a profile's section timer
        self._file = None
        self._failed_file = None
        self._reset_shard()
        self._writer = wds.ShardWriter(str(self.out_dir / SHARD_PATTERN), maxcount=self.shard_size,
                                       maxsize=max_shard_bytes, start_shard=start_shard, verbose=0,
                                       opener=self._open, post=self._finish, mtime=TAR_MTIME)

    def _reset_shard(self) -> None:
        self._keys: Counter = Counter()
        self._first_key = self._last_key = None
        self._state: dict = {}
        self._hashes: list = []
        self._failed = 0

    def _open(self, fname: str):
        self._file = open(fname + PARTIAL, "wb")
        return self._file

    def _finish(self, fname: str) -> None:
        """ShardWriter's ``post`` hook: close, drop empty tars, rename, write stats."""
        count = self._writer.count
        self._file.close()
        self._file = None
        partial = fname + PARTIAL
        if count == 0:
            os.unlink(partial)
            self.tail_failed = self._close_failed(partial_of=fname)
            self._reset_shard()
            return
        os.replace(partial, fname)
        name = os.path.basename(fname)
        with self.timer("sha256 of finished shards"):
            digest = sha256_file(fname)
        stats = {"name": name, "samples": count, "bytes": os.path.getsize(fname), "sha256": digest,
                 "keys": dict(sorted(self._keys.items())), "first_key": self._first_key,
                 "last_key": self._last_key, **self._state}
        if self._hashes:
            stats["image_sha256"] = self._hashes
        stats["failed"] = self._failed
        if self._failed:     # the records went to a file as they came (no cap, no memory): it is now complete
            os.replace(self._close_failed(partial_of=fname), self.out_dir / failed_name(name))
        atomic_write_json(self.out_dir / stats_name(name), stats)
        if self.on_shard is not None:
            self.on_shard(stats)
        self.shards.append(light_stats(stats))
        self._reset_shard()

    def note_failed(self, record: dict) -> None:
        """Record a skipped input (every one) in ``shard-NNNNNN_failed.jsonl`` of the shard being written."""
        if self._failed_file is None:
            self._failed_file = open(self._failed_partial(self._writer.fname), "w", encoding="utf-8")
        self._failed_file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._failed += 1

    def _failed_partial(self, tar: str) -> Path:
        return self.out_dir / (failed_name(os.path.basename(tar)) + PARTIAL)

    def _close_failed(self, partial_of: str) -> Path | None:
        if self._failed_file is None:
            return None
        self._failed_file.close()
        self._failed_file = None
        return self._failed_partial(partial_of)

    def abort(self) -> None:
        """Drop the shard being written (after an error or Ctrl-C); complete shards stay."""
        if self._writer is not None and self._file is not None:
            try:
                self._writer.tarstream.close()
            except Exception:  # noqa: BLE001 - we are discarding it anyway
                pass
            self._file.close()
            if os.path.exists(self._file.name):
                os.unlink(self._file.name)
            self._file = None
        if self._writer is not None and (failed := self._close_failed(partial_of=self._writer.fname)):
            failed.unlink(missing_ok=True)
        self._writer = None

    def write(self, sample: dict, state: dict | None = None, image_hash=None) -> None:
        self._writer.write(sample)
        key = sample["__key__"]
        self._first_key = self._first_key or key
        self._last_key = key
        exts = [k for k in sample if not k.startswith("__")]
        self._keys.update(exts)
        self.keys.update(exts)
        if state is not None:
            self._state = state
        if image_hash is not None:
            self._hashes.append(image_hash)
        if self._writer.count >= self.shard_size or self._writer.size >= self.max_shard_bytes:
            self._writer.next_stream()  # finish this shard now, so a kill never loses a full shard

    def close(self) -> list[dict]:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.shards


def write_shards(samples: Iterable[dict], out_dir: str | os.PathLike, shard_size: int = 1000, *,
                 classes: list[str] | None = None, args: dict | None = None,
                 failures: dict[str, int] | None = None, quality: int = 95, **extra: Any) -> dict:
    """Write ``samples`` as WebDataset shards + stats + ``manifest.json`` into ``out_dir``.

    Returns the manifest dict. Existing ``shard-*.tar`` files in ``out_dir`` are an error (no silent mix).
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.glob("shard-*.tar")):
        raise ShardError(f"{out_dir}: already holds shards; use an empty folder")
    sink = ShardSink(out_dir, shard_size=shard_size)
    try:
        for sample in samples:
            sink.write(encode_sample(sample, quality))
    finally:
        shards = sink.close()
    keys = {ext: key_role(ext) for ext in sink.keys}
    manifest = make_manifest(shards, keys, args=args, failures=failures, classes=classes, **extra)
    write_manifest(out_dir, manifest)
    return manifest
