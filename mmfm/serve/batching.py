"""Dynamic request batching: an asyncio queue drained into batches of up to ``max_batch`` items, waiting at most
``max_wait_ms`` after the first one, run by ONE worker thread (so the model never runs twice at once and the
event loop stays free to accept and decode uploads).

Items carry a ``key`` (e.g. the decoding settings, or the candidate labels): only items with equal keys share
a batch. A request that times out or disconnects cancels its future; the worker skips cancelled items.
``max_batch=1`` turns batching off (each request runs alone, in arrival order).
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

log = logging.getLogger("mmfm.serve")

__all__ = ["DynamicBatcher", "QueueFull", "BatchStats"]


class QueueFull(RuntimeError):
    """The batcher's queue is at capacity: the caller should answer 503."""


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    skipped_cancelled: int = 0
    errors: int = 0
    busy_s: float = 0.0

    def as_dict(self) -> dict:
        return {"batches": self.batches, "items": self.items, "largest_batch": self.largest,
                "mean_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
                "skipped_cancelled": self.skipped_cancelled, "errors": self.errors,
                "busy_s": round(self.busy_s, 3)}


class DynamicBatcher:
    """``await batcher.submit(key, payload)`` -> the result ``run_batch(key, [payload, ...])[i]`` for this item.

    ``run_batch`` runs in the single worker thread and must return one result per payload (or raise: every
    item of that batch then gets the exception)."""

    def __init__(self, run_batch: Callable[[Hashable, list], list], *, max_batch: int = 16,
                 max_wait_ms: float = 10.0, max_queue: int = 256, name: str = "model"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = max(float(max_wait_ms), 0.0) / 1000.0
        self.max_queue = int(max_queue)
        self.name = name
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mmfm-{self.name}")
        self._task = asyncio.create_task(self._loop(), name=f"mmfm-batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # ------------------------------------------------------------------ submit
    async def submit(self, key: Hashable, payload: Any) -> Any:
        if self._queue is None:
            raise RuntimeError("batcher not started")
        fut = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(key, payload, fut))
        except asyncio.QueueFull:
            raise QueueFull(f"the {self.name} queue is full ({self.max_queue} requests waiting)") from None
        return await fut

    # ------------------------------------------------------------------ worker
    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        items = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(items) < self.max_batch:
            try:                                   # whatever is already waiting joins at once
                items.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            live = [it for it in items if not it.future.done()]
            self.stats.skipped_cancelled += len(items) - len(live)
            groups: dict[Hashable, list[_Item]] = {}
            for it in live:
                groups.setdefault(it.key, []).append(it)
            for key, group in groups.items():
                await self._run(loop, key, group)

    async def _run(self, loop, key: Hashable, group: list[_Item]) -> None:
        t0 = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, key, [it.payload for it in group])
            if len(results) != len(group):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(group)} items")
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the server goes on
            self.stats.errors += 1
            log.exception("batch of %d failed", len(group))
            for it in group:
                if not it.future.done():
                    it.future.set_exception(e)
        else:
            for it, res in zip(group, results):
                if not it.future.done():
                    it.future.set_result(res)
        finally:
            self.stats.batches += 1
            self.stats.items += len(group)
            self.stats.largest = max(self.stats.largest, len(group))
            self.stats.busy_s += time.perf_counter() - t0
