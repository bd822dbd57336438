"""``mmfm shards build``: sources -> worker processes -> ordered ShardSink(s) -> manifest.json.

Determinism: items are numbered in source order, workers return results in that order, keys are the
item index, dedup and splits are decided in the main process. ``--resume`` restarts at the end of the
last complete shard (its ``_stats.json`` holds the input position, failure counts and image hashes), so
a killed build ends with exactly the samples of an uninterrupted one.

Memory does not grow with the dataset: dedup digests live in a sqlite index (``digests.py``), per-shard digests
stay in their ``_stats.json`` files (the build keeps only name, counts and checksums per shard), skipped inputs
are appended to their shard's ``_failed.jsonl`` and ``failures.jsonl`` is concatenated from those files.

``out_dir`` may be an fsspec URL (``s3://bucket/shards``): files are written into a local staging folder and
uploaded as each one is finished, ``manifest.json`` last (``store.py``); ``--resume`` reads the stats back
from the URL.

``--distributor ray`` (``distributed.py``) runs partitions of the input as Ray tasks with the same rules.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Iterator

from mmfm.config import ConfigError, atomic_path, to_dict
from mmfm.data import fs

from . import retry
from .digests import DigestIndex
from .download import make_host_slots
from .manifest import (BUILD_ARGS, FAILURES, MANIFEST, SHARD_PATTERN, atomic_write_json, failed_name, key_role,
                       make_manifest, stats_name, write_manifest)
from .options import RUNTIME_ONLY, BuildOptions
from .process import init_worker, process_chunk
from .readers import open_source
from .store import Store
from .writer import PARTIAL, ShardSink, light_stats

CHUNK = 32


class EmptyBuildError(ConfigError):
    """The build wrote no sample at all (no inputs, or every input skipped); the message says why."""


class Split:
    """One output folder (the whole build, or ``train`` / ``heldout``) and its resume position."""

    def __init__(self, name: str, store: Store):
        self.name, self.store, self.folder = name, store, store.local
        self.restored: list[dict] = []
        self.skip_until = 0            # inputs before this index are already in complete shards
        self.failures: Counter = Counter()
        self.sink: ShardSink | None = None
        self.tail_failed: list[dict] = []   # failures after the last shard when no sink wrote them (ray)
        self.index: DigestIndex | None = None

    def restore(self, index: DigestIndex | None) -> None:
        """Keep complete shards (tar + matching stats), delete everything after the first gap. Their image
        digests go to ``index`` (only those it missed); the build keeps only each shard's light stats."""
        for p in self.folder.glob(f"*{PARTIAL}"):
            p.unlink()
        sizes = self.store.sizes()
        i = 0
        while True:
            tar = SHARD_PATTERN % i
            if tar not in sizes or stats_name(tar) not in sizes:
                break
            stats = self.store.read_json(stats_name(tar))
            if stats.get("bytes") != sizes[tar] or "input_end" not in stats:
                break
            if index is not None:
                index.absorb(stats.get("image_sha256", []))
            self.restored.append(light_stats(stats))
            i += 1
        self.store.delete(n for n in sizes if n.startswith("shard-") and _shard_number(n) >= i)
        if self.restored:
            last = self.restored[-1]
            self.skip_until = last["input_end"]
            self.failures = Counter(last.get("failures", {}))

    def open(self, shard_size: int, index: DigestIndex | None) -> None:
        self.index = index
        self.sink = ShardSink(self.folder, shard_size=shard_size, start_shard=len(self.restored),
                              on_shard=self._shard_done)

    def _shard_done(self, stats: dict) -> None:
        """A finished shard: its tar, then its stats (which make it count for --resume) are uploaded; the digest
        index commits, so a --resume after a kill finds this shard's digests in the index."""
        if self.store.remote:
            self.store.publish(stats["name"], keep_local=False)
            if stats.get("failed"):
                self.store.publish(failed_name(stats["name"]), keep_local=False)
            self.store.publish(stats_name(stats["name"]))
        if self.index is not None:
            self.index.flush()


def _shard_number(name: str) -> int:
    digits = name[len("shard-"):len("shard-") + 6]
    return int(digits) if digits.isdigit() else -1


def _split_of(item: dict, opts: BuildOptions, names: list[str]) -> int:
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


def _fingerprint(opts: BuildOptions) -> dict:
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


