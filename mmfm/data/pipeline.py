"""The streaming loader: WebDataset shards -> decoded samples -> task processor -> dict batches.

``build_loader(sources, processor, *, batch_size, workers, train, epoch, world, data_cfg) -> LoaderBundle``

How an epoch is cut (deterministic in ``(seed, epoch)``; nothing depends on timing):

* ``world x workers`` *readers*. In epoch mode each source's shard list is shuffled per epoch (same
  order on every rank) and dealt to readers, balancing sample counts from the manifest. A reader that
  runs out of shards before its quota starts another pass over its own shards (reshuffled), so every
  rank yields exactly ``batches_per_epoch`` batches and no rank waits on another at a collective.
  In resampled mode readers draw shards with replacement, forever.
* Several sources are mixed sample by sample with their weights (continued pre-training replay).
* Evaluation (``train=False``) reads every sample exactly once across ranks and workers: reader ``g`` keeps
  samples ``g, g + readers, ...`` of each source (``split=sample``), in one pass, and ends with a short batch;
  ranks may yield different numbers of batches, so the evaluation loop holds no collective (it reduces sums
  and counts afterwards).
* A sample shuffle buffer (raw bytes, before decoding) follows; then decode (max-pixels guard, JPEG
  draft, EXIF transpose), the task's ``processor`` and ``collate``, batched inside the worker.
* Augmentation RNGs are seeded per sample from (seed, epoch, shard, key).
* ``data.balance`` (training): a deterministic per-sample filter or loss weight by attribute group, before the
  shuffle buffer (:mod:`mmfm.data.balance`).

Resume: every batch carries its reader's raw-sample position; ``state_dict()`` records them, and a
resumed loader fast-forwards each reader through its (cheap, undecoded) raw stream to that position, so
the next batch is exactly the batch the uninterrupted run would have produced.
"""
from __future__ import annotations

import logging
import random
import zlib
from itertools import chain, islice
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmfm.config import ConfigError
from mmfm.data.collate import collate_dicts
from mmfm.data.decode import CorruptCounter, CorruptSample, Decoder
from mmfm.data.workers import lower_priority
from mmfm.data.ranks import rank_world
from mmfm.data.sources import Source, preflight, resolve_sources, tar_samples
from mmfm.data.shards import ShardError

log = logging.getLogger("mmfm.data")
_META = ("_reader", "_raw", "_corrupt")
MAX_CONSECUTIVE_FAILURES = 200


def _seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode("utf-8"))


def _counted(stream: Iterator[dict], read: list) -> Iterator[dict]:
    """``stream`` unchanged, counting its items in ``read[0]`` (before a reader keeps its share)."""
    for sample in stream:
        read[0] += 1
        yield sample


def assign_shards(shards: list, readers: int, rng: random.Random | None) -> list[list]:
    """Shuffle ``shards`` with ``rng`` (None: keep order) and deal them, in that order, each to the reader
    holding the fewest samples so far (plain round-robin when counts are unknown)."""
    order = list(shards)
    if rng is not None:
        rng.shuffle(order)
    out: list[list] = [[] for _ in range(readers)]
    if any(s.samples is None for s in order):
        for i, s in enumerate(order):
            out[i % readers].append(s)
        return out
    load = [0] * readers
    for s in order:
        r = min(range(readers), key=lambda i: (load[i], len(out[i]), i))
        out[r].append(s)
        load[r] += s.samples
    return out


class _TarHandler:
    """webdataset exception handler: count unreadable shards/members and keep going."""

    def __init__(self, counter: CorruptCounter):
        self.counter = counter

    def __call__(self, exn: Exception) -> bool:
        self.counter.add("unreadable_shard", f"{type(exn).__name__}: {exn}")
        return True


class _RNGGuard:
    """Save and restore the global RNGs around per-sample seeding when the loader runs in-process."""

    def __enter__(self):
        self.state = (random.getstate(), np.random.get_state(), torch.get_rng_state())

    def __exit__(self, *exc):
        random.setstate(self.state[0])
        np.random.set_state(self.state[1])
        torch.set_rng_state(self.state[2])
        return False


