"""The Ray executor of a shard build (``--distributor ray``): Ray tasks, one pair per partition of input rows.

The peer of ``executor_local.py``, under the same plan (``plan.py``):

1. The driver reads the source (cheap item dicts, as the one-machine build does) and cuts it into partitions of
   ``distributor.partition_rows`` rows: partition ``p`` holds inputs ``[p*R, (p+1)*R)`` and owns the shard ids
   ``[p*B, (p+1)*B)`` with ``B = ceil(R / shard_size)`` (the most shards R rows can fill), in every split folder.
2. ``process_partition`` (a Ray task, re-run by Ray when its worker dies: ``max_retries``) downloads, decodes and
   encodes its rows with the worker code both executors share (``process.process_chunk``) and returns two
   objects: the image digests of its good samples (small, to the driver) and its ``ItemResult`` list (kept in
   Ray's object store).
3. The driver takes the digest lists in partition order and applies the one-machine dedup rule, "the first good
   sample of an image in input order is kept", to get each partition's duplicate indices (no image bytes move to
   the driver). The holdout split is a hash of each row, which every partition evaluates on its own.
4. ``write_partition`` (a Ray task) clears its shard-id block, writes its tars there, then commits the partition
   with ``ray-part-NNNNNN.json`` (its shard stats, failures and digests).
5. The driver writes ``failures.jsonl`` and ``manifest.json`` from the part markers, the manifest last. Each
   partition is one ``plan.Segment`` per split (its shards' ``_failed.jsonl``, then its tail), taken in partition
   order, so ``failures.jsonl`` is in input order as the local build's is.

``--resume`` keeps every partition whose marker and shards are complete and runs only the others: the result has
the same samples, keys, image bytes and splits as ``--distributor local`` (only the shard boundaries differ).
"""
from __future__ import annotations

import functools
import json
import math
import re
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Iterator

from mmfm.config import ConfigError
from mmfm.data import fs

from .manifest import atomic_write_json, stats_name
from .options import BuildOptions
from .plan import (CHUNK, Segment, Split, chunk_timeout, chunks, finish, nothing_written, prepare_out, progress,
                   publish_shard, route, shard_number, split_names)
from .process import ItemResult, init_worker, process_chunk
from .source import Source
from .store import Store
from .writer import ShardSink

PART = "ray-part-%06d.json"
_PART_RE = re.compile(r"^ray-part-(\d{6})\.json$")


class PartitionError(RuntimeError):
    """A partition failed after Ray's retries (or timed out); finished partitions stay for --resume."""


def shard_block(opts: BuildOptions) -> int:
    """Shard ids each partition owns: enough for all its rows in one split."""
    return math.ceil(opts.distributor.partition_rows / opts.shard_size)


def _stores(target: str, stage: Path | None, opts: BuildOptions) -> tuple[Store, list[Store]]:
    root = Store(target, stage) if stage is not None else Store(target)
    return root, [root.child(n) if n else root for n in split_names(opts)]


# --- the Ray tasks (plain module functions: workers import them by name) -------------------------------------

def process_partition(opts: BuildOptions, rows: list[tuple[int, dict]]) -> tuple[list, list[ItemResult]]:
    """-> ``([(index, sha256) of good samples], [ItemResult in input order])``."""
    init_worker(opts)
    results = []
    for chunk in chunks(iter(rows), CHUNK):
        results += process_chunk(chunk)
    return [(r.index, r.digest) for r in results if r.ok], results


def write_partition(opts: BuildOptions, target: str, part: int, span: list[int], results: list[ItemResult],
                    duplicates: set[int]) -> dict:
    """Write one partition's shards into its id block, then its marker (the commit); returns the marker."""
    with tempfile.TemporaryDirectory(prefix="mmfm-part-") as stage:
        root, stores = _stores(target, Path(stage) if fs.is_remote(target) else None, opts)
        first = part * shard_block(opts)
        sinks, failures = [], [Counter() for _ in stores]
        for store in stores:
            store.local.mkdir(parents=True, exist_ok=True)
            _clear_block(store, first, shard_block(opts))   # a retried or resumed partition starts clean
            sinks.append(ShardSink(store.local, shard_size=opts.shard_size, start_shard=first,
                                   on_shard=functools.partial(publish_shard, store) if store.remote else None))
        try:
            for res in results:
                if res.ok and res.index in duplicates:
                    res = res.duplicate()
                if res.ok:
                    sinks[res.split].write(res.sample, image_hash=[res.index, res.digest])
                else:
                    failures[res.split][res.reason] += 1
                    sinks[res.split].note_failed(res.failure())
        except BaseException:
            for sink in sinks:
                sink.abort()
            raise
        # the digests of what this partition wrote: a resumed build keeps the partition and still dedups against
        # them (the shards' in-memory stats are light, writer.light_stats)
        marker = {"partition": part, "rows": span, "splits": {},
                  "digests": [[r.index, r.digest] for r in results if r.ok and r.index not in duplicates]}
        for name, sink, fails in zip(split_names(opts), sinks, failures):
            shards = sink.close()
            marker["splits"][name] = {"shards": shards, "tail_failed": _read_tail(sink.tail_failed),
                                      "failures": dict(fails), "written": sum(s["samples"] for s in shards)}
        atomic_write_json(root.local / (PART % part), marker)
        root.publish(PART % part)
        return marker


