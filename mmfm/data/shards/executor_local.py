"""The local executor of a shard build (``--distributor local``, the default): worker processes on this machine.

Items are numbered and routed by the plan (``plan.py``), handed to a process pool in chunks, and the results come
back in input order; dedup (a sqlite index, ``digests.py``) and writing happen in this process, into one
``ShardSink`` per split. ``--resume`` restarts at the end of the last complete shard (its ``_stats.json`` holds the
input position, failure counts and image digests), so a killed build ends with exactly the samples of an
uninterrupted one.

Memory does not grow with the dataset: dedup digests live in the index, per-shard digests stay in their
``_stats.json`` files (the build keeps only name, counts and checksums per shard), and skipped inputs are appended
to their shard's ``_failed.jsonl``.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import time
from collections import Counter, deque
from typing import Iterator

from . import retry
from .digests import DigestIndex
from .download import make_host_slots
from .manifest import SHARD_PATTERN, stats_name
from .options import BuildOptions
from .plan import (CHUNK, Segment, Split, chunk_timeout, chunks, drop_index, finish, nothing_written, prepare_out,
                   progress, publish_shard, route, shard_number)
from .process import ItemResult, failed_results, init_worker, process_chunk
from .profile import Profile
from .source import Source
from .store import Store
from .writer import PARTIAL, ShardSink, light_stats


class LocalSplit(Split):
    """A split written by this process: its sink, and the complete shards a ``--resume`` keeps."""

    def __init__(self, name: str, store: Store):
        super().__init__(name, store)
        self.restored: list[dict] = []
        self.skip_until = 0            # inputs before this index are already in complete shards
        self.sink: ShardSink | None = None
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
        self.store.delete(n for n in sizes if n.startswith("shard-") and shard_number(n) >= i)
        if self.restored:
            last = self.restored[-1]
            self.skip_until = last["input_end"]
            self.failures = Counter(last.get("failures", {}))

    def open(self, shard_size: int, index: DigestIndex | None) -> None:
        self.index = index
        self.sink = ShardSink(self.folder, shard_size=shard_size, start_shard=len(self.restored),
                              on_shard=self._shard_done)

    def segment(self) -> Segment:
        """Close the sink: the restored shards, this run's, and the skipped inputs after the last one."""
        return Segment(self.restored + self.sink.close(), self.sink.tail_failed)

    def _shard_done(self, stats: dict) -> None:
        """A finished shard: its tar, then its stats (which make it count for --resume) are uploaded; the digest
        index commits, so a --resume after a kill finds this shard's digests in the index."""
        if self.store.remote:
            publish_shard(self.store, stats)
        if self.index is not None:
            self.index.flush()


def build_local(opts: BuildOptions, root: Store, source: Source, resume: bool, overwrite: bool,
                show_progress: bool) -> dict[str, dict]:
    """The one-machine build of ``build.build()``; returns ``{split_name: manifest}``."""
    splits = LocalSplit.for_build(root, opts)
    if opts.retry_failures:
        retry.check_previous(opts.retry_failures, opts)
        source.total = retry.count_failed(opts.retry_failures)
    prepare_out(root, splits, opts, resume, overwrite)
    pool = _start_pool(opts)   # before the index and --resume's restore: the pipeline starts with ready workers
    index = None
    try:
        index = DigestIndex(root.local) if opts.dedup else None
        if resume:
            for s in splits:
                s.restore(index)
        restart = min(s.skip_until for s in splits)
        if index is not None:
            index.restart_at(restart)
            if opts.retry_failures:
                index.seed(retry.previous_digests(opts.retry_failures))
        for s in splits:
            s.open(opts.shard_size, index)
        manifests = _run(opts, root, splits, source, index, restart, resume, show_progress, pool)
    finally:
        if pool is not None:
            pool.terminate()
        if index is not None:
            index.close()
    drop_index(root)    # only an unfinished build needs it (for --resume)
    return manifests


def _gather(sent: list, res, timeout: float) -> list[ItemResult]:
    try:
        return res.get(timeout=timeout)
    except mp.TimeoutError:
        return failed_results(sent, "worker_timeout", f"> {timeout:.0f}s")
    except Exception as e:  # noqa: BLE001 - a crashed worker costs its chunk, not the build
        return failed_results(sent, "worker_error", f"{type(e).__name__}: {e}")


