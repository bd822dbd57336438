"""Shard sources: resolve paths / brace patterns / manifests to shard lists, and preflight them.

A source is one of
* a shard folder holding ``manifest.json`` (sample counts and keys come from it),
* a ``manifest.json`` path,
* a brace pattern or a single ``.tar`` (``data/shard-{000000..000009}.tar``); if the folder has a
  manifest, counts are taken from it for the listed tars,
* an ``http(s)://`` URL pattern (streamed by webdataset; preflight can only count those),
* any of the above as an fsspec URL (``s3://bucket/shards``, ``gs://...``): the manifest is read remotely and
  the shards are streamed through ``mmfm.data.fs.RetryingReader`` (bounded retries with backoff, resuming at
  the same byte, so no sample is lost or repeated). ``pipe:`` is never accepted.

``preflight`` runs before step 1 on every rank (it is deterministic, so all ranks agree and none hangs
on a collective while another has failed). It names the shard in every message.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from mmfm.data import fs
from mmfm.data.shards import ShardError, read_manifest
from mmfm.data.shards.manifest import MANIFEST

REMOTE = ("http://", "https://")


@dataclass
class Shard:
    url: str
    samples: int | None = None
    bytes: int | None = None

    @property
    def local(self) -> bool:
        return not fs.is_remote(self.url)


@dataclass
class Source:
    spec: str
    shards: list[Shard]
    weight: float = 1.0
    keys: dict | None = None             # manifest "keys" (ext -> role) when known
    samples: int | None = None           # total samples, when known


def _expand(spec: str) -> list[str]:
    from webdataset.shardlists import expand_urls
    return expand_urls(spec)


def _from_manifest(path: Path, spec: str, weight: float) -> Source:
    manifest = read_manifest(path)
    folder = path if path.is_dir() else path.parent
    shards = [Shard(str(folder / s["name"]), int(s["samples"]), int(s["bytes"])) for s in manifest["shards"]]
    if not shards:
        raise ShardError(f"{spec}: the manifest lists no shards")
    return Source(spec, shards, weight, dict(manifest.get("keys") or {}), int(manifest["total_samples"]))


def resolve_source(spec: str, weight: float = 1.0) -> Source:
    """One source spec -> ``Source`` (shard list, counts when known). Raises ``ShardError``."""
    spec = str(spec)
    if not spec:
        raise ShardError("a data source is empty")
    if spec.startswith("pipe:"):
        raise ShardError(f"{spec}: 'pipe:' sources are not allowed (no shell commands from configs)")
    if spec.startswith(REMOTE):
        return Source(spec, [Shard(u) for u in _expand(spec)], weight)
    if fs.is_remote(spec):
        return _remote_source(spec, weight)
    spec_path = str(fs.local_path(spec))
    path = Path(spec_path)
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return _from_manifest(path, spec, weight)
        tars = sorted(str(p) for p in path.glob("*.tar"))
        if not tars:
            raise ShardError(f"{spec}: folder has no manifest.json and no .tar shards")
        return Source(spec, [Shard(t) for t in tars], weight)   # counts come from scanning the tars
    if path.name == MANIFEST:
        return _from_manifest(path, spec, weight)
    urls = _expand(spec_path)
    missing = [u for u in urls if not os.path.exists(u)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ShardError(f"shard not found: {missing[0]}{more} (from data source '{spec}')")
    shards = [Shard(u) for u in urls]
    counts = _manifest_counts(Path(urls[0]).parent)
    keys = None
    if counts is not None:
        manifest, by_name = counts
        keys = dict(manifest.get("keys") or {})
        for s in shards:
            entry = by_name.get(Path(s.url).name)
            if entry is not None and Path(s.url).parent == Path(urls[0]).parent:
                s.samples, s.bytes = int(entry["samples"]), int(entry["bytes"])
    total = sum(s.samples for s in shards) if all(s.samples is not None for s in shards) else None
    return Source(spec, shards, weight, keys, total)


def _remote_source(spec: str, weight: float) -> Source:
    """An fsspec URL: a shard folder with manifest.json, a manifest.json, or a brace pattern / single tar."""
    filesystem, path = fs.url_fs(spec, "data source")
    if path.endswith(".json") or filesystem.isfile(f"{path.rstrip('/')}/{MANIFEST}"):
        url = spec if path.endswith(".json") else fs.join(spec, MANIFEST)
        manifest = read_manifest(url)
        folder = url.rsplit("/", 1)[0]
        shards = [Shard(fs.join(folder, s["name"]), int(s["samples"]), int(s["bytes"]))
                  for s in manifest["shards"]]
        if not shards:
            raise ShardError(f"{spec}: the manifest lists no shards")
        return Source(spec, shards, weight, dict(manifest.get("keys") or {}), int(manifest["total_samples"]))
    urls = _expand(spec)
    if len(urls) == 1 and not urls[0].endswith(".tar"):      # a folder of tars without a manifest
        names = sorted(n for n in fs.listing(spec, "data source") if n.endswith(".tar"))
        if not names:
            raise ShardError(f"{spec}: no manifest.json and no .tar shards there")
        urls = [fs.join(spec, n) for n in names]
    return Source(spec, [Shard(u) for u in urls], weight)


def _manifest_counts(folder: Path):
    if not (folder / MANIFEST).is_file():
        return None
    manifest = read_manifest(folder)
    return manifest, {s["name"]: s for s in manifest["shards"]}


def resolve_sources(specs: Iterable) -> list[Source]:
    """``specs``: strings, ``(spec, weight)`` pairs, or objects with ``.path`` / ``.weight`` (SourceConfig)."""
    out = []
    for item in specs:
        if isinstance(item, str):
            out.append(resolve_source(item))
        elif isinstance(item, (tuple, list)):
            out.append(resolve_source(item[0], float(item[1])))
        else:
            out.append(resolve_source(item.path, float(getattr(item, "weight", 1.0))))
    if not out:
        raise ShardError("no data sources given (set data.train to a shard folder, pattern or manifest)")
    return out


# ----------------------------------------------------------------------------------------- preflight
def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split: the extension starts at the first dot of the basename."""
    base = os.path.basename(name)
    dirname = os.path.dirname(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (f"{dirname}/{stem}" if dirname else stem), ext.lower()


def scan_tar(path: str) -> list[tuple[str, set[str]]]:
    """Read a tar's headers (seeking over the data): ``[(key, {exts})]`` in order. Raises ShardError."""
    samples: list[tuple[str, set[str]]] = []
    try:
        size = os.path.getsize(path)
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > size:
                    raise ShardError(f"shard {path} is truncated: member {member.name} needs "
                                     f"{member.offset_data + member.size} bytes, the file has {size}")
                key, ext = _split_key(member.name)
                if key.startswith("__") or not ext:
                    continue
                if samples and samples[-1][0] == key:
                    samples[-1][1].add(ext)
                else:
                    samples.append((key, {ext}))
            if samples and size - tar.offset < 2 * tarfile.BLOCKSIZE:
                raise ShardError(f"shard {path} is truncated: it ends after {size} bytes without the tar "
                                 f"end-of-archive marker (last member {member.name})")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"shard {path} is unreadable or truncated: {e}") from None
    return samples


