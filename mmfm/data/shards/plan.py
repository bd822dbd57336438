"""The plan of a shard build, shared by its two executors, which are peers: ``executor_local.py`` (worker processes
on this machine, the default) and ``executor_ray.py`` (partitions of the input as Ray tasks).

What both executors agree on, so that they write the same samples under the same keys:

- **inputs** are numbered in source order; the number is the sample key (``process.sample_key``);
- **splits**: each input goes to one output folder (the whole build, or ``train`` / ``heldout`` by a seeded hash
  of ``holdout_by`` or the input's split key): ``route``;
- **chunks**: inputs reach the workers ``CHUNK`` at a time, and ``process.process_chunk`` returns one typed
  ``process.ItemResult`` per input, in input order;
- **dedup**: the first good sample of an image in input order is kept, a later one is skipped as ``duplicate``;
- **failures**: every skipped input is one line of its split's ``failures.jsonl``, in input order. A sink records
  them next to the shard it is writing (``shard-NNNNNN_failed.jsonl``) or, after its last shard, in a tail; a
  ``Segment`` is one sink's shards and tail, and a split's list is its segments' records, segment by segment;
- **the output folder**: ``prepare_out`` checks ``--resume`` / ``--overwrite`` against ``build_args.json``, and
  ``finish`` commits a split: ``failures.jsonl``, then ``manifest.json`` last.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mmfm.config import ConfigError, atomic_path, to_dict
from mmfm.data import fs

from . import retry
from .digests import DigestIndex
from .manifest import (BUILD_ARGS, FAILURES, MANIFEST, atomic_write_json, failed_name, key_role, make_manifest,
                       stats_name, write_manifest)
from .options import RUNTIME_ONLY, BuildOptions
from .store import Store

CHUNK = 32   # inputs per task handed to a worker


class EmptyBuildError(ConfigError):
    """The build wrote no sample at all (no inputs, or every input skipped); the message says why."""


def split_names(opts: BuildOptions) -> list[str]:
    """The output folders: ``[""]`` (the build itself) or ``["train", "heldout"]`` with ``holdout``."""
    return ["train", "heldout"] if opts.holdout > 0 else [""]


class Split:
    """One output folder (the whole build, or ``train`` / ``heldout``) and its failure counts."""

    def __init__(self, name: str, store: Store):
        self.name, self.store, self.folder = name, store, store.local
        self.failures: Counter = Counter()

    @classmethod
    def for_build(cls, root: Store, opts: BuildOptions) -> list:
        return [cls(n, root.child(n) if n else root) for n in split_names(opts)]


@dataclass
class Segment:
    """Shards that one sink wrote, in input order, and the inputs it skipped after its last shard: the sink's tail
    file (deleted once read) or the records themselves (a Ray partition's marker)."""
    shards: list[dict] = field(default_factory=list)
    tail: Path | list[dict] | None = None


def shard_number(name: str) -> int:
    digits = name[len("shard-"):len("shard-") + 6]
    return int(digits) if digits.isdigit() else -1


def split_of(item: dict, opts: BuildOptions, names: list[str]) -> int:
    if len(names) == 1:
        return 0
    if opts.holdout_by:
        meta = item.get("meta", {})
        if opts.holdout_by not in meta and not item.get("error"):
            raise ConfigError(f"holdout_by: the source has no field '{opts.holdout_by}' "
                              f"(fields: {', '.join(sorted(meta)) or 'none'})")
        value = meta.get(opts.holdout_by)
    else:
        value = item.get("split_key")
    h = hashlib.sha1(f"{opts.holdout_seed}:{value}".encode("utf-8", "surrogatepass")).digest()
    return 1 if int.from_bytes(h[:8], "big") / 2**64 < opts.holdout else 0


def route(items: Iterator[tuple[int, dict]], opts: BuildOptions) -> Iterator[tuple[int, dict]]:
    """Numbered items, each with its ``split`` (an index into ``split_names``), which the workers carry into their
    ``ItemResult``."""
    names = split_names(opts)
    return ((i, dict(it, split=split_of(it, opts, names))) for i, it in items)


def chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def chunk_timeout(opts: BuildOptions) -> float:
    """Seconds one chunk may take: every input's downloads with their retries, and a margin."""
    d = opts.download
    per_item = d.timeout * (d.retries + 1) + d.backoff * (2 ** d.retries)
    if d.per_host:    # one host's items may run per_host at a time, shared with the other workers
        return per_item * (CHUNK * max(1, opts.workers) // min(d.threads, d.per_host) + 1) + 120.0
    return per_item * max(1, CHUNK // d.threads + 1) + 120.0


def progress(total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", dynamic_ncols=True, disable=not enabled,
                mininterval=0.5, smoothing=0.1, desc="shards")


# --- the output folder: --resume / --overwrite ---------------------------------------------------------------

def fingerprint(opts: BuildOptions) -> dict:
    """The options that decide the output (``build_args.json``; ``--resume`` compares them)."""
    args = to_dict(opts)
    for dotted in RUNTIME_ONLY:
        node = args
        *head, last = dotted.split(".")
        for h in head:
            node = node[h]
        node.pop(last, None)
    if args["distributor"]["kind"] == "local":
        args.pop("distributor")   # a local build's args read as before the distributor option existed
    return args


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _diff(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(f"{prefix}{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return out


def prepare_out(root: Store, splits: list[Split], opts: BuildOptions, resume: bool, overwrite: bool) -> None:
    """Check --resume/--overwrite against what ``root`` holds, clear a replaced build, write ``build_args.json``.
    Each executor then restores what it keeps of an unfinished build its own way."""
    out = root.target
    root.local.mkdir(parents=True, exist_ok=True)
    has_args = BUILD_ARGS in root.sizes()
    has_output = has_args or any(MANIFEST in names or any(n.startswith("shard-") for n in names)
                                 for names in (s.store.sizes() for s in splits))
    if resume and not has_args and has_output:
        raise ConfigError(f"--resume: {out} has shards but no {BUILD_ARGS}, so it was not written by "
                          "`mmfm shards build`; nothing to resume (use --overwrite or another --out)")
    if resume and has_args:
        before = root.read_json(BUILD_ARGS)
        changed = _diff(before, fingerprint(opts))
        if changed:
            raise ConfigError(f"--resume: {out} was built with other options ({'; '.join(changed)}); "
                              "use the same options or --overwrite")
    elif has_output and not resume:
        if not overwrite:
            raise ConfigError(f"{out}: already holds a shard build; use --resume to continue it or "
                              "--overwrite to replace it")
        for s in splits:
            s.store.delete(n for n in s.store.sizes() if n.startswith("shard-") or n in (MANIFEST, FAILURES))
    if not resume:
        drop_index(root)
    for s in splits:
        s.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root.local / BUILD_ARGS, fingerprint(opts))
    root.publish(BUILD_ARGS)


def publish_shard(store: Store, stats: dict) -> None:
    """Upload a finished shard of a remote build in commit order: its tar, its ``_failed.jsonl``, then its stats
    (which make it count for --resume); the local copies of the first two go."""
    store.publish(stats["name"], keep_local=False)
    if stats.get("failed"):
        store.publish(failed_name(stats["name"]), keep_local=False)
    store.publish(stats_name(stats["name"]))


def drop_index(root: Store) -> None:
    """Delete the dedup index (``digests.py``): only an unfinished build needs it, for --resume."""
    for suffix in ("", "-wal", "-shm"):
        (root.local / (DigestIndex.NAME + suffix)).unlink(missing_ok=True)


# --- the commit: failures.jsonl, then manifest.json -------------------------------------------------------------

def _shard_failures(split: Split, st: dict) -> Iterator[str]:
    """One shard's skipped inputs as JSON lines: its ``_failed.jsonl`` (streamed). Builds before these files kept
    up to 1000 records per shard in the stats (``failed_items``)."""
    if "failed" not in st:
        stats = split.store.read_json(stats_name(st["name"])) if split.store.remote else \
            json.loads((split.folder / stats_name(st["name"])).read_text(encoding="utf-8"))
        yield from (json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in stats.get("failed_items", []))
    elif st.get("failed"):
        local = split.folder / failed_name(st["name"])
        if local.is_file():
            with open(local, encoding="utf-8") as f:
                yield from f
        else:
            yield from split.store.read_text(failed_name(st["name"])).splitlines(keepends=True)


def _failed_lines(split: Split, segments: list[Segment]) -> Iterator[str]:
    """The split's skipped inputs in input order: segment by segment, each shard's records, then the tail's."""
    for seg in segments:
        for st in seg.shards:
            yield from _shard_failures(split, st)
        if isinstance(seg.tail, Path):
            with open(seg.tail, encoding="utf-8") as f:
                yield from f
            seg.tail.unlink()
        elif seg.tail:
            yield from (json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in seg.tail)


def write_failures(split: Split, segments: list[Segment]) -> None:
    with atomic_path(split.folder / FAILURES) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(_failed_lines(split, segments))
    split.store.publish(FAILURES)


def nothing_written(root: Store, splits: list[Split], segments: dict[str, list[Segment]], opts: BuildOptions,
                    inputs: int) -> None:
    """No manifest for an empty build (it would fail only later, at train): say why and stop."""
    failures: Counter = Counter()
    for s in splits:
        write_failures(s, segments.get(s.name, []))
        failures.update(s.failures)
    root.delete([BUILD_ARGS])   # nothing to resume: the same command may simply run again
    path = opts.source.path
    if inputs == 0 and opts.retry_failures:
        why = (f"{opts.retry_failures} lists no input to retry (failures other than "
               f"{', '.join(sorted(retry.NOT_RETRIED))})")
    elif inputs == 0:
        from .readers import IMAGE_SUFFIXES

        what = (f"its class folders hold no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                if not fs.is_remote(path) and Path(path).is_dir()
                else "it has no rows or records" if opts.source.limit != 0 else "limit is 0")
        why = f"{path} gave 0 inputs: {what}"
    else:
        counts = ", ".join(f"{r}: {n}" for r, n in failures.most_common())
        lists = ", ".join(s.store.path(FAILURES) for s in splits)
        why = f"all {inputs} inputs of {path} were skipped ({counts}); each is listed in {lists}"
    raise EmptyBuildError(f"{root.target}: the build wrote 0 samples: {why}")


def finish(split: Split, segments: list[Segment], source, opts: BuildOptions, seconds: float, written: int,
           rate: float | None, resumed: bool) -> dict:
    """Commit one split: ``failures.jsonl``, then ``manifest.json`` (last: it makes the build count)."""
    shards = [st for seg in segments for st in seg.shards]
    keys: Counter = Counter()
    for st in shards:
        keys.update(st.get("keys", {}))
    write_failures(split, segments)
    from mmfm.version import __version__

    manifest = make_manifest(
        shards, {ext: key_role(ext) for ext in keys}, args=to_dict(opts), failures=dict(split.failures),
        classes=source.classes, split=split.name or None, holdout=opts.holdout or None,
        shuffle_seed=source.shuffle_seed,
        build={"mmfm_version": __version__, "seconds": round(seconds, 3), "samples_this_run": written,
               "images_per_s": round(rate, 1) if rate else None, "resumed": resumed})
    write_manifest(split.folder, manifest)
    split.store.publish(MANIFEST)      # last: the manifest commits the build
    return manifest