def _prepare_out(root: Store, splits: list[Split], opts: BuildOptions, resume: bool, overwrite: bool,
                 restore: bool = True) -> DigestIndex | None:
    """Check --resume/--overwrite against what ``root`` holds; ``restore``: keep the complete shards of a
    one-machine build and open its dedup index (a partitioned build restores its own way, distributed.py)."""
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
        changed = _diff(before, _fingerprint(opts))
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
        _drop_index(root)
    index = DigestIndex(root.local) if opts.dedup and restore else None
    for s in splits:
        s.folder.mkdir(parents=True, exist_ok=True)
        if resume and restore:
            s.restore(index)
    atomic_write_json(root.local / BUILD_ARGS, _fingerprint(opts))
    root.publish(BUILD_ARGS)
    return index


def _drop_index(root: Store) -> None:
    for suffix in ("", "-wal", "-shm"):
        (root.local / (DigestIndex.NAME + suffix)).unlink(missing_ok=True)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _chunk_timeout(opts: BuildOptions) -> float:
    d = opts.download
    per_item = d.timeout * (d.retries + 1) + d.backoff * (2 ** d.retries)
    if d.per_host:    # one host's items may run per_host at a time, shared with the other workers
        return per_item * (CHUNK * max(1, opts.workers) // min(d.threads, d.per_host) + 1) + 120.0
    return per_item * max(1, CHUNK // d.threads + 1) + 120.0


def _gather(sent: list, res, timeout: float) -> list[tuple]:
    try:
        return res.get(timeout=timeout)
    except mp.TimeoutError:
        return [(i, "fail", "worker_timeout", f"> {timeout:.0f}s", it.get("source", "")) for i, it in sent]
    except Exception as e:  # noqa: BLE001 - a crashed worker costs its chunk, not the build
        return [(i, "fail", "worker_error", f"{type(e).__name__}: {e}", it.get("source", "")) for i, it in sent]


def _results(opts: BuildOptions, chunks: Iterator[list]) -> Iterator[tuple]:
    """Ordered results; at most ``3 * workers`` chunks in flight; a stuck chunk times out."""
    if opts.workers == 0:
        init_worker(opts, make_host_slots(opts.download.per_host))
        for chunk in chunks:
            yield from process_chunk(chunk)
        return
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["mmfm.data.shards.process"])
    pool = ctx.Pool(opts.workers, initializer=init_worker,
                    initargs=(opts, make_host_slots(opts.download.per_host, ctx)))
    timeout, window = _chunk_timeout(opts), deque()
    try:
        for chunk in chunks:
            window.append((chunk, pool.apply_async(process_chunk, (chunk,))))
            while len(window) >= 3 * opts.workers:
                yield from _gather(*window.popleft(), timeout)
        while window:
            yield from _gather(*window.popleft(), timeout)
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def _progress(total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", dynamic_ncols=True, disable=not enabled,
                mininterval=0.5, smoothing=0.1, desc="shards")


def build(opts: BuildOptions, out_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict[str, dict]:
    """Build shards; returns ``{split_name: manifest}`` (split name ``""`` without ``holdout``). ``out_dir``: a
    folder or an fsspec URL (``s3://...``; an unknown scheme is a ConfigError, never a local folder ``s3:``)."""
    fs.check_url(out_dir, "--out")
    if fs.is_remote(out_dir):
        with tempfile.TemporaryDirectory(prefix="mmfm-build-") as stage:
            return _build(opts, Store(str(out_dir), Path(stage)), resume, overwrite, progress)
    return _build(opts, Store(str(out_dir)), resume, overwrite, progress)


def _build(opts: BuildOptions, root: Store, resume: bool, overwrite: bool, progress: bool) -> dict[str, dict]:
    names = ["train", "heldout"] if opts.holdout > 0 else [""]
    splits = [Split(n, root.child(n) if n else root) for n in names]
    source = open_source(opts)   # config errors surface before anything is written
    if opts.distributor.kind == "ray":
        from .distributed import build_partitions
        if opts.retry_failures or opts.download.per_host:
            flag = "--retry-failures" if opts.retry_failures else "--per-host"
            raise ConfigError(f"{flag} is not supported with --distributor ray yet (run it with --distributor "
                              "local)")

        return build_partitions(opts, root, splits, source, resume, overwrite, progress)
    if opts.retry_failures:
        retry.check_previous(opts.retry_failures, opts)
        source.total = retry.count_failed(opts.retry_failures)
    index = _prepare_out(root, splits, opts, resume, overwrite)
    restart = min(s.skip_until for s in splits)
    try:
        if index is not None:
            index.restart_at(restart)
            if opts.retry_failures:
                index.seed(retry.previous_digests(opts.retry_failures))
        for s in splits:
            s.open(opts.shard_size, index)
        manifests = _run(opts, root, splits, names, source, index, restart, resume, progress)
    finally:
        if index is not None:
            index.close()
    _drop_index(root)    # only an unfinished build needs it (for --resume)
    return manifests


def _run(opts: BuildOptions, root: Store, splits: list[Split], names: list[str], source, dedup: DigestIndex | None,
         restart: int, resume: bool, progress: bool) -> dict[str, dict]:
    items = itertools.islice(enumerate(source.items), restart, None)
    if opts.retry_failures:
        items = retry.only(items, retry.failed_indices(opts.retry_failures))
    routed = ((i, dict(it, split=_split_of(it, opts, names))) for i, it in items)
    split_of: dict[int, int] = {}

    def tagged() -> Iterator[tuple[int, dict]]:
        for i, it in routed:
            split_of[i] = it["split"]
            yield i, it

    t0, written, inputs = time.monotonic(), Counter(), restart
    bar = _progress(source.total, restart, progress)
    results = _results(opts, _chunks(tagged(), CHUNK))
    try:
        for res in results:
            index, status = res[0], res[1]
            split = splits[split_of.pop(index)]
            if status == "ok" and dedup is not None and not dedup.add(res[3], index):
                status, res = "fail", (index, "fail", "duplicate", "", json.loads(res[2]["json"])["source"])
            if dedup is not None:
                dedup.seen(index)
            bar.update(1)
            inputs += 1
            if index < split.skip_until:
                continue          # replayed only to rebuild the dedup set; already in a complete shard
            if status == "ok":
                split.sink.write(res[2], state={"input_end": index + 1, "failures": dict(split.failures)},
                                 image_hash=[index, res[3]])
                written[split.name] += 1
            else:
                split.failures[res[2]] += 1
                split.sink.note_failed({"index": index, "source": res[4], "reason": res[2], "detail": res[3]})
                if sum(split.failures.values()) % 64 == 1:
                    bar.set_postfix_str(f"skipped {sum(sum(s.failures.values()) for s in splits)}", refresh=False)
    except BaseException:
        for s in splits:
            s.sink.abort()
        raise
    finally:
        results.close()   # stops the worker pool at once on errors and Ctrl-C
        bar.close()
    seconds = time.monotonic() - t0
    rate = sum(written.values()) / seconds if seconds > 0 else None
    shards = {s.name: s.restored + s.sink.close() for s in splits}
    if not any(st["samples"] for sts in shards.values() for st in sts):
        _nothing_written(root, splits, opts, inputs)
    return {s.name: _finish(s, shards[s.name], source, opts, seconds, written[s.name], rate, resume)
            for s in splits}


def _failed_lines(split: Split, shards: list[dict]) -> Iterator[str]:
    """The skipped inputs as JSON lines: each shard's ``_failed.jsonl`` (streamed), then the unwritten tail's.
    Builds before these files kept up to 1000 records per shard in the stats (``failed_items``)."""
    for st in shards:
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
    tail = split.sink.tail_failed if split.sink else None
    if tail is not None:
        with open(tail, encoding="utf-8") as f:
            yield from f
        tail.unlink()
    # a partitioned (Ray) build: each partition's skipped inputs after its last shard, from its marker
    yield from (json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in split.tail_failed)


def _write_failures(split: Split, shards: list[dict]) -> None:
    with atomic_path(split.folder / FAILURES) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(_failed_lines(split, shards))
    split.store.publish(FAILURES)


def _nothing_written(root: Store, splits: list[Split], opts: BuildOptions, inputs: int) -> None:
    """No manifest for an empty build (it would fail only later, at train): say why and stop."""
    failures: Counter = Counter()
    for s in splits:
        _write_failures(s, [])
        failures.update(s.failures)
    root.delete([BUILD_ARGS])   # nothing to resume: the same command may simply run again
    path = opts.source.path
    if inputs == 0 and opts.retry_failures:
        why = (f"{opts.retry_failures} lists no input to retry (failures other than "
               f"{', '.join(sorted(retry.NOT_RETRIED))})")
    elif inputs == 0:
        from .readers import IMAGE_SUFFIXES

        what = (f"its class folders hold no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                if not fs.is_remote(path) and Path(path).is_dir() else "it has no rows or records" if opts.source.limit != 0 else "limit is 0")
        why = f"{path} gave 0 inputs: {what}"
    else:
        counts = ", ".join(f"{r}: {n}" for r, n in failures.most_common())
        lists = ", ".join(s.store.path(FAILURES) for s in splits)
        why = f"all {inputs} inputs of {path} were skipped ({counts}); each is listed in {lists}"
    raise EmptyBuildError(f"{root.target}: the build wrote 0 samples: {why}")


def _finish(split: Split, shards: list[dict], source, opts: BuildOptions, seconds: float, written: int,
            rate: float | None, resumed: bool) -> dict:
    keys: Counter = Counter()
    for st in shards:
        keys.update(st.get("keys", {}))
    _write_failures(split, shards)
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