def _start_pool(opts: BuildOptions):
    """The worker processes (None with ``workers: 0``)."""
    if opts.workers == 0:
        return None
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["mmfm.data.shards.process"])
    return ctx.Pool(opts.workers, initializer=init_worker,
                    initargs=(opts, make_host_slots(opts.download.per_host, ctx)))


def _results(opts: BuildOptions, todo: Iterator[list], prof: Profile, pool) -> Iterator[ItemResult]:
    """Ordered results; at most ``3 * workers`` chunks in flight; a stuck chunk times out."""
    if pool is None:
        init_worker(opts, make_host_slots(opts.download.per_host))
        for chunk in todo:
            yield from process_chunk(chunk)
        return
    timeout, window = chunk_timeout(opts), deque()
    prof.workers = [p.pid for p in pool._pool]
    prof.depth = lambda: _depth(window)
    try:
        for chunk in todo:
            window.append((chunk, pool.apply_async(process_chunk, (chunk,))))
            while len(window) >= 3 * opts.workers:
                yield from _take(window, timeout, prof)
        prof.mark("all handed out")
        while window:
            yield from _take(window, timeout, prof)
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def _chunks(items: Iterator[tuple[int, dict]], end: int | None, workers: int) -> Iterator[list]:
    """``CHUNK`` inputs at a time, then, for the last ``2 * workers`` chunks' worth of a source of known length,
    quarter chunks: the workers finish within a few images of each other instead of one chunk apart."""
    if end is None:
        yield from chunks(items, CHUNK)
        return
    items = iter(items)
    while True:
        head = next(items, None)
        if head is None:
            return
        size = CHUNK if end - head[0] > 2 * workers * CHUNK else max(1, CHUNK // 4)
        yield [head, *itertools.islice(items, size - 1)]


def _depth(window: deque) -> tuple[int, int]:
    """(chunks in flight, of which done and waiting for the parent) for the profile's sampler thread."""
    try:
        pending = list(window)
    except RuntimeError:
        return 0, 0
    return len(pending), sum(1 for _, r in pending if r.ready())


def _take(window: deque, timeout: float, prof: Profile) -> list[ItemResult]:
    with prof.section("wait for next result in order"):
        out = _gather(*window.popleft(), timeout)
    prof.mark("first result")
    return out


def _run(opts: BuildOptions, root: Store, splits: list[LocalSplit], source: Source, dedup: DigestIndex | None,
         restart: int, resume: bool, show_progress: bool, pool) -> dict[str, dict]:
    items = itertools.islice(enumerate(source.items), restart, None)
    if opts.retry_failures:
        items = retry.only(items, retry.failed_indices(opts.retry_failures))
    t0, written, inputs = time.monotonic(), Counter(), restart
    bar = progress(source.total, restart, show_progress)
    prof = Profile.from_env()
    for s in splits:
        s.sink.timer = prof.section
    prof.start()
    end = None if opts.retry_failures else source.total
    results = _results(opts, _chunks(route(items, opts), end, max(1, opts.workers)), prof, pool)
    try:
        for res in results:
            split = splits[res.split]
            with prof.section("dedup index"):
                if res.ok and dedup is not None and not dedup.add(res.digest, res.index):
                    res = res.duplicate()
                if dedup is not None:
                    dedup.seen(res.index)
            bar.update(1)
            inputs += 1
            if res.index < split.skip_until:
                continue          # replayed only to rebuild the dedup set; already in a complete shard
            if res.ok:
                with prof.section("write sample (incl. closing shards)"):
                    split.sink.write(res.sample, state={"input_end": res.index + 1,
                                                        "failures": dict(split.failures)},
                                     image_hash=[res.index, res.digest])
                written[split.name] += 1
            else:
                split.failures[res.reason] += 1
                split.sink.note_failed(res.failure())
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
    prof.stop()
    rate = sum(written.values()) / seconds if seconds > 0 else None
    segments = {s.name: [s.segment()] for s in splits}
    if not any(st["samples"] for segs in segments.values() for seg in segs for st in seg.shards):
        nothing_written(root, splits, segments, opts, inputs)
    return {s.name: finish(s, segments[s.name], source, opts, seconds, written[s.name], rate, resume)
            for s in splits}