class StreamDataset(IterableDataset):
    """One rank's stream of collated batches (see module docstring). Picklable; workers rebuild state."""

    def __init__(self, sources: list[Source], processor, *, batch_size: int, train: bool, rank: int,
                 world: int, workers: int, batches_per_epoch: int, seed: int = 0, resampled: bool = False,
                 shuffle_buffer: int = 1000, decoder: Decoder | None = None, split: str = "shard",
                 balance=None):
        self.sources, self.processor = sources, processor
        self.batch_size, self.train = int(batch_size), bool(train)
        self.rank, self.world, self.workers = int(rank), int(world), max(int(workers), 1)
        self.batches_per_epoch, self.seed = int(batches_per_epoch), int(seed)
        self.resampled, self.shuffle_buffer, self.split = bool(resampled), int(shuffle_buffer), split
        self.decoder = decoder or Decoder()
        self.balance = balance               # mmfm.data.balance.Balancer (data.balance) or None
        self.collate = getattr(processor, "collate", None) or collate_dicts
        self.epoch = 0
        self.start_batch = 0                 # batches of this epoch already consumed (resume)
        self.raw_start: dict[int, int] = {}  # reader -> raw samples already consumed (resume)

    # ---------------------------------------------------------------- raw sample streams
    def _shard_stream(self, src_i: int, reader: int) -> Iterator[dict]:
        src = self.sources[src_i]
        readers = self.world * self.workers
        base = (self.seed, self.epoch, src_i)
        handler = _TarHandler(self._counter)
        if self.resampled:
            stream = self._resampled(src, reader, base, handler)
            if self.balance is not None:
                stream = self.balance.filter(stream, (*base, reader))
            yield from self._shuffled(stream, (*base, reader))
            return
        rng = random.Random(_seed(*base, "shards")) if self.train else None
        if self.split == "sample":   # every reader reads every shard, keeps every readers-th sample
            mine = assign_shards(src.shards, 1, rng)[0]
        else:
            mine = assign_shards(src.shards, readers, rng)[reader]
        expected = [0.0]      # data.balance: samples the passes since the last kept one should have kept
        for pass_i in range(1 << 62 if self.train else 1):     # evaluation: one pass, every sample once
            order = list(mine)
            if pass_i and self.train:
                random.Random(_seed(*base, reader, pass_i)).shuffle(order)
            read = [0]
            stream = _counted(tar_samples((s.url for s in order), handler), read)
            if self.split == "sample":
                stream = islice(stream, reader, None, readers)
            if self.balance is not None and self.train:     # before the buffer: resume counts kept samples
                stream = self.balance.filter(stream, (*base, reader, pass_i), expected)
            stream = self._shuffled(stream, (*base, reader, pass_i))   # drains at the end of a pass
            got = 0
            for sample in stream:
                got += 1
                yield sample
            if got:
                expected[0] = 0.0
            # A pass that keeps nothing: a training reader would loop forever, unless data.balance dropped its
            # samples by chance (a small source of a large group); those passes go on until 30 samples were
            # expected in all (kept none: a chance of e^-30), so the wait is bounded either way.
            if read[0] == 0 or (got == 0 and self.train and (self.balance is None or expected[0] >= 30)):
                names = ", ".join(s.url for s in order[:4]) + (" ..." if len(order) > 4 else "")
                why = f"; data.balance kept none of them ({expected[0]:.0f} expected)" if read[0] else ""
                raise ShardError(f"reader {reader} got no readable samples from its shard(s) {names} "
                                 f"(data source '{src.spec}'){why}")

    def _resampled(self, src: Source, reader: int, base: tuple, handler) -> Iterator[dict]:
        rng = random.Random(_seed(*base, reader, "resample"))
        empty = 0
        while True:
            shard = rng.choice(src.shards)
            got = 0
            for sample in tar_samples([shard.url], handler):
                got += 1
                yield sample
            empty = 0 if got else empty + 1
            if empty > 2 * len(src.shards) + 10:
                raise ShardError(f"reader {reader}: {empty} shards in a row gave no readable samples "
                                 f"(data source '{src.spec}', last {shard.url})")

    def _shuffled(self, stream, seed_parts: tuple):
        """The sample shuffle buffer (raw bytes, before decoding), seeded per epoch/reader/pass. It fills
        completely before the first sample leaves: a partly filled buffer would make the first batches of
        every pass out of the first few samples of one shard."""
        if not self.train or self.shuffle_buffer <= 1:
            return stream
        import webdataset as wds
        rng = random.Random(_seed(*seed_parts, "buffer"))
        return wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(stream)

    def _raw_stream(self, reader: int) -> Iterator[dict]:
        streams = [self._shard_stream(i, reader) for i in range(len(self.sources))]
        if len(streams) == 1:
            stream = streams[0]
        elif not self.train:
            stream = chain(*streams)            # evaluation: every source once, whatever its weight
        else:
            weights = [s.weight for s in self.sources]
            rng = random.Random(_seed(self.seed, self.epoch, reader, "mix"))
            idx = list(range(len(streams)))
            stream = (next(streams[rng.choices(idx, weights)[0]]) for _ in iter(int, 1))
        return stream

    # ---------------------------------------------------------------- processing
    def _process(self, raw: dict) -> dict:
        sample = self.decoder(raw)
        s = _seed(self.seed, self.epoch, raw.get("__url__"), raw.get("__key__"))
        random.seed(s)
        torch.default_generator.manual_seed(s)
        np.random.seed(s)
        out = self.processor(sample)
        if not isinstance(out, dict):
            raise TypeError(f"processor returned {type(out).__name__}, expected a dict")
        out.setdefault("key", raw.get("__key__"))
        if self.balance is not None:
            self.balance.annotate(out, raw)
        return out

    def _quota(self, reader: int) -> int:
        """Batches this reader yields for the rest of the epoch (round-robin over readers of this rank);
        unbounded for evaluation, where a reader yields all of its share and then a short last batch."""
        if not self.train:
            return -1
        first = self.start_batch
        return len(range(first + ((reader - first) % self.workers), self.batches_per_epoch, self.workers))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"StreamDataset built for {self.workers} workers, DataLoader has {info.num_workers}")
        worker = (physical + self.start_batch) % self.workers   # so batch order continues after resume
        reader = self.rank * self.workers + worker
        quota = self._quota(worker)
        if quota == 0:
            return
        self._counter = CorruptCounter(where=f" (rank {self.rank}, reader {reader})")
        raw_pos = self.raw_start.get(worker, 0)
        stream = self._raw_stream(reader)
        if raw_pos:
            stream = islice(stream, raw_pos, None)    # fast-forward: no decoding
        buf: list[dict] = []
        failures = 0
        guard = _RNGGuard() if info is None else None    # in-process: keep the trainer's RNG untouched
        for raw in stream:
            raw_pos += 1
            try:
                if guard is None:
                    buf.append(self._process(raw))
                else:
                    with guard:
                        buf.append(self._process(raw))
                failures = 0
            except (CorruptSample, OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
                failures += 1
                where = f"{raw.get('__url__')}:{raw.get('__key__')}"
                self._counter.add(getattr(e, "reason", type(e).__name__), f"{where}: {e}")
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"{failures} samples in a row failed (rank {self.rank}, reader {reader}); "
                                       f"last at {where}: {type(e).__name__}: {e}") from e
                continue
            if len(buf) == self.batch_size:
                yield self._batch(buf, worker, raw_pos)
                buf = []
                quota -= 1
                if quota == 0:
                    return
        if buf and not self.train:
            yield self._batch(buf, worker, raw_pos)      # evaluation: the short last batch

    def _batch(self, buf: list[dict], worker: int, raw_pos: int) -> dict:
        batch = self.collate(buf)
        batch["_reader"], batch["_raw"] = worker, raw_pos
        batch["_corrupt"] = dict(self._counter.counts)
        return batch