def _read_tail(path: Path | None) -> list[dict]:
    """The skipped inputs after a partition's last shard (the sink's file; at most ``partition_rows``)."""
    if path is None:
        return []
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    path.unlink()
    return rows


def _clear_block(store: Store, first: int, count: int) -> None:
    for p in store.local.glob("shard-*"):
        if first <= shard_number(p.name) < first + count:
            p.unlink()
    if store.remote:
        store.delete(n for n in store.sizes() if n.startswith("shard-") and first <= shard_number(n) < first + count)


# --- the driver -------------------------------------------------------------------------------------------

def _connect(opts: BuildOptions):
    """-> (ray, started): join ``distributor.address``, reuse a connection this process already has, or start a
    local cluster with ``workers`` CPUs bound to 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return ray, False
    quiet = {"log_to_driver": False, "configure_logging": False}
    address = opts.distributor.address
    if address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as e:
            raise ConfigError(f"distributor.address (--ray-address): {address}: {e}") from None
    else:
        ray.init(address="local", num_cpus=max(1, opts.workers), include_dashboard=False,
                 _node_ip_address="127.0.0.1", **quiet)
    return ray, True


def _restore(root: Store, splits: list[Split]) -> dict[int, dict]:
    """Part markers whose shards are all there with their recorded sizes: the partitions to keep."""
    sizes = [s.store.sizes() for s in splits]
    done = {}
    for name in sorted(root.sizes()):
        m = _PART_RE.match(name)
        if not m:
            continue
        marker = root.read_json(name)
        complete = all(sz.get(st["name"]) == st["bytes"] and stats_name(st["name"]) in sz
                       for split, sz in zip(splits, sizes)
                       for st in marker["splits"].get(split.name, {}).get("shards", []))
        if complete:
            done[int(m.group(1))] = marker
    return done


def _partitions(opts: BuildOptions, source: Source) -> Iterator[list[tuple[int, dict]]]:
    return chunks(route(enumerate(source.items), opts), opts.distributor.partition_rows)


class _Driver:
    """Keeps at most ``window`` partitions in flight and settles them in partition order (the dedup order)."""

    def __init__(self, ray, opts: BuildOptions, target: str, done: dict[int, dict], bar):
        self.ray, self.opts, self.target, self.done, self.bar = ray, opts, target, done, bar
        retries = opts.distributor.max_retries
        self.process = ray.remote(process_partition).options(num_returns=2, max_retries=retries,
                                                              retry_exceptions=False)
        self.write = ray.remote(write_partition).options(max_retries=retries, retry_exceptions=False)
        rows = opts.distributor.partition_rows
        self.timeout = chunk_timeout(opts) * math.ceil(rows / CHUNK) * (retries + 1)
        self.window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1))) + 1
        self.pending: deque = deque()
        self.writes: deque = deque()        # (partition, ref) of writing tasks not yet collected
        self.markers = dict(done)
        self.seen: set[str] = set()
        self.inputs = 0

    def submit(self, part: int, rows: list[tuple[int, dict]]) -> None:
        span = [rows[0][0], rows[-1][0] + 1]
        refs = None if part in self.done else self.process.remote(self.opts, rows)
        self.pending.append((part, span, refs))
        while len(self.pending) >= self.window:
            self._settle(*self.pending.popleft())

    def finish(self) -> dict[int, dict]:
        while self.pending:
            self._settle(*self.pending.popleft())
        self._collect(0)
        return self.markers

    def cancel(self) -> None:
        """Stop this build's tasks after an error or Ctrl-C (a driver that stays alive, e.g. in a notebook,
        would else let them write on); a partition without its marker is re-run by --resume."""
        refs = [r for _, _, refs in self.pending if refs for r in refs[:1]] + [ref for _, ref in self.writes]
        for ref in refs:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished or already gone
                pass

    def _collect(self, keep: int) -> None:
        """Wait for the oldest writing tasks until ``keep`` are left: encoded samples never pile up in memory."""
        while len(self.writes) > keep:
            part, ref = self.writes.popleft()
            self.markers[part] = self._get(ref, part, "writing")

    def _settle(self, part: int, span: list[int], refs) -> None:
        self.inputs += span[1] - span[0]
        self.bar.update(span[1] - span[0])
        if refs is None:       # kept from an earlier run: its digests still count for dedup
            self.seen.update(h for _, h in self.done[part].get("digests", []))
            return
        digests_ref, results_ref = refs
        duplicates = set()
        for index, digest in self._get(digests_ref, part, "processing"):
            if self.opts.dedup and digest in self.seen:
                duplicates.add(index)
            self.seen.add(digest)
        self.writes.append((part, self.write.remote(self.opts, self.target, part, span, results_ref, duplicates)))
        self._collect(self.window)

    def _get(self, ref, part: int, what: str):
        try:
            return self.ray.get(ref, timeout=self.timeout)
        except self.ray.exceptions.GetTimeoutError:
            raise PartitionError(f"partition {part}: {what} took over {self.timeout:.0f}s; rerun with --resume "
                                 "to keep the finished partitions") from None
        except self.ray.exceptions.RayError as e:
            raise PartitionError(f"partition {part}: {what} failed after {self.opts.distributor.max_retries} "
                                 f"retries ({type(e).__name__}: {e}); rerun with --resume to keep the finished "
                                 "partitions") from None


def build_partitions(opts: BuildOptions, root: Store, source: Source, resume: bool, overwrite: bool,
                     show_progress: bool) -> dict[str, dict]:
    """The Ray build of ``build.build()``. Joins the cluster first: an unreachable one leaves ``--out`` untouched."""
    if opts.retry_failures or opts.download.per_host:
        flag = "--retry-failures" if opts.retry_failures else "--per-host"
        raise ConfigError(f"{flag} is not supported with --distributor ray yet (run it with --distributor local)")
    splits = Split.for_build(root, opts)
    ray, started = _connect(opts)
    try:
        prepare_out(root, splits, opts, resume, overwrite)
        done = _restore(root, splits) if resume else {}
        if not resume:
            root.delete(n for n in root.sizes() if _PART_RE.match(n))
        t0 = time.monotonic()
        with progress(source.total, 0, show_progress) as bar:
            driver = _Driver(ray, opts, root.target, done, bar)
            try:
                for part, rows in enumerate(_partitions(opts, source)):
                    driver.submit(part, rows)
                markers = driver.finish()
            except BaseException:
                driver.cancel()
                raise
    finally:
        if started:
            ray.shutdown()
    seconds = time.monotonic() - t0
    return _assemble(opts, root, splits, source, markers, done, driver.inputs, seconds, resume)


def _assemble(opts: BuildOptions, root: Store, splits: list[Split], source: Source, markers: dict[int, dict],
              done: dict[int, dict], inputs: int, seconds: float, resume: bool) -> dict[str, dict]:
    """The part markers -> each split's segments, one per partition in partition order (so ``failures.jsonl``
    lists a partition's tail before the next partition's shards), then the plan's commit."""
    segments: dict[str, list[Segment]] = {s.name: [] for s in splits}
    written = Counter()
    for s in splits:
        s.failures = Counter()
        for part in sorted(markers):
            sp = markers[part]["splits"].get(s.name, {"shards": [], "tail_failed": [], "failures": {}})
            shards = [{k: v for k, v in st.items() if k != "failed_items"} for st in sp["shards"]]
            segments[s.name].append(Segment(shards, sp["tail_failed"]))
            s.failures.update(sp["failures"])
            if part not in done:
                written[s.name] += sum(st["samples"] for st in shards)
    if not any(st["samples"] for segs in segments.values() for seg in segs for st in seg.shards):
        nothing_written(root, splits, segments, opts, inputs)
    total = sum(written.values())
    rate = total / seconds if seconds > 0 else None
    return {s.name: finish(s, segments[s.name], source, opts, seconds, written[s.name], rate, resume)
            for s in splits}
