"""An opt-in profile of a local shard build over time: where the cores' idle share goes.

``MMFM_SHARDS_PROFILE=prof.json mmfm shards build ...`` (``bench/shards.py --profile`` sets it) samples, every
0.1 s of the pipeline, the CPU time of this process (all its threads, and its main thread alone) and of each pool
worker from ``/proc``, and the chunks in flight (handed out, not yet consumed) and ready (done, waiting for the
parent to take them in order). The parent's own time is split into sections (waiting for the next result in
order, dedup, writing samples into the tar, closing a shard: rename + sha256 + stats). ``prof.json`` gets the
timeline and totals, ``prof.txt`` the summary (also printed to stderr). Without the variable nothing is sampled.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

ENV = "MMFM_SHARDS_PROFILE"
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu(path: str) -> float | None:
    """utime + stime in seconds from a ``/proc/.../stat`` file, None when it is gone."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


class Profile:
    """Timeline sampler + the parent's section timers. ``Profile(None)`` is a no-op."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.sections: Counter = Counter()
        self.marks: dict[str, float] = {}
        self.timeline: list[list] = []
        self.workers: list[int] = []
        self.depth: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = time.monotonic()

    @classmethod
    def from_env(cls) -> "Profile":
        return cls(os.environ.get(ENV) or None)

    @property
    def on(self) -> bool:
        return self.path is not None

    def section(self, name: str):
        return self._timed(name) if self.on else nullcontext()

    @contextmanager
    def _timed(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.sections[name] += time.perf_counter() - t

    def mark(self, name: str) -> None:
        """The first time something happened (seconds since the pipeline started)."""
        if self.on and name not in self.marks:
            self.marks[name] = time.monotonic() - self.t0

    def start(self) -> None:
        self.t0, self.epoch0 = time.monotonic(), time.time()
        if self.on:
            self._thread = threading.Thread(target=self._run, name="mmfm-profile", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        pid = os.getpid()
        row = [round(time.monotonic() - self.t0, 3), proc_cpu(f"/proc/{pid}/stat"),
               proc_cpu(f"/proc/{pid}/task/{pid}/stat"), *self.depth()]
        row.append([proc_cpu(f"/proc/{w}/stat") for w in self.workers])
        self.timeline.append(row)

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(0.1):
            self._sample()

    def stop(self) -> dict | None:
        if not self.on:
            return None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        data = {"wall": round(time.monotonic() - self.t0, 3), "epoch_start": self.epoch0, "cpus": os.cpu_count(),
                "sections": {k: round(v, 3) for k, v in self.sections.items()}, "marks": self.marks,
                "columns": ["t", "parent_cpu", "main_thread_cpu", "in_flight", "ready", "worker_cpu"],
                "timeline": self.timeline}
        data["summary"] = summarize(data)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data))
        self.path.with_suffix(".txt").write_text(data["summary"] + "\n")
        import sys
        print(data["summary"], file=sys.stderr, flush=True)
        return data


def _cpu_spent(timeline: list[list], col: int, worker: int | None = None, since_start: bool = False) -> float:
    """CPU seconds between the first and last sample (``since_start``: the whole process life; workers are
    started inside the pipeline)."""
    if worker is None:
        vals = [r[col] for r in timeline]
    else:
        vals = [r[col][worker] for r in timeline if len(r[col]) > worker]
    vals = [v for v in vals if v is not None]
    if not vals:
        return 0.0
    return max(vals) - (0.0 if since_start else min(vals))


def summarize(data: dict) -> str:
    """The profile as text: totals per process, the parent's sections, and the timeline in tenths."""
    tl, wall, cpus = data["timeline"], data["wall"], data["cpus"] or 1
    n_workers = max((len(r[5]) for r in tl), default=0)
    parent, main = _cpu_spent(tl, 1), _cpu_spent(tl, 2)
    workers = [_cpu_spent(tl, 5, i, since_start=True) for i in range(n_workers)]
    total = parent + sum(workers)
    lines = [f"pipeline {wall:.2f}s on {cpus} CPUs: {total:.2f} CPU-s = {100 * total / (wall * cpus):.0f}% of "
             f"{wall * cpus:.2f} core-s (idle {wall * cpus - total:.2f} core-s)",
             f"  parent {parent:.2f} CPU-s ({100 * parent / wall:.0f}% of a core; main thread {main:.2f}, "
             f"pool/other threads {parent - main:.2f})"]
    lines += [f"  worker {i} {w:.2f} CPU-s ({100 * w / wall:.0f}% of a core)" for i, w in enumerate(workers)]
    lines.append("  parent sections: " + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(data["sections"].items(),
                                                                                        key=lambda kv: -kv[1])))
    if data["marks"]:
        lines.append("  marks: " + ", ".join(f"{k} at {v:.2f}s" for k, v in data["marks"].items()))
    lines.append("  timeline (each row a tenth of the pipeline): t0-t1 s | parent% workers% | in-flight ready")
    for k in range(10):
        a, b = wall * k / 10, wall * (k + 1) / 10
        rows = [r for r in tl if a - 0.1 <= r[0] <= b + 0.1]
        if len(rows) < 2:
            continue
        span = rows[-1][0] - rows[0][0] or 1e-9
        p = _cpu_spent(rows, 1) / span
        ws = " ".join(f"{100 * _cpu_spent(rows, 5, i) / span:3.0f}" for i in range(n_workers))
        depth = sum(r[3] for r in rows) / len(rows), sum(r[4] for r in rows) / len(rows)
        lines.append(f"    {a:6.2f}-{b:6.2f} | {100 * p:3.0f} {ws} | {depth[0]:4.1f} {depth[1]:4.1f}")
    return "\n".join(lines)