def _missing(exts: set[str], required: list[str]) -> list[str]:
    return [alt for alt in required if not any(a in exts for a in alt.split(";"))]


def preflight(sources: list[Source], *, readers: int, resampled: bool, required_keys: list[str],
              mode: str = "auto", scan_limit: int = 256) -> None:
    """Check the shards before training. ``readers`` = ranks x workers. Raises ``ShardError`` naming the shard.

    ``mode``: ``full`` scans every tar's headers (truncation, empty shards, required keys on every sample,
    sample counts); ``quick`` stats every shard (missing, empty, size vs manifest) and checks manifest keys;
    ``auto`` = full when there are at most ``scan_limit`` shards in all, else quick; ``off`` skips it.
    """
    if mode == "off":
        return
    total = sum(len(s.shards) for s in sources)
    full = mode == "full" or (mode == "auto" and total <= scan_limit)
    for src in sources:
        if not resampled and len(src.shards) < readers:
            raise ShardError(
                f"data source '{src.spec}' has {len(src.shards)} shard(s) but {readers} readers "
                f"(ranks x data.workers) each need at least one in epoch mode. Use fewer data.workers, "
                f"write more, smaller shards (mmfm shards build --shard-size), or set data.resampled=true.")
        if src.keys:
            present = set(src.keys)
            miss = _missing(present, required_keys)
            if miss:
                raise ShardError(f"data source '{src.spec}': manifest keys {sorted(present)} lack required "
                                 f"key(s) {miss}")
        _check_remote(src)
        for shard in src.shards:
            if not shard.local:
                continue
            _check_shard(shard, required_keys, full)
        if full and src.samples is None and all(s.local for s in src.shards):
            src.samples = sum(s.samples or 0 for s in src.shards)