class LoaderBundle:
    """A rank's loader for one epoch at a time: iterate it for the epoch's batches (meta stripped)."""

    def __init__(self, dataset: StreamDataset, *, samples_per_epoch: int, steps_per_epoch: int,
                 grad_accum: int = 1, num_workers: int = 0, pin_memory: bool = False, timeout_s: float = 600.0,
                 prefetch: int = 4, worker_priority: str = "normal"):
        self.dataset = dataset
        self.worker_priority = worker_priority
        self.num_workers = num_workers
        self.samples_per_epoch = samples_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self.batches_per_epoch = dataset.batches_per_epoch
        self.grad_accum = grad_accum
        self.pin_memory, self.timeout_s, self.prefetch = pin_memory, timeout_s, prefetch
        self.epoch = dataset.epoch
        self.batches = 0                     # consumed in the current epoch
        self.raw: dict[int, int] = {}        # reader -> raw position after its last consumed batch
        self.corrupt: dict[int, dict] = {}   # reader -> skip counts by reason (this epoch)
        self._pending: dict | None = None

    @property
    def workers(self) -> int:
        return self.dataset.workers

    @property
    def corrupt_total(self) -> int:
        return sum(sum(c.values()) for c in self.corrupt.values())

    @property
    def loader(self) -> DataLoader:
        n = self.num_workers
        # worker base seeds come from this generator, not the global RNG: the training process's RNG
        # stream (dropout ...) must not depend on when loaders are created (exact resume)
        gen = torch.Generator().manual_seed(_seed(self.dataset.seed, self.epoch, self.dataset.rank, "loader"))
        kw = dict(batch_size=None, num_workers=n, pin_memory=self.pin_memory, generator=gen)
        if n:
            kw.update(timeout=self.timeout_s, prefetch_factor=self.prefetch, persistent_workers=False,
                      worker_init_fn=lower_priority(self.worker_priority))
        return DataLoader(self.dataset, **kw)

    def set_epoch(self, epoch: int) -> None:
        pending = self._pending
        self.epoch = self.dataset.epoch = int(epoch)
        if pending is not None and pending["epoch"] == epoch:
            self.batches = self.dataset.start_batch = int(pending["batches"])
            self.raw = {int(k): int(v) for k, v in pending["raw"].items()}
            self.dataset.raw_start = dict(self.raw)
        else:
            self.batches = self.dataset.start_batch = 0
            self.raw, self.dataset.raw_start = {}, {}
        self.corrupt = {}
        # a loaded position survives set_epoch(same epoch) until iteration starts

    def __len__(self) -> int:
        return self.batches_per_epoch - self.batches

    def __iter__(self) -> Iterator[dict]:
        self._pending = None
        capped = self.dataset.train           # evaluation: the readers stop after one pass over their share
        if capped and self.batches >= self.batches_per_epoch:
            return
        for batch in self.loader:
            reader = batch.pop("_reader")
            self.raw[reader] = batch.pop("_raw")
            self.corrupt[reader] = batch.pop("_corrupt")
            self.batches += 1
            yield batch
            if capped and self.batches >= self.batches_per_epoch:
                break

    def state_dict(self) -> dict:
        """The data position: resume continues after the last batch handed out."""
        if self.batches >= self.batches_per_epoch:
            return {"epoch": self.epoch + 1, "batches": 0, "raw": {}, "workers": self.workers,
                    "world": self.dataset.world, "batch_size": self.dataset.batch_size}
        return {"epoch": self.epoch, "batches": self.batches, "raw": {str(k): v for k, v in self.raw.items()},
                "workers": self.workers, "world": self.dataset.world, "batch_size": self.dataset.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("workers", "world", "batch_size"):
            have = self.workers if key == "workers" else getattr(self.dataset, key)
            if key in state and int(state[key]) != have:
                raise ConfigError(f"cannot resume the data position exactly: the checkpoint was written with "
                                  f"{key}={state[key]}, this run has {have}. Use the same data.workers, "
                                  f"data.batch_size and number of processes, or start a new run with "
                                  f"train.init_from.")
        self._pending = {"epoch": int(state["epoch"]), "batches": int(state["batches"]),
                         "raw": dict(state.get("raw") or {})}
        self.set_epoch(int(state["epoch"]))


# -------------------------------------------------------------------------------- build_loader
def epoch_samples(sources: list[Source], override: int | None = None) -> int:
    """Samples per epoch: the override, else one pass over the source that the weights exhaust first."""
    if override:
        return int(override)
    unknown = [s.spec for s in sources if not s.samples]
    if unknown:
        raise ConfigError(f"data.samples_per_epoch: sample counts for {unknown} are unknown (no manifest.json); "
                          f"set data.samples_per_epoch")
    total_w = sum(s.weight for s in sources)
    return int(min(s.samples / (s.weight / total_w) for s in sources))


def _eval_samples(sources: list[Source]) -> int:
    """Evaluation reads every source once: all of their samples (counts from the manifest or the preflight)."""
    unknown = [s.spec for s in sources if s.samples is None]
    if unknown:
        raise ConfigError(f"data.val: sample counts for {unknown} are unknown (no manifest.json and no full "
                          f"preflight); write the shards with `mmfm shards build` or set data.preflight=full")
    return sum(s.samples for s in sources)


def _eval_batches(sources: list[Source], rank: int, per_rank: int, readers: int, batch_size: int) -> int:
    """Batches this rank yields in one evaluation pass (split=sample: reader g keeps samples g, g+readers, ...
    of each source, then a short last batch), when no sample is corrupt."""
    out = 0
    for g in range(rank * per_rank, (rank + 1) * per_rank):
        n = sum(len(range(g, s.samples, readers)) for s in sources)
        out += -(-n // batch_size)
    return out


def _warn_uneven(sources: list[Source], readers: int) -> None:
    for src in sources:
        if any(s.samples is None for s in src.shards):
            continue
        loads = [sum(s.samples for s in part) for part in assign_shards(src.shards, readers, None)]
        if max(loads) > 1.25 * max(min(loads), 1):
            log.warning("data source '%s': %d shards give the %d readers (ranks x workers) uneven shares %s; "
                        "readers with less data repeat samples within an epoch. Write more, smaller shards, "
                        "or set data.split=sample (every reader scans every shard; fine for small datasets)",
                        src.spec, len(src.shards), readers, sorted(loads))


def _balancer(cfg, srcs):
    if getattr(cfg, "balance", None) is None:
        return None
    from mmfm.data.balance import make_balancer
    return make_balancer(cfg.balance, srcs)


def build_loader(sources, processor, *, batch_size: int, workers: int, train: bool, epoch: int = 0,
                 world=None, data_cfg=None, grad_accum: int = 1, decode_size: int | None = None,
                 pin_memory: bool = False, seed: int | None = None, worker_priority: str = "normal") -> LoaderBundle:
    """Resolve + preflight ``sources`` and build this rank's ``LoaderBundle`` (module docstring)."""
    from mmfm.config.data import DataConfig

    cfg = data_cfg or DataConfig()
    rank, world_size = rank_world(world)
    workers = max(int(workers), 0)
    readers_per_rank = max(workers, 1)
    srcs = resolve_sources([sources] if isinstance(sources, str) else sources)
    required = list(getattr(processor, "required_keys", None) or [cfg.image_keys, cfg.text_key])
    split = cfg.split if train else "sample"
    readers = world_size * readers_per_rank
    preflight(srcs, readers=readers, resampled=cfg.resampled or split == "sample",
              required_keys=required, mode=cfg.preflight)
    if train and split == "shard" and not cfg.resampled and rank == 0:
        _warn_uneven(srcs, readers)
    samples = epoch_samples(srcs, cfg.samples_per_epoch) if train else _eval_samples(srcs)
    if train:
        batches = samples // world_size // batch_size
        # whole rounds over the workers (each reader yields the same count: no reader has to wrap around)
        unit = grad_accum * readers_per_rank if batches >= grad_accum * readers_per_rank else grad_accum
        batches = batches // unit * unit
    else:
        batches = _eval_batches(srcs, rank, readers_per_rank, readers, batch_size)
    if batches == 0 and train:
        raise ConfigError(f"data: an epoch of {samples} samples is smaller than one global batch "
                          f"(batch_size {batch_size} x {world_size} ranks x grad_accum {grad_accum}); "
                          f"lower data.batch_size or set data.samples_per_epoch")
    if decode_size is None:
        decode_size = getattr(processor, "decode_size", None)
    decoder = Decoder(cfg.image_keys, cfg.max_pixels, decode_size if cfg.jpeg_draft else None)
    ds = StreamDataset(srcs, processor, batch_size=batch_size, train=train, rank=rank, world=world_size,
                       workers=readers_per_rank, batches_per_epoch=batches,
                       seed=cfg.seed if seed is None else seed, resampled=cfg.resampled and train,
                       shuffle_buffer=cfg.shuffle_buffer, decoder=decoder, split=split,
                       balance=_balancer(cfg, srcs) if train else None)
    bundle = LoaderBundle(ds, samples_per_epoch=samples, steps_per_epoch=batches // grad_accum,
                          grad_accum=grad_accum, num_workers=workers, pin_memory=pin_memory,
                          timeout_s=cfg.timeout_s, worker_priority=worker_priority)
    bundle.set_epoch(epoch)
    return bundle
