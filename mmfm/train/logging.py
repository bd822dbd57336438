"""Metrics: JSONL (``OUT/metrics.jsonl``, one object per line), TensorBoard (``OUT/tb``) and wandb (``OUT/wandb``),
rank 0 only, plus the tqdm progress bar (samples/s, loss, lr, ETA) and the step meter (means between log lines)."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("mmfm.train")


def setup_logging(rank: int) -> None:
    """INFO on rank 0, warnings only elsewhere; one handler, idempotent."""
    root = logging.getLogger("mmfm")
    if not any(getattr(h, "_mmfm", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
                                         "%H:%M:%S"))
        h._mmfm = True
        root.addHandler(h)
        root.propagate = False
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def rewind_jsonl(path: Path, step: int) -> int:
    """Keep only the rows of ``path`` with ``step <= step`` (and drop torn lines), atomically; returns the number
    of lines dropped. A resumed run redoes the steps after its checkpoint, so their old rows must go."""
    if not path.is_file():
        return 0
    from mmfm.config import atomic_write
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and int(row.get("step", step + 1)) <= step
        except (ValueError, TypeError):
            keep = False                       # a line torn by a kill mid-write
        if keep:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        atomic_write(path, "".join(kept), fsync=True)
    return dropped


def start_wandb(out_dir: Path, cfg, start_step: int | None):
    """A wandb run for this training run: files under ``OUT/wandb``, named after the run folder, the resolved config
    attached. wandb reads its usual environment (``WANDB_PROJECT``, default ``mmfm``; ``WANDB_MODE=offline`` keeps
    everything local for ``wandb sync`` later). wandb cannot take back steps, so a resumed run is a new wandb run
    in the same group (the run folder's name) that starts at the restored step."""
    import wandb

    from mmfm.config import to_dict
    resumed = bool(start_step and start_step > 0)
    return wandb.init(dir=str(out_dir), project=os.environ.get("WANDB_PROJECT", "mmfm"), group=out_dir.name,
                      name=f"{out_dir.name}-from-{start_step}" if resumed else out_dir.name, job_type="train",
                      config=to_dict(cfg), reinit="create_new")


class MetricsWriter:
    """Append-only JSONL + TensorBoard scalars + wandb. A no-op on ranks other than 0.

    ``start_step``: the step training starts from; rows (and TensorBoard events) after it are removed first, so a
    resumed run does not list the steps it redoes twice (-1: a new run, nothing kept). None: append as is.
    ``wandb``: the ExperimentConfig to report to wandb with the metrics (None: no wandb)."""

    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True,
                 start_step: int | None = None, wandb=None):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if wandb is not None:
            self._wandb = start_wandb(out_dir, wandb, start_step)
        out_dir.mkdir(parents=True, exist_ok=True)
        if start_step is not None and (n := rewind_jsonl(out_dir / "metrics.jsonl", start_step)):
            log.info("metrics.jsonl: removed %d rows after step %d (they are trained again)", n, start_step)
        self._jsonl = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                purge = None if start_step is None else start_step + 1
                self._tb = SummaryWriter(str(out_dir / "tb"), purge_step=purge)
            except ImportError as e:  # pragma: no cover - tensorboard is a dependency
                log.warning("TensorBoard logging disabled: %s", e)

    def write(self, step: int, metrics: dict, **extra) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **extra,
               **{k: _clean(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        scalars = {k: v for k, v in row.items()
                   if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


class Progress:
    """tqdm bar over optimizer steps on rank 0; ETA comes from tqdm."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled and not sys.stderr.isatty():
            enabled = False                    # logs, not bar redraws, when stderr is a file or pipe
        self.lines = not enabled
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train",
                            mininterval=1.0, smoothing=0.1)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg)
        else:
            log.info(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StepMeter:
    """The per-step scalars summed between two log lines, and the samples/s over them."""

    def __init__(self, samples_per_step: int):
        self.samples_per_step = samples_per_step
        self.sums, self.steps, self.start = {}, 0, time.perf_counter()

    def add(self, out: dict) -> None:
        for k, v in out.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.steps += 1

    def take(self) -> tuple[dict, int, float]:
        """(sums, steps, samples/s) since the last take; the next window starts now."""
        now = time.perf_counter()
        taken = self.sums, self.steps, self.samples_per_step * self.steps / max(now - self.start, 1e-9)
        self.sums, self.steps, self.start = {}, 0, now
        return taken