def _check_remote(src: Source) -> None:
    """fsspec shards: one listing per folder (missing, empty, size vs manifest); the headers are not scanned
    (that would read every byte over the network)."""
    remote = [s for s in src.shards if fs.is_remote(s.url) and not s.url.startswith(REMOTE)]
    folders: dict[str, dict[str, int]] = {}
    for shard in remote:
        folder, name = shard.url.rsplit("/", 1)
        if folder not in folders:
            folders[folder] = fs.listing(folder, "data source")
        size = folders[folder].get(name)
        if size is None:
            raise ShardError(f"shard not found: {shard.url} (from data source '{src.spec}')")
        if size == 0:
            raise ShardError(f"shard {shard.url} is empty (0 bytes)")
        if shard.bytes is not None and size != shard.bytes:
            raise ShardError(f"shard {shard.url} has {size} bytes but its manifest says {shard.bytes}: "
                             f"truncated or modified since `mmfm shards build`")


def _check_shard(shard: Shard, required_keys: list[str], full: bool) -> None:
    path = shard.url
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ShardError(f"shard {path} is unreadable: {e}") from None
    if size == 0:
        raise ShardError(f"shard {path} is empty (0 bytes)")
    if shard.bytes is not None and size != shard.bytes:
        raise ShardError(f"shard {path} has {size} bytes but its manifest says {shard.bytes}: "
                         f"truncated or modified since `mmfm shards build`")
    if not os.access(path, os.R_OK):
        raise ShardError(f"shard {path} is not readable (permissions)")
    if not full:
        return
    samples = scan_tar(path)
    if not samples:
        raise ShardError(f"shard {path} is empty (no samples)")
    for key, exts in samples:
        miss = _missing(exts, required_keys)
        if miss:
            raise ShardError(f"shard {path}: sample '{key}' lacks required key(s) {miss} "
                             f"(it has {sorted(exts)})")
    if shard.samples is not None and shard.samples != len(samples):
        raise ShardError(f"shard {path} holds {len(samples)} samples but its manifest says {shard.samples}")
    shard.samples = len(samples)


# ----------------------------------------------------------------------------------------- evaluation readers
def check_source(spec: str, mode: str = "auto") -> Source:
    """Resolve one shard source and preflight it as ``mmfm train`` does (missing, empty or truncated tars,
    sizes and counts against the manifest), for the commands that read shards outside training (retrieval,
    eval caption/vqa/bias/compare). Raises ``ShardError`` naming the shard before anything is read."""
    src = resolve_source(spec)
    preflight([src], readers=1, resampled=True, required_keys=[], mode=mode)
    return src


def _opened(urls: Iterable[str], handler) -> Iterator[dict]:
    """webdataset's ``url_opener``, with fsspec URLs opened through the retrying reader."""
    from webdataset.gopen import gopen

    for url in urls:
        try:
            stream = fs.open_stream(url) if fs.is_remote(url) and not url.startswith(REMOTE) else gopen(url)
        except Exception as exn:  # noqa: BLE001 - the handler decides (count and skip, or raise)
            exn.args = exn.args + (url,)
            if handler(exn):
                continue
            raise
        yield {"url": url, "stream": stream}


def tar_samples(urls: Iterable[str], handler=None) -> Iterator[dict]:
    """Samples of the tars ``urls`` in order (webdataset's tar expander and key grouping); local paths,
    ``http(s)://`` and fsspec URLs. ``handler`` as in webdataset (default: raise)."""
    from webdataset.handlers import reraise_exception
    from webdataset.tariterators import group_by_keys, tar_file_expander

    handler = handler or reraise_exception
    return group_by_keys(tar_file_expander(_opened(urls, handler), handler=handler), handler=handler)


def read_samples(urls: Iterable[str]) -> Iterator[dict]:
    """WebDataset samples (``__key__``, ``__url__``, one entry per extension) of ``urls`` in order. A shard
    that turns out unreadable while it is read is a ``ShardError`` naming it, not a bare ``tarfile`` error."""
    for url in urls:
        try:
            yield from tar_samples([url])
        except (tarfile.TarError, EOFError, OSError) as e:
            detail = e.args[0] if e.args else ""
            raise ShardError(f"shard {url} is unreadable or truncated: {type(e).__name__}: {detail}") from None
